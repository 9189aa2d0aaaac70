"""`keel serve`: the API on uvicorn, with the background workers this deployment needs.

The CLI parses Settings once and calls `serve()`. With one worker process the app is built
here from those Settings; with `--workers N` uvicorn spawns N processes that each import
`app_factory`, which re-reads the same environment (the CLI writes its overrides into it
first) — the only place besides the CLI that calls load_settings. Must never run DDL on
PostgreSQL (that is `keel migrate`); on the embedded SQLite default it migrates first so that
one command starts a working service. Refuses to start without a holder key-encryption key.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from infrastructure.settings import ENV_VARS, Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

# Started inside every API process on PostgreSQL; the other workers run as `keel worker NAME`.
# Not expiry: it follows every transfer in the log, and N API processes did that N times over
# (14 % of an API process's CPU under the batch endpoint) for one `keel worker expiry`'s work.
IN_PROCESS_WORKERS_SERVER = ("idempotency_cleanup",)
GRACEFUL_SHUTDOWN_S = 20
# Young-generation GC every 50,000 net allocations instead of 700: a request allocates a few
# hundred objects, and with the default every few requests paid a collection (p99 of
# `keel bench http` uniform 118 -> 59 ms, throughput +20 %; docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """For a long-running process after start-up: what exists now (modules, the app, caches
    warmed so far) is moved out of the collector's sight, and young collections get rarer."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def background_worker_names(embedded: bool) -> list[str]:
    from keel.workers import WORKERS

    if embedded:
        return list(WORKERS)  # the embedded default: everything in this one process
    return [n for n in IN_PROCESS_WORKERS_SERVER if n in WORKERS]


def app_from_settings(settings: Settings, worker_names: Sequence[str] | None = None):  # noqa: ANN201
    from api.app import create_app
    from keel.bootstrap import build
    from keel.workers import WORKERS

    container = build(settings)
    names = background_worker_names(container.store.embedded) if worker_names is None else list(worker_names)
    workers = [WORKERS[n](container) for n in names]

    def start() -> None:
        for w in workers:
            w.start()
        tune_gc()
        log.info("keel API ready (%s; workers: %s)", container.store.label, ", ".join(names) or "none")

    def stop() -> None:
        for w in reversed(workers):
            w.stop()
        container.close()

    return create_app(container, on_startup=[start], on_shutdown=[stop])


def app_factory():  # noqa: ANN201
    """uvicorn --factory entry point for `--workers N` (each worker process calls it)."""
    from keel.logs import configure_logging

    settings = load_settings(os.environ)
    configure_logging(settings.log_level, settings.log_format)  # a spawned process starts unconfigured
    return app_from_settings(settings)


def banner(settings: Settings, host: str, port: int, workers: int) -> list[str]:
    """What an operator needs first: where it listens, where the data lives, whether it is
    encrypted and signed, where the docs are, and how to get a key."""
    from infrastructure.audit_keys import data_key_spec, default_signing_key_file, load_signer

    url = f"http://{host}:{port}"
    if settings.is_postgres:
        pg = settings.postgres()
        store = f"PostgreSQL {pg.host}:{pg.port}/{pg.dbname} (schema {pg.schema})"
        point = ""
    else:
        store = f"embedded SQLite {settings.sqlite_file}"
        point = f" (elsewhere: keel --database-url sqlite:///{settings.sqlite_file} keys create ...)"
    signed = "yes" if load_signer(settings) is not None else "no"
    if signed == "no":
        where = default_signing_key_file(settings)
        signed += f" (`keel keys audit-init`{', then restart' if where else ''})"
    return [
        f"keel serving on {url} ({workers} process{'es' if workers > 1 else ''}); API docs {url}/schema",
        f"store: {store}",
        f"events encrypted at rest: {'yes' if data_key_spec(settings) else 'no (KEEL_DATA_KEY)'}; "
        f"audit checkpoints signed: {signed}",
        f"make an API key: keel keys create --role banking --tenant acme{point}",
    ]


def serve(settings: Settings, *, host: str, port: int, workers: int) -> int:
    import uvicorn

    from eventsourcing.persistence import InterfaceError, OperationalError

    from infrastructure.audit_keys import require_holder_kek
    from keel.bootstrap import open_store, prepare_store

    if workers < 1:
        raise SettingsError("--workers must be at least 1")
    # Holder data is sealed under keys wrapped by a KEK kept outside the database. On PostgreSQL
    # none is made up here (a container's filesystem is no place for it): refuse to start.
    require_holder_kek(settings)
    with open_store(settings) as store:
        embedded = store.embedded
    if embedded and workers > 1:
        raise SettingsError("the embedded SQLite store takes one writer process: use --workers 1 or PostgreSQL")
    try:
        problem = prepare_store(settings).problem  # migrates the embedded store; a server store must be migrated
    except (OperationalError, InterfaceError):
        # Refuse with the cause (server down, no such database, bad credentials), one line: the
        # API could not even build its services, and a wrong URL must not look like an outage.
        from keel.bootstrap import store_problem

        found = store_problem(settings)
        if found is not None:
            raise found from None
        raise
    if problem:
        raise SettingsError(problem)
    common = {
        "host": host,
        "port": port,
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # uvicorn's records go through Keel's one handler (keel/logs.py)
    }
    from keel.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    for line in banner(settings, host, port, workers):
        log.info("%s", line)
    if workers == 1:
        uvicorn.run(app_from_settings(settings), **common)
        return 0
    # Worker processes rebuild Settings from the environment: put every field we run with there.
    fields = {f: v for f, v in ((f, getattr(settings, f)) for f in ENV_VARS.values()) if v is not None}
    for var, field in ENV_VARS.items():
        if field in fields:
            os.environ[var] = str(fields[field])
    uvicorn.run("keel.serve:app_factory", factory=True, workers=workers, **common)
    return 0
