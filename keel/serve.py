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
    return app_from_settings(load_settings(os.environ))


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
    except (OperationalError, InterfaceError) as e:
        if embedded:
            raise
        # The server is restarting or unreachable: start anyway (requests answer 503 and /readyz
        # says so until it answers); a supervisor restarting us in a loop would help no one.
        log.warning("the database did not answer at start (%s); serving 503 until it does", type(e).__name__)
        problem = None
    if problem:
        raise SettingsError(problem)
    common = {
        "host": host,
        "port": port,
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "log_level": settings.log_level.lower(),
    }
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
