"""The store: everything of Keel's that differs by database, built whole by that database's one
factory (`infrastructure.postgres.open_store`, `infrastructure.sqlite.open_store`), which the
composition root picks. The rest of the code is handed a Store and never asks which database
it is.

One connection pool per store: the Ledger runs on it (`ledger_env`), so its side tables, written
in the same transactions as its events, and every adapter here share the pool, as they always
have; closing the Ledger closes it, and so does `close()`. This module holds no SQL of its own.
"""
from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.utils import Environment

from application.ports import AggregateLoader, WriteLease
from infrastructure import migrations
from infrastructure.audit_store import SqlAccountDirectory, SqlAuditStore, SqlHolderVault
from infrastructure.idempotency import SqlIdempotencyStore
from infrastructure.idempotency_claims import SqlClaims
from infrastructure.keys import SqlKeyStore
from infrastructure.migrations import SchemaStatus
from infrastructure.readmodels import ViewDatabase
from infrastructure.schema import LIBRARY_TABLES
from infrastructure.sql import Sql

MAPPER_TOPIC = "infrastructure.mapper:MsgspecMapper"
# Names the store's pool in an Application's environment (see KeelPostgresFactory, KeelSQLiteFactory).
SHARED_POOL = "KEEL_STORE_POOL"
_POOLS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def base_env() -> dict[str, str]:
    """What every Application of every store has: Keel's stored-event format, and no DDL at
    construction (tables are made by `keel migrate` alone)."""
    return {"MAPPER_TOPIC": MAPPER_TOPIC, "CREATE_TABLE": "no"}


def share_pool(datastore: Any) -> str:
    token = uuid.uuid4().hex
    _POOLS[token] = datastore
    return token


def shared_pool(env: Environment) -> Any | None:
    """The store's datastore an Application's environment names, None when it names none."""
    token = env.get(SHARED_POOL)
    if not token:
        return None
    datastore = _POOLS.get(token)
    if datastore is None:
        raise RuntimeError("this environment's store is gone: open a new one (open_store)")
    return datastore


def create_library_tables(factory_class: Any, env: Mapping[str, str]) -> None:
    """The library's own tables of every Application (schema.LIBRARY_TABLES), made by the
    library's recorders exactly as an Application would make them at construction."""
    for name, recorders in LIBRARY_TABLES.items():
        factory = factory_class(Environment(name, {**env, "CREATE_TABLE": "yes"}))
        for kind in recorders:
            if kind == "application":
                factory.application_recorder()
            elif kind == "process":
                factory.process_recorder()
            else:
                factory.aggregate_recorder(kind)


class LogWaiter(Protocol):
    """How a follower of the ledger's log waits for new events after it has read everything:
    opened before the read, so that an event committed after it is never waited past."""

    def wait(self, stop: threading.Event) -> None:
        """Returns when events may have been committed since it was opened or last returned (at
        the latest after a short bound), or when `stop` is set."""

    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Store:
    """Everything a Keel process needs from its database, besides the Applications' recorders."""

    label: str  # "postgresql" or "sqlite": for logs, never for decisions
    # The embedded store: one process serves and runs every worker, and a command that opens the
    # store migrates it (nothing to run first). A server store is shared by many processes and
    # migrated only by `keel migrate`.
    embedded: bool
    sql: Sql  # the one SQL helper, on the store's pool
    env: Mapping[str, str]  # eventsourcing environment for an Application with a pool of its own (fraud)
    ledger_env: Mapping[str, str]  # the Ledger's: on the store's pool
    idempotency: SqlIdempotencyStore
    claims: SqlClaims
    keys: SqlKeyStore
    account_directory: SqlAccountDirectory
    holder_vault: SqlHolderVault
    audit: SqlAuditStore
    read_models: ViewDatabase
    write_lease: WriteLease  # PostgreSQL: an advisory lock; SQLite: NoLease (one writer anyway)
    aggregate_loader: AggregateLoader | None  # PostgreSQL: one round trip for many ids
    open_log_waiter: Callable[[], LogWaiter]  # PostgreSQL: LISTEN/NOTIFY; SQLite: polling
    # PostgreSQL: the log head read on an event loop (a connection of its own); SQLite: None.
    open_async_head: Callable[[], Any] | None
    sql_over: Callable[[Any], Sql]  # the helper over another Application's datastore (fraud's)
    _create_tables: Callable[[], None]  # the schema itself (PostgreSQL) and the library's tables
    _close: Callable[[], None]

    def migrate(self, up_to: int | None = None) -> list[int]:
        """`keel migrate`: the library's tables, then Keel's numbered migrations not yet applied
        (all, or up to `up_to`); returns the versions applied now. Running it again does nothing.
        Processes migrating one store at once take turns (the library's DDL is not safe to run
        concurrently on PostgreSQL)."""
        with self.sql.lock(migrations.LOCK_NAME):
            self._create_tables()
            return migrations.apply(self.sql, up_to)

    def schema_status(self) -> SchemaStatus:
        """This store's schema version against this code's; `.problem` is one line for an
        operator when they differ (a command should refuse to start on it)."""
        return migrations.status(self.sql)

    def close(self) -> None:
        self.write_lease.close()
        self._close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
