"""How a follower of the ledger's log waits for new events on PostgreSQL: LISTEN on its own
connection (never one of the pool's, so a small pool cannot stall it) to the NOTIFY that the
recorder sends in every commit's transaction (infrastructure/postgres/recorders.py)."""
from __future__ import annotations

import threading

import psycopg
from psycopg.sql import SQL, Identifier

from infrastructure.settings import PostgresParams

LISTEN_TIMEOUT_S = 0.5
LISTEN_CONNECT_TIMEOUT_S = 10


class PostgresLogWaiter:
    def __init__(self, params: PostgresParams, channel: str) -> None:
        self._conn = psycopg.connect(
            host=params.host, port=params.port, user=params.user, password=params.password or None,
            dbname=params.dbname, autocommit=True, connect_timeout=LISTEN_CONNECT_TIMEOUT_S,
        )  # fmt: skip
        self._conn.execute(SQL("LISTEN {}").format(Identifier(channel)))

    def wait(self, stop: threading.Event) -> None:
        # A commit after the follower's last read has sent a NOTIFY that is already queued here,
        # so this returns at once: no head query is needed on the hot path.
        for _ in self._conn.notifies(timeout=LISTEN_TIMEOUT_S, stop_after=1):
            pass

    def close(self) -> None:
        self._conn.close()
