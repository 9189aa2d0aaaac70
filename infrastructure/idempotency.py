"""Reads and cleans up stored idempotent responses (written by the recorders with the effect)."""
from __future__ import annotations

from typing import Any

from psycopg.sql import SQL, Identifier

from application.ports import IdempotencyRecord

_COLUMNS = "scope, key, request_hash, status_code, body, created_at_ms"


def _record(row: Any) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=row[0], key=row[1], request_hash=row[2], status_code=row[3], body=bytes(row[4]), created_at_ms=row[5]
    )


class PostgresIdempotencyStore:
    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        self._get = SQL(f"SELECT {_COLUMNS} FROM {{}}.keel_idempotency WHERE scope = %s AND key = %s").format(schema)
        self._delete = SQL("DELETE FROM {}.keel_idempotency WHERE created_at_ms < %s").format(schema)

    def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=None) as curs:
            from psycopg.rows import tuple_row

            curs.row_factory = tuple_row
            curs.execute(self._get, (scope, key), prepare=True)
            row = curs.fetchone()
        return _record(row) if row else None

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], IdempotencyRecord]:
        return {p: r for p in pairs if (r := self.get(*p)) is not None}

    def delete_older_than(self, cutoff_ms: int) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._delete, (cutoff_ms,))
            return curs.rowcount


class SQLiteIdempotencyStore:
    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore

    def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_COLUMNS} FROM keel_idempotency WHERE scope = ? AND key = ?", (scope, key))
            row = c.fetchone()
        return _record(tuple(row)) if row else None

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], IdempotencyRecord]:
        return {p: r for p in pairs if (r := self.get(*p)) is not None}

    def delete_older_than(self, cutoff_ms: int) -> int:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM keel_idempotency WHERE created_at_ms < ?", (cutoff_ms,))
            return c.sqlite_cursor.rowcount  # eventsourcing's SQLiteCursor wrapper has no rowcount
