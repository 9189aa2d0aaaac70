"""The ledger log's head read on the event loop (issue #16): `SELECT max(notification_id)` on a
connection of its own, opened on first use and again after any failure, so a balance read that
the writer's copies can answer needs no thread hop and no pooled connection. The API's history
reads run their statement (infrastructure/readside.py builds it) on the same connection."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from infrastructure.settings import PostgresParams

CONNECT_TIMEOUT_S = 5


class PostgresAsyncHead:
    def __init__(self, params: PostgresParams, table: str) -> None:
        self._params = params
        self._sql = SQL("SELECT max(notification_id) FROM {}.{}").format(Identifier(params.schema), Identifier(table))
        self._conn: psycopg.AsyncConnection | None = None

    async def __call__(self) -> int:
        """The head; raises when the database cannot answer (the connection is dropped then)."""
        rows = await self.fetchall(self._sql, ())
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def fetchall(self, sql: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read on the same connection (statements take turns on it); raises as `__call__`."""
        try:
            if self._conn is None or self._conn.closed:
                p = self._params
                self._conn = await psycopg.AsyncConnection.connect(
                    host=p.host, port=p.port, user=p.user, password=p.password or None, dbname=p.dbname,
                    autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=0,
                )  # fmt: skip
            cur = await self._conn.execute(sql, params)
            return await cur.fetchall()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection
                pass
