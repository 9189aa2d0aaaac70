"""Keel on PostgreSQL: the one factory the composition root calls, `open_store(settings)`.

This folder is the only code that knows it runs on PostgreSQL: the recorders (array inserts,
chain rows in the events' transaction), the SQL helper over psycopg, the projection writer,
the write lease (an advisory lock), the bulk aggregate loader and LISTEN/NOTIFY.
"""
from __future__ import annotations

from eventsourcing.utils import Environment

from infrastructure.audit_keys import load_holder_keks
from infrastructure.audit_store import SqlAccountDirectory, SqlAuditStore, SqlHolderVault
from infrastructure.idempotency import SqlIdempotencyStore
from infrastructure.idempotency_claims import SqlClaims
from infrastructure.keys import SqlKeyStore
from infrastructure.postgres.async_head import PostgresAsyncHead
from infrastructure.postgres.bulk_load import PostgresAggregateLoader
from infrastructure.postgres.log_waiter import PostgresLogWaiter
from infrastructure.postgres.recorders import POOL_WAIT_S, KeelPostgresFactory
from infrastructure.postgres.sql import PostgresSql
from infrastructure.postgres.views import PostgresViewTx
from infrastructure.postgres.write_lease import PostgresWriteLease
from infrastructure.readmodels import ViewDatabase
from infrastructure.schema import LEDGER, LEDGER_EVENTS, LEDGER_SNAPSHOTS
from infrastructure.settings import Settings
from infrastructure.store import SHARED_POOL, Store, base_env, create_library_tables, share_pool

__all__ = ["open_store"]

FACTORY_TOPIC = "infrastructure.postgres.recorders:KeelPostgresFactory"


def persistence_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment of every Application on this server and schema."""
    pg = settings.postgres()
    return {
        **base_env(),
        "PERSISTENCE_MODULE": FACTORY_TOPIC,
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": pg.user,
        "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_DBNAME": pg.dbname,
        "POSTGRES_SCHEMA": pg.schema,
        "POSTGRES_POOL_SIZE": str(settings.pg_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.pg_pool_size),
        "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_S),
        "POSTGRES_LOCK_TIMEOUT": "30",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
    }


def open_store(settings: Settings) -> Store:
    """The store of a PostgreSQL deployment (`KEEL_DATABASE_URL=postgresql://…`, tables in
    `KEEL_DATABASE_SCHEMA`). Opens no connection yet: the pool connects on first use."""
    pg = settings.postgres()
    env = persistence_env(settings)
    # The pool is the library's, made exactly as for an Application (its settings from `env`).
    datastore = KeelPostgresFactory(Environment(LEDGER, env)).datastore
    ledger_env = {**env, SHARED_POOL: share_pool(datastore)}
    sql = PostgresSql(datastore)
    # None without a configured KEK: the vault then refuses to seal or reveal (`keel serve`
    # refuses to start), while migrations and the other commands still run.
    keks = load_holder_keks(settings)

    def create_tables() -> None:
        with sql.transaction() as cur:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg.schema}"')
        create_library_tables(KeelPostgresFactory, ledger_env)

    return Store(
        label="postgresql",
        embedded=False,
        sql=sql,
        env=env,
        ledger_env=ledger_env,
        idempotency=SqlIdempotencyStore(sql),
        claims=SqlClaims(sql),
        keys=SqlKeyStore(sql),
        account_directory=SqlAccountDirectory(sql),
        holder_vault=SqlHolderVault(sql, keks),
        audit=SqlAuditStore(sql),
        read_models=ViewDatabase(sql, PostgresViewTx),
        write_lease=PostgresWriteLease(pg),
        aggregate_loader=PostgresAggregateLoader(datastore, LEDGER_EVENTS, LEDGER_SNAPSHOTS),
        # The recorder NOTIFYs on a channel named after its events table.
        open_log_waiter=lambda: PostgresLogWaiter(pg, LEDGER_EVENTS),
        open_async_head=lambda: PostgresAsyncHead(pg, LEDGER_EVENTS),
        sql_over=PostgresSql,
        _create_tables=create_tables,
        _close=datastore.close,
    )
