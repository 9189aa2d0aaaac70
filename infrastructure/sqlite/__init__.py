"""Keel on SQLite, the embedded default: the one factory the composition root calls, `open_store(settings)`.

This folder is the only code that knows it runs on SQLite: the recorders, the SQL helper over
the library's SQLite datastore, the projection writer and polling for new events. One process
writes (SQLite has one writer), so there is no write lease and no bulk loader.
"""
from __future__ import annotations

from eventsourcing.utils import Environment

from application.ports import NoLease
from infrastructure.audit_keys import load_holder_keks
from infrastructure.audit_store import SqlAccountDirectory, SqlAuditStore, SqlHolderVault
from infrastructure.idempotency import SqlIdempotencyStore
from infrastructure.idempotency_claims import SqlClaims
from infrastructure.keys import SqlKeyStore
from infrastructure.readmodels import ViewDatabase
from infrastructure.schema import LEDGER
from infrastructure.settings import Settings
from infrastructure.sqlite.log_waiter import PollingLogWaiter
from infrastructure.sqlite.recorders import KeelSQLiteFactory, secure_sqlite_files
from infrastructure.sqlite.sql import SQLiteSql
from infrastructure.sqlite.views import SQLiteViewTx
from infrastructure.store import SHARED_POOL, Store, base_env, create_library_tables, share_pool

__all__ = ["open_store"]

FACTORY_TOPIC = "infrastructure.sqlite.recorders:KeelSQLiteFactory"
LOCK_TIMEOUT_S = 30


def persistence_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment of every Application in this SQLite file."""
    return {
        **base_env(),
        "PERSISTENCE_MODULE": FACTORY_TOPIC,
        "SQLITE_DBNAME": settings.sqlite_path,
        "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
    }


def open_store(settings: Settings) -> Store:
    """The embedded store (`KEEL_DATABASE_URL=sqlite:///…`, default ./var/keel.db). Makes the
    file private (0600 in a 0700 directory) before SQLite first opens it, and makes the holder
    KEK beside it on first start."""
    if settings.sqlite_file is not None:
        secure_sqlite_files(settings.sqlite_file)
    env = persistence_env(settings)
    datastore = KeelSQLiteFactory(Environment(LEDGER, env)).datastore
    ledger_env = {**env, SHARED_POOL: share_pool(datastore)}
    sql = SQLiteSql(datastore, settings.sqlite_file)
    keks = load_holder_keks(settings)

    return Store(
        label="sqlite",
        embedded=True,
        sql=sql,
        env=env,
        ledger_env=ledger_env,
        idempotency=SqlIdempotencyStore(sql),
        claims=SqlClaims(sql),
        keys=SqlKeyStore(sql),
        account_directory=SqlAccountDirectory(sql),
        holder_vault=SqlHolderVault(sql, keks),
        audit=SqlAuditStore(sql),
        read_models=ViewDatabase(sql, SQLiteViewTx),
        write_lease=NoLease(),
        aggregate_loader=None,
        open_log_waiter=PollingLogWaiter,
        open_async_head=None,  # no event-loop driver: balance reads take a thread
        sql_over=SQLiteSql,
        _create_tables=lambda: create_library_tables(KeelSQLiteFactory, ledger_env),
        _close=datastore.close,
    )
