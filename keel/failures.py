"""How a `keel` command fails: one or two lines naming what is wrong and the setting or command
that fixes it; exit status 2 for usage and configuration, 1 for a runtime failure. A traceback
only with `keel --debug` or KEEL_DEBUG=1 (keel/cli.py decides; this module only explains).

Also the check every command that works on an existing store runs first (`check_store`): it
never makes a new embedded store where it was not asked for, and never acts on a store whose
schema is behind the code.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

from eventsourcing.persistence import PersistenceError

from infrastructure.settings import Settings, SettingsError, StoreUnreachable

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
MESSAGE_MAX_CHARS = 400
DEBUG_HINT = "run with --debug (or KEEL_DEBUG=1) for the traceback"
_SCHEMA_MISSING = ("does not exist", "no such table", "undefinedtable")


def check_store(settings: Settings, command: str, *, may_create: bool) -> None:
    """Raises SettingsError when this command must not run on the configured store: an embedded
    store that does not exist yet (unless the command may make one: `serve`, `migrate`), or a
    schema that `keel migrate` has not brought to this code's version. Migrates the embedded store."""
    from keel.bootstrap import prepare_store

    path = None if settings.is_postgres else settings.sqlite_file
    if path is not None and not os.path.exists(path) and not may_create:
        raise SettingsError(
            f"no Keel store at {path} (KEEL_DATABASE_URL {settings.database_url}, relative to {os.getcwd()}); "
            f"`keel {command}` makes none.\n"
            f"Run it where `keel serve` runs, or point it at the store: --database-url sqlite:///<path to keel.db>"
        )
    problem = prepare_store(settings).problem
    if problem:
        raise SettingsError(problem)


def explain(exc: BaseException, settings: Settings | None) -> tuple[str, int] | None:
    """One or two lines and the exit status for a failure; None for one we cannot explain (a bug)."""
    if isinstance(exc, SettingsError):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, StoreUnreachable):
        return str(exc), EXIT_RUNTIME
    if _is_store_error(exc):
        return _explain_store(exc, settings)
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        fix = ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = " (make it writable, or choose another path)"
        elif exc.errno == errno.ENOENT:
            fix = " (check the path)"
        return f"{exc.filename}: {what}{fix}", EXIT_CONFIG
    return None


def unexpected(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:MESSAGE_MAX_CHARS]
    return f"unexpected error: {type(exc).__name__}{': ' + text if text else ''}\n{DEBUG_HINT}"


def _is_store_error(exc: BaseException) -> bool:
    if isinstance(exc, (PersistenceError, sqlite3.Error)):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("psycopg", "psycopg_pool"))


def _explain_store(exc: BaseException, settings: Settings | None) -> tuple[str, int]:
    if settings is not None:
        from keel.bootstrap import store_problem

        try:
            problem: Any = store_problem(settings)
        except Exception:  # noqa: BLE001 - the diagnosis itself failed: fall back to the error's text
            problem = None
        if problem is not None:
            return explain(problem, None) or (str(problem), EXIT_RUNTIME)
    text = " ".join(str(exc).split())
    if any(mark in text.lower() for mark in _SCHEMA_MISSING):
        return "the store has no Keel schema (or an incomplete one): run `keel migrate`", EXIT_CONFIG
    return f"the store failed: {text[:MESSAGE_MAX_CHARS]}\n{DEBUG_HINT}", EXIT_RUNTIME
