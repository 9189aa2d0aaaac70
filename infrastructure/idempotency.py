"""Reads and cleans up stored idempotent responses (written by the recorders with the effect)."""
from __future__ import annotations

from typing import Any

from application.ports import IdempotencyRecord
from infrastructure.schema import IDEMPOTENCY
from infrastructure.sql import Sql

_COLUMNS = "scope, key, request_hash, answer, created_at_ms"


def _record(row: Any) -> IdempotencyRecord:
    return IdempotencyRecord(scope=row[0], key=row[1], request_hash=row[2], answer=bytes(row[3]), created_at_ms=row[4])


class SqlIdempotencyStore:
    """application.ports.IdempotencyStore over `keel_idempotency`."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        table = sql.table(IDEMPOTENCY)
        self._get = f"SELECT {_COLUMNS} FROM {table} WHERE scope = %s AND key = %s"
        self._delete = f"DELETE FROM {table} WHERE created_at_ms < %s"

    def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        row = self.sql.fetchone(self._get, (scope, key))
        return _record(row) if row else None

    def delete_older_than(self, cutoff_ms: int) -> int:
        return self.sql.execute(self._delete, (cutoff_ms,))
