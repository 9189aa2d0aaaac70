"""Claims on Idempotency-Keys across processes: who is running a key right now.

The stored response itself is written with the effect, in the same commit (recorders). A claim
only keeps two API processes from running the same key at once, so that the second can answer
409 `idempotency_key_in_flight` (or replay the stored response) instead of re-running the
command against changed state. Claims are ephemeral: on PostgreSQL the table is UNLOGGED (no
WAL flush per claim; a crash simply forgets every claim), and a claim older than the stale age
can be taken over, so a killed process never blocks a key for long. Never stores a response.
"""
from __future__ import annotations

from typing import Any

from psycopg.sql import SQL, Identifier

_PG_DDL = [
    """CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.keel_idempotency_claims (
        scope text NOT NULL,
        key text NOT NULL,
        claimed_at_ms bigint NOT NULL,
        PRIMARY KEY (scope, key))""",
]

_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS keel_idempotency_claims (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        claimed_at_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, key))""",
]

# A claim is taken when the key is free or its holder's claim is stale (older than the bound).
_UPSERT = (
    "INSERT INTO {table} (scope, key, claimed_at_ms) VALUES ({p}, {p}, {p})"
    " ON CONFLICT (scope, key) DO UPDATE SET claimed_at_ms = excluded.claimed_at_ms"
    " WHERE {table}.claimed_at_ms < {p}"
)


def pg_ddl(schema: str) -> list[str]:
    return [s.replace("{schema}", f'"{schema}"') for s in _PG_DDL]


def sqlite_ddl() -> list[str]:
    return list(_SQLITE_DDL)


class PostgresClaims:
    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        table = SQL("{}.keel_idempotency_claims").format(Identifier(datastore.schema))
        self._claim = SQL(_UPSERT.replace("{p}", "%s")).format(table=table)
        self._release = SQL("DELETE FROM {} WHERE scope = %s AND key = %s").format(table)
        self._expire = SQL("DELETE FROM {} WHERE claimed_at_ms < %s").format(table)

    def claim(self, scope: str, key: str, now_ms: int, stale_before_ms: int) -> bool:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._claim, (scope, key, now_ms, stale_before_ms))
            return curs.rowcount == 1

    def release(self, scope: str, key: str) -> None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._release, (scope, key))

    def delete_older_than(self, cutoff_ms: int) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._expire, (cutoff_ms,))
            return curs.rowcount


class SQLiteClaims:
    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        self._claim = _UPSERT.replace("{p}", "?").replace("{table}", "keel_idempotency_claims")

    def claim(self, scope: str, key: str, now_ms: int, stale_before_ms: int) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._claim, (scope, key, now_ms, stale_before_ms))
            return c.sqlite_cursor.rowcount == 1  # eventsourcing's cursor wrapper has no rowcount

    def release(self, scope: str, key: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM keel_idempotency_claims WHERE scope = ? AND key = ?", (scope, key))

    def delete_older_than(self, cutoff_ms: int) -> int:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM keel_idempotency_claims WHERE claimed_at_ms < ?", (cutoff_ms,))
            return c.sqlite_cursor.rowcount
