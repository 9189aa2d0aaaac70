"""The SQL helper (infrastructure/sql.py) on SQLite, over the store's eventsourcing datastore.

Statements are written with `%s` placeholders and rewritten to SQLite's `?` once each (cached).
Writes go through the datastore's writer connection, so this process's writers take turns
before SQLite's own lock is involved. UUIDs in Keel's tables are stored as their text; the
library's events tables store originator ids as 32 hex digits.
"""
from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal
from uuid import UUID

from eventsourcing.sqlite import SQLiteTransaction

from infrastructure.sql import ColumnType, Cursor, Sql

try:
    import fcntl
except ImportError:  # not POSIX: `lock` holds nothing across processes there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE_MODE = 0o600


@functools.lru_cache(maxsize=1024)
def qmark(statement: str) -> str:
    return statement.replace("%s", "?")


def _value(v: Any) -> Any:
    return str(v) if isinstance(v, UUID) else v


class SQLiteCursor:
    """sqlite3's cursor with `%s` placeholders and tuple rows."""

    __slots__ = ("_c",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._c = cursor

    @property
    def rowcount(self) -> int:
        return self._c.rowcount

    def execute(self, statement: Any, params: Sequence[Any] = (), *, prepare: bool | None = None) -> SQLiteCursor:
        self._c.execute(qmark(statement), params)
        return self

    def executemany(self, statement: Any, rows: Iterable[Sequence[Any]]) -> SQLiteCursor:
        self._c.executemany(qmark(statement), rows)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._c.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._c.fetchall()]


class _ImmediateTransaction(SQLiteTransaction):
    """The library's transaction (its commit, rollback and error mapping), begun with the write
    lock taken: a read followed by a write can then never find another writer in between."""

    def __enter__(self) -> Any:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


class SQLiteSql(Sql):
    dialect: Literal["sqlite"] = "sqlite"
    position_column = "rowid"

    @staticmethod
    def event_id_text(value: Any) -> str:
        return str(UUID(value))  # stored as 32 hex digits

    def __init__(self, datastore: Any, db_file: str | None = None) -> None:
        self.datastore = datastore  # eventsourcing's SQLiteDatastore
        self.db_file = db_file  # the database's file (None: in memory), beside which locks live

    def table(self, name: str) -> str:
        return name

    def uuid(self, value: UUID) -> Any:
        return str(value)

    def event_id(self, value: UUID) -> Any:
        return value.hex

    def to_uuid(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else UUID(value)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(qmark(statement), tuple(params))
            return [tuple(r) for r in c.fetchall()]

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        with self.datastore.transaction(commit=True) as c:
            c.execute(qmark(statement), tuple(params))
            return c.sqlite_cursor.rowcount  # the library's cursor wrapper has no rowcount

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.executemany(qmark(statement), [tuple(r) for r in rows])

    def insert_rows(
        self, table: str, columns: Sequence[str], types: Sequence[ColumnType], rows: Sequence[Sequence[Any]],
        *, if_new: bool = False,
    ) -> None:
        if not rows:
            return
        marks = ", ".join("?" for _ in columns)
        conflict = " ON CONFLICT DO NOTHING" if if_new else ""
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}){conflict}",
                [tuple(_value(v) for v in r) for r in rows],
            )

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as c:
            yield SQLiteCursor(c.sqlite_cursor)

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        # A read transaction in WAL mode sees one snapshot from its first read to its end.
        with self.transaction(commit=False) as cur:
            yield cur

    @contextmanager
    def exclusive_transaction(self, name: str) -> Iterator[Cursor]:
        # SQLite has one write lock per database: holding it from BEGIN excludes every other writer.
        with self.datastore.get_connection(commit=True) as conn, _ImmediateTransaction(conn, commit=True) as c, c:
            yield SQLiteCursor(c.sqlite_cursor)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        # A lock file beside the database (flock: released by the kernel if the process dies).
        if self.db_file is None or fcntl is None:
            yield
            return
        fd = os.open(f"{self.db_file}.{name}.lock", os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def execute_erasing(self, statement: str, params: Sequence[Any] = ()) -> int:
        # Zero the freed bytes of the old row (secure_delete), then move the WAL into the database
        # file and truncate it, so that no page of either file keeps the old bytes.
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete = ON")
            c.execute(qmark(statement), tuple(params))
            changed = c.sqlite_cursor.rowcount
            c.execute("PRAGMA secure_delete = OFF")
        if changed > 0:
            with self.datastore.get_connection(commit=True) as conn:
                conn.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return changed

    def table_exists(self, name: str) -> bool:
        return self.fetchone("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", (name,)) is not None
