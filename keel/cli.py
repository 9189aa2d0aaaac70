"""The `keel` command line. Each subcommand builds what it needs through keel.bootstrap."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from infrastructure.settings import SettingsError, load_settings

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace):  # noqa: ANN202
    return load_settings(os.environ, database_url=getattr(args, "database_url", None))


def cmd_migrate(args: argparse.Namespace) -> int:
    from keel.bootstrap import migrate

    settings = _settings(args)
    migrate(settings)
    print(f"migrated {settings.database_url.split('@')[-1]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from keel.demo import run_demo

    return run_demo(_settings(args))


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from keel.bootstrap import build
    from keel.workers import WORKERS

    if args.name not in WORKERS:
        print(f"keel: unknown worker {args.name!r}; known: {', '.join(sorted(WORKERS))}", file=sys.stderr)
        return 2
    import msgspec

    from keel.workers import WORKER_PG_POOL_SIZE

    settings = _settings(args)
    # A worker is one loop: a small pool. The library's pools open all their connections at start,
    # and eight processes of 16 (ledger + fraud pools at the API's size) exceeded PostgreSQL's
    # default 100 connections.
    settings = msgspec.structs.replace(settings, pg_pool_size=min(settings.pg_pool_size, WORKER_PG_POOL_SIZE))
    container = build(settings)
    worker = WORKERS[args.name](container)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    worker.start()
    from keel.serve import tune_gc

    tune_gc()
    logging.getLogger("keel").info("worker %s running", args.name)
    stopped.wait()
    worker.stop()
    container.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from eventsourcing.persistence import PersistenceError

    from infrastructure.replay import replay_check, replay_rebuild
    from keel.bootstrap import build_ledger, open_store

    settings = _settings(args)
    try:
        with open_store(settings) as store:
            ledger = build_ledger(settings, store)
            try:
                if args.rebuild:
                    replay_rebuild(ledger, store.read_models)
                    return 0
                return 1 if replay_check(ledger, store.read_models) else 0
            finally:
                ledger.close()
    except PersistenceError as e:
        print(f"keel: cannot replay: {e} (has `keel migrate` run on this database?)", file=sys.stderr)
        return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from keel.serve import serve

    return serve(_settings(args), host=args.host, port=args.port, workers=args.workers)


def cmd_keys(args: argparse.Namespace) -> int:
    from infrastructure.keys import KeyError_, new_key
    from keel.bootstrap import build, prepare_store

    settings = _settings(args)
    problem = prepare_store(settings).problem  # the embedded store is migrated; a server store only checked
    if problem:
        print(f"keel: {problem}", file=sys.stderr)
        return 2
    container = build(settings, start_writer=False)
    try:
        store = container.keys
        if args.keys == "create":
            try:
                key, token = new_key(args.role, args.tenant)
            except KeyError_ as e:
                print(f"keel: {e}", file=sys.stderr)
                return 2
            store.add(key)
            print(token)
            print(f"key {key.key_id}: role {key.role}" + (f", tenant {key.tenant}" if key.tenant else "")
                  + " (the token is shown only now)", file=sys.stderr)
            return 0
        if not store.revoke(args.key_id):
            print(f"keel: no key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}", file=sys.stderr)
        return 0
    finally:
        container.close()


def cmd_rotate_holder_kek(args: argparse.Namespace) -> int:
    """New KEK first (KEK file, or printed for KEEL_HOLDER_KEK), then every holder key re-wrapped
    under it in one transaction. No event is rewritten: events hold only the sealed holder."""
    from infrastructure.audit_keys import UnknownHolderKek, load_holder_keks, rotate_holder_kek
    from keel.bootstrap import build, prepare_store

    settings = _settings(args)
    problem = prepare_store(settings).problem  # the embedded store is migrated; a server store only checked
    if problem:
        print(f"keel: {problem}", file=sys.stderr)
        return 2
    container = build(settings, start_writer=False)
    try:
        vault = container.ledger.holder_vault
        if args.rewrap_only:
            keks = load_holder_keks(settings)
            if keks is None:
                from infrastructure.audit_keys import NO_HOLDER_KEK

                print(f"keel: {NO_HOLDER_KEK}", file=sys.stderr)
                return 2
            before = None
        else:
            where, value, keks, before = rotate_holder_kek(settings, args.file)
            if where == "env":
                # Printed before the re-wrap commits: once it has, this value is the only way in.
                print(f"KEEL_HOLDER_KEK={value}", flush=True)
                print("set this KEEL_HOLDER_KEK everywhere and restart; until then processes with the old value "
                      "cannot unwrap re-wrapped keys", file=sys.stderr)  # fmt: skip
            else:
                print(f"new holder KEK {keks.current_id} prepended to {value}; running processes pick it up",
                      file=sys.stderr)  # fmt: skip
        try:
            count = vault.rewrap(keks, before)
        except UnknownHolderKek as e:
            print(f"keel: {e}; nothing was re-wrapped", file=sys.stderr)
            return 2
        older = {k: n for k, n in vault.keys_by_kek().items() if k != keks.current_id}
        print(f"re-wrapped {count} holder keys under KEK {keks.current_id}", file=sys.stderr)
        if older:
            print(f"still under older KEKs (keep them; run again with --rewrap-only): {older}", file=sys.stderr)
        else:
            print(f"no holder key is wrapped under another KEK: all but {keks.current_id} may be dropped",
                  file=sys.stderr)  # fmt: skip
        return 0
    finally:
        container.close()


def cmd_holder_kek_init(args: argparse.Namespace) -> int:
    from infrastructure.audit_keys import init_holder_kek_file

    try:
        init_holder_kek_file(args.out)
    except FileExistsError as e:
        print(f"keel: {e}", file=sys.stderr)
        return 2
    print(f"KEEL_HOLDER_KEK_FILE={os.path.abspath(args.out)}")
    return 0


def cmd_fraud(args: argparse.Namespace) -> int:
    from keel.fraud_cli import run

    return run(args, _settings(args))


def cmd_simulate(args: argparse.Namespace) -> int:
    from keel.fraud_cli import simulate_cmd

    return simulate_cmd(args, _settings(args))


# ---- tool subcommands (issue #13) ------------------------------------------------------------
# `keel bench`, `keel chaos` live in keel_tools (the optional extra [tools]); they are found through
# the `keel.commands` entry points (pyproject.toml), never imported here by name.
TOOLS_INSTALL = "pip install -e .[tools]"


def add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:  # noqa: SLF001
    from importlib.metadata import entry_points

    for ep in entry_points(group="keel.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # keel_tools or its extra is missing: the command says so, and why
            hint = f"keel {ep.name}: cannot load the tools ({e}); they come with: {TOOLS_INSTALL}"
            # Takes any arguments (prefix_chars no option uses), so `keel chaos --minutes 1` gets the hint too.
            p = sub.add_parser(ep.name, help=f"(not installed: {TOOLS_INSTALL})", add_help=False, prefix_chars="\0")
            p.add_argument("args", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda _args, hint=hint: print(hint, file=sys.stderr) or 2)
            continue
        register(sub)


# ---- end of tool subcommands -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keel",
        description="Keel: event-sourced transaction backend. Every command finds its store through "
        "KEEL_DATABASE_URL (default sqlite:///./var/keel.db, relative to the current directory) or --database-url.",
    )
    parser.add_argument("--database-url", help="overrides KEEL_DATABASE_URL")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (also KEEL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="create every table (run once per database; safe to repeat)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("demo", help="open accounts, move money, print balances")
    p.set_defaults(func=cmd_demo)

    from keel.workers import WORKERS

    p = sub.add_parser("worker", help="run one background worker until SIGTERM (see keel/workers.py)")
    p.add_argument("name", choices=sorted(WORKERS), metavar="NAME",
                   help="the worker: " + ", ".join(sorted(WORKERS)) + " (on PostgreSQL run each once per deployment, "
                   "idempotency_cleanup runs inside `keel serve`)")  # fmt: skip
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="rebuild the read models from the event log: compare (--check) or replace (--rebuild)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="replay into scratch tables and compare; exit 1 on any difference")
    mode.add_argument("--rebuild", action="store_true", help="replay into scratch tables and replace the live views")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("serve", help="run the HTTP API (uvicorn); on SQLite also migrates and runs every worker")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="API processes (PostgreSQL only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys (create, revoke) and the keys kept outside the database "
                       "(audit-init, rotate-data-key, holder-kek-init, rotate-holder-kek)")
    keys_sub = p.add_subparsers(dest="keys", required=True)
    k = keys_sub.add_parser("create", help="create a key and print its token")
    k.add_argument("--role", required=True, choices=["banking", "auditor", "analyst", "admin"])
    k.add_argument("--tenant", help="the tenant of a banking key (required for --role banking)")
    k = keys_sub.add_parser("revoke", help="revoke a key by its id (the hex part after keel_)")
    k.add_argument("key_id")
    p.set_defaults(func=cmd_keys)

    from keel.fraud_cli import add_fraud_arguments, add_simulate_arguments

    p = sub.add_parser("fraud", help="fraud model: train, evaluate, rescore (see docs/fraud.md)")
    add_fraud_arguments(p)
    p.set_defaults(func=cmd_fraud)

    p = sub.add_parser("simulate", help="simulated activity with labelled fraud: to a file, the ledger or the API")
    add_simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)
    add_tool_commands(sub)  # keel bench, keel chaos (issue #13: keel_tools, found through entry points)

    from keel.audit_cli import add_audit_parser, add_keys_commands

    add_audit_parser(sub)
    add_keys_commands(keys_sub)  # keys audit-init, keys rotate-data-key
    from keel.realtime_cli import add_clients_parser, add_jwt_key_command

    add_clients_parser(sub)  # keel clients create|revoke (OAuth 2.0, issue #17)
    from keel.import_cli import add_import_parser

    add_import_parser(sub)  # keel import FILE (issue #15)
    add_jwt_key_command(keys_sub)  # keel keys rotate-jwt-key
    k = keys_sub.add_parser(
        "rotate-holder-kek",
        help="new holder key-encryption key first, then every holder key re-wrapped under it (one transaction)",
    )
    k.add_argument("--file", help="KEK file to prepend to (default: KEEL_HOLDER_KEK_FILE, or the store's var/holder-kek)")
    k.add_argument("--rewrap-only", action="store_true",
                   help="make no new KEK: re-wrap keys still under older KEKs under the newest configured one")  # fmt: skip
    k.set_defaults(func=cmd_rotate_holder_kek)
    k = keys_sub.add_parser("holder-kek-init", help="write a new holder key-encryption key file (0600)")
    k.add_argument("--out", required=True, help="the file to create (never overwritten)")
    k.set_defaults(func=cmd_holder_kek_init)
    return parser


# Commands that work on an existing store: checked first (keel/failures.py::check_store).
def _uses_existing_store(args: argparse.Namespace) -> bool:
    if args.func in (cmd_demo, cmd_worker, cmd_replay, cmd_keys, cmd_rotate_holder_kek):
        return True
    if args.func is cmd_fraud:
        return args.fraud_command in ("train", "rescore")
    if args.func is cmd_simulate:
        return bool(args.ledger)
    return bool(getattr(args, "uses_store", False)) and not getattr(args, "bundle", None)


def _debug(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("KEEL_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    from keel.failures import EXIT_RUNTIME, check_store, explain, unexpected
    from keel.logs import configure_logging

    configure_logging(os.environ.get("KEEL_LOG_LEVEL", "INFO"), os.environ.get("KEEL_LOG_FORMAT", "plain"))
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = None
    try:
        if _uses_existing_store(args):
            settings = _settings(args)
            sub = getattr(args, "keys", None) or getattr(args, "audit", None) or getattr(args, "fraud_command", None)
            check_store(settings, f"{args.command} {sub}" if sub else args.command, may_create=False)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if _debug(args):
            raise
        if settings is None:
            try:
                settings = _settings(args)
            except SettingsError:
                pass
        explained = explain(e, settings)
        message, status = explained if explained is not None else (unexpected(e), EXIT_RUNTIME)
        print("keel: " + message.replace("\n", "\n  "), file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
