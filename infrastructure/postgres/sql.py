"""The SQL helper (infrastructure/sql.py) on PostgreSQL, over the store's psycopg pool.

Statements pass to psycopg as written (`%s` is its placeholder). The pool's connections are in
autocommit mode, so one statement on its own is one round trip, with no BEGIN/COMMIT around it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal
from uuid import UUID

from psycopg.rows import tuple_row

from infrastructure.sql import ColumnType, Cursor, Sql

_ARRAY_TYPES: dict[str, str] = {"text": "text[]", "bigint": "bigint[]", "uuid": "uuid[]", "bytea": "bytea[]"}


class PostgresSql(Sql):
    dialect: Literal["postgresql"] = "postgresql"
    position_column = "notification_id"
    # A stored originator id as text: psycopg returns UUIDs already (str, no extra call per row).
    event_id_text = str

    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore  # eventsourcing's PostgresDatastore: its pool and its schema
        self.schema = datastore.schema
        self._prefix = f'"{self.schema}".'

    def table(self, name: str) -> str:
        return self._prefix + name

    def uuid(self, value: UUID) -> Any:
        return value

    def event_id(self, value: UUID) -> Any:
        return value

    def to_uuid(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else UUID(str(value))

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # One statement on an autocommit connection: one round trip, no BEGIN/ROLLBACK.
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(statement, params, prepare=True)
            return cur.fetchall()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(statement, params, prepare=True)
            return cur.rowcount

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(statement, rows)

    def insert_rows(
        self, table: str, columns: Sequence[str], types: Sequence[ColumnType], rows: Sequence[Sequence[Any]],
        *, if_new: bool = False,
    ) -> None:
        if not rows:
            return
        # One statement over one array per column: executemany sent a statement per row.
        arrays = ", ".join(f"%b::{_ARRAY_TYPES[t]}" for t in types)  # binary: no per-element quoting
        conflict = " ON CONFLICT DO NOTHING" if if_new else ""
        self.execute(
            f"INSERT INTO {self.table(table)} ({', '.join(columns)}) SELECT * FROM unnest({arrays}){conflict}",
            [list(c) for c in zip(*rows, strict=True)],
        )

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with self.datastore.get_connection() as conn:
            with conn.transaction(force_rollback=not commit), conn.cursor(row_factory=tuple_row) as cur:
                yield cur

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        with self.transaction(commit=False) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield cur

    def _lock_id(self, name: str) -> int:
        # One advisory lock per (schema, name): deployments that share a server in different
        # schemas do not wait for each other.
        digest = hashlib.sha256(f"keel\x00{self.schema}\x00{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @contextmanager
    def exclusive_transaction(self, name: str) -> Iterator[Cursor]:
        with self.transaction(commit=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id(name),))
            yield cur

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        lock_id = self._lock_id(name)
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))

    def execute_erasing(self, statement: str, params: Sequence[Any] = ()) -> int:
        # The old row version stays in the heap until VACUUM, and in WAL and backups: callers
        # erase only what is useless without a key kept outside the database.
        return self.execute(statement, params)

    def table_exists(self, name: str) -> bool:
        row = self.fetchone("SELECT to_regclass(%s) IS NOT NULL", (self.table(name),))
        return bool(row and row[0])
