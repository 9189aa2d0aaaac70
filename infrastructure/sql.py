"""The one SQL helper: how Keel reads and writes its own tables, the same way on both databases.

Statements use `%s` placeholders (PostgreSQL's own, passed through untouched on the hot paths;
the SQLite helper rewrites them to `?`) and return tuple rows. One statement runs on its own
(`fetchall`, `execute`: a single round trip on PostgreSQL's autocommit connections); several run
in one `transaction()`, whose cursor takes the same placeholders. The implementations live with
their database (infrastructure/postgres/sql.py, infrastructure/sqlite/sql.py) and run on the
pool of the store they belong to. Nothing here names a table, and nothing here holds business
rules.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol
from uuid import UUID

# Column types `insert_rows` knows how to send as arrays (PostgreSQL) or values (SQLite).
ColumnType = Literal["text", "bigint", "uuid", "bytea"]


class Cursor(Protocol):
    """An open transaction's cursor: `%s` placeholders, tuple rows, `rowcount` of the last
    statement. `prepare=True` asks the server to keep the statement's plan (PostgreSQL)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, statement: Any, params: Sequence[Any] = (), *, prepare: bool | None = None) -> Any: ...

    def executemany(self, statement: Any, rows: Iterable[Sequence[Any]]) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Sql(ABC):
    """Statements on one store. Besides running them, it knows the few facts of its database
    that a statement has to spell out (the events tables' position column, how a UUID is
    stored), so that callers never ask which database this is."""

    # Which DDL infrastructure/schema.py renders; nothing else decides anything on it.
    dialect: Literal["postgresql", "sqlite"]
    # The log position of a row of the library's events tables.
    position_column: str

    @abstractmethod
    def table(self, name: str) -> str:
        """The name to put in a statement (schema-qualified on PostgreSQL)."""

    @abstractmethod
    def uuid(self, value: UUID) -> Any:
        """A UUID as a parameter for one of Keel's own uuid columns."""

    @abstractmethod
    def event_id(self, value: UUID) -> Any:
        """A UUID as a parameter for the originator_id of the library's events tables."""

    @abstractmethod
    def to_uuid(self, value: Any) -> UUID:
        """A uuid column's value as read back (from either kind of table)."""

    @staticmethod
    @abstractmethod
    def event_id_text(value: Any) -> str:
        """An originator id of the library's events tables, as read back, in its text form."""

    @abstractmethod
    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def fetchone(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.fetchall(statement, params)
        return rows[0] if rows else None

    @abstractmethod
    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Runs one writing statement on its own; returns the number of rows it changed."""

    @abstractmethod
    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each row, in one transaction."""

    @abstractmethod
    def insert_rows(
        self, table: str, columns: Sequence[str], types: Sequence[ColumnType], rows: Sequence[Sequence[Any]],
        *, if_new: bool = False,
    ) -> None:
        """Inserts many rows in one statement where the database allows (PostgreSQL: one INSERT
        over arrays, one round trip whatever the count). `if_new`: rows whose key exists are
        skipped. Values of `uuid` columns are UUIDs."""

    @abstractmethod
    def transaction(self, *, commit: bool = True) -> AbstractContextManager[Cursor]:
        """Several statements in one transaction, committed at the end (rolled back when
        `commit` is False, or on an exception)."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[Cursor]:
        """A read-only transaction in which every statement sees the same snapshot."""

    @abstractmethod
    def exclusive_transaction(self, name: str) -> AbstractContextManager[Cursor]:
        """A transaction that no other process holding an exclusive transaction of the same
        `name` on this store is inside at the same time (schema migrations)."""

    @abstractmethod
    def lock(self, name: str) -> AbstractContextManager[None]:
        """Holds a lock of this name on this store across processes until the block ends, while
        the block runs any statements and transactions on other connections (PostgreSQL: a
        session advisory lock on a connection of its own; SQLite: a lock file beside the
        database)."""

    @abstractmethod
    def execute_erasing(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Runs a statement that destroys data, so that, where the database allows it, no copy of
        the old bytes is left in its files; returns the number of rows it changed."""

    @abstractmethod
    def table_exists(self, name: str) -> bool: ...

