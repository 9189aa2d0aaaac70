"""The ledger log's head read on the event loop (issue #16): `SELECT max(notification_id)` on a
connection of its own, opened on first use and again after any failure, so a balance read that
the writer's copies can answer needs no thread hop and no pooled connection. The API's history
reads run their statement (infrastructure/readside.py builds it) on the same connection."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from infrastructure.settings import PostgresParams

CONNECT_TIMEOUT_S = 5
# A statement that has not answered by then is abandoned and its connection closed: the caller
# falls back to the thread path, which reports the store's state as every other route does.
STATEMENT_TIMEOUT_S = 5


# Connections the history pages take turns on: a statement waits for the one before it on its
# connection, and each costs at least one turn of the busy event loop, so a few run side by side.
# The head and the views' position (one query at a time each, shared by every reader) have one of
# their own, so a balance read never queues behind a page.
READ_CONNECTIONS = 4


class PostgresAsyncHead:
    def __init__(self, params: PostgresParams, table: str) -> None:
        self._params = params
        self._sql = SQL("SELECT max(notification_id) FROM {}.{}").format(Identifier(params.schema), Identifier(table))
        self._conns: list[psycopg.AsyncConnection | None] = [None] * (1 + READ_CONNECTIONS)
        self._turn = 0

    async def __call__(self) -> int:
        """The head; raises when the database cannot answer (the connection is dropped then)."""
        rows = await self._fetch(0, self._sql, ())
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def fetchall(self, sql: Any, params: Sequence[Any], *, shared: bool = False) -> list[tuple[Any, ...]]:
        """A read on one of the read connections, in turn (`shared`: a small query many readers
        wait on, on the head's connection); raises as `__call__`."""
        if shared:
            return await self._fetch(0, sql, params)
        self._turn = self._turn % READ_CONNECTIONS + 1
        return await self._fetch(self._turn, sql, params)

    async def _fetch(self, i: int, sql: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = self._conns[i]
        try:
            if conn is None or conn.closed:
                p = self._params
                conn = self._conns[i] = await psycopg.AsyncConnection.connect(
                    host=p.host, port=p.port, user=p.user, password=p.password or None, dbname=p.dbname,
                    autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=0,
                )  # fmt: skip
            async with asyncio.timeout(STATEMENT_TIMEOUT_S):
                cur = await conn.execute(sql, params)
                return await cur.fetchall()
        except BaseException:
            self._conns[i] = None
            if conn is not None:
                await _close(conn)
            raise

    async def close(self) -> None:
        conns, self._conns = self._conns, [None] * len(self._conns)
        for conn in conns:
            if conn is not None:
                await _close(conn)


async def _close(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001, S110 - closing a broken connection
        pass
