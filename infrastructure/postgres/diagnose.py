"""Why a PostgreSQL store cannot be used, in one line for an operator.

The library's pool reports every failure to connect as "couldn't get a connection after N sec";
the cause (server down, no such database, bad credentials) is only seen by connecting once
directly. Never shows the password. Opens one short-lived connection and changes nothing.
"""
from __future__ import annotations

import psycopg

from infrastructure.settings import Settings, SettingsError, StoreUnreachable

CONNECT_TIMEOUT_S = 3


def connection_problem(settings: Settings) -> SettingsError | StoreUnreachable | None:
    """None when a connection succeeds now; else the cause, read from the server's answer: a
    SettingsError when the configuration is wrong, StoreUnreachable when the server is down."""
    pg = settings.postgres()
    where = f"PostgreSQL at {pg.host}:{pg.port}"
    try:
        psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password or None, dbname=pg.dbname,
            connect_timeout=CONNECT_TIMEOUT_S,
        ).close()  # fmt: skip
    except psycopg.OperationalError as e:
        text = " ".join(str(e).split())
        if "does not exist" in text and "database" in text:
            return SettingsError(
                f'{where} has no database "{pg.dbname}": create it (createdb -h {pg.host} -p {pg.port} '
                f"{pg.dbname}) or fix the database name in KEEL_DATABASE_URL"
            )
        if "password authentication failed" in text or ("role" in text and "does not exist" in text) or (
            "no password supplied" in text
        ):
            return SettingsError(
                f'{where} refused user "{pg.user}": check the user and password in KEEL_DATABASE_URL '
                "(or KEEL_DATABASE_PASSWORD_FILE)"
            )
        if "resolve host" in text or "translate host name" in text:
            return SettingsError(
                f"cannot resolve the host {pg.host!r} of KEEL_DATABASE_URL"
            )
        if "Connection refused" in text:
            return StoreUnreachable(f"cannot reach {where}: connection refused (is the server running? is KEEL_DATABASE_URL right?)")
        if "timeout" in text.lower():
            return StoreUnreachable(f"cannot reach {where}: no answer within {CONNECT_TIMEOUT_S} s")
        return StoreUnreachable(f"cannot connect to {where}: {text[:300]}")
    return None
