"""The composition root: the one place that turns Settings into running Applications.

`keel serve`, the workers, the CLI and the tests all call `build()`; nothing else constructs
an Application or reads the environment.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from application.group_commit import GroupCommitWriter
from application.ledger import Ledger
from infrastructure.idempotency import PostgresIdempotencyStore, SQLiteIdempotencyStore
from infrastructure.mapper import KeyRing, MsgspecMapper
from infrastructure.persistence import extra_ddl, persistence_env
from infrastructure.settings import Settings

log = logging.getLogger(__name__)


def _configure_mapper(app: Any, settings: Settings) -> None:
    assert isinstance(app.mapper, MsgspecMapper), "MAPPER_TOPIC must select the msgspec mapper"
    from infrastructure.audit_keys import data_key_spec

    # KEEL_DATA_KEY, then KEEL_DATA_KEY_FILE; the embedded store's own data-keys file otherwise
    spec = data_key_spec(settings)
    app.mapper.keyring = KeyRing.parse(spec) if spec else None


def build_ledger(settings: Settings, *, create_table: bool = False) -> Ledger:
    from infrastructure.audit_keys import load_holder_keks

    env = persistence_env(settings, create_table=create_table)
    # Also for migrate(): the embedded store makes its KEK file on first start, and a configured
    # KEK that is missing or malformed fails here, before anything is opened.
    keks = load_holder_keks(settings)  # None on PostgreSQL without one: the vault then refuses
    ledger = Ledger(env=env)
    _configure_mapper(ledger, settings)
    if not create_table:  # migrate() builds a Ledger before the key table exists
        from infrastructure.audit_store import Db, SqlAccountDirectory, SqlHolderVault

        db = Db(ledger.recorder.datastore, postgres=settings.is_postgres)  # type: ignore[attr-defined]
        ledger.holder_vault = SqlHolderVault(db, keks)
        ledger.account_directory = SqlAccountDirectory(db)
    if settings.is_postgres and not create_table:
        from infrastructure.write_lease import PostgresWriteLease

        ledger.write_lease = PostgresWriteLease(settings.postgres())
    if settings.is_postgres:
        from infrastructure.bulk_load import PostgresAggregateLoader

        assert ledger.snapshots is not None, "the Ledger snapshots accounts (snapshotting_intervals)"
        ledger.aggregate_loader = PostgresAggregateLoader(
            ledger.recorder.datastore, ledger.recorder.events_table_name, ledger.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
        )
    return ledger


def build_audit(settings: Settings, ledger: Ledger) -> Any:
    """The auditor's service (application/audit.py) over the Ledger's store and the audit keys."""
    from application.audit import Audit
    from infrastructure.audit_keys import SignatureChecker, describe_public_key, load_signer, trusted_public_keys
    from infrastructure.audit_store import Db, SqlAuditStore

    db = Db(ledger.recorder.datastore, postgres=settings.is_postgres)  # type: ignore[attr-defined]
    signer = load_signer(settings)
    trusted = trusted_public_keys(settings)  # the signer's own first
    public = describe_public_key(trusted[0]) if trusted else None
    return Audit(ledger, SqlAuditStore(db), ledger.holder_vault, SignatureChecker(*trusted), signer, public)


def migrate(settings: Settings) -> None:
    """Creates every table once. Safe to run again; the only code that runs DDL."""
    if settings.is_postgres:
        pg = settings.postgres()
        with psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password or None, dbname=pg.dbname, autocommit=True
        ) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg.schema}"')
            for statement in extra_ddl(settings):
                conn.execute(statement)
        ledger = build_ledger(settings, create_table=True)
        ledger.close()
        build_fraud_app(settings, create_table=True).close()
    else:
        ledger = build_ledger(settings, create_table=True)
        with ledger.recorder.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
            for statement in extra_ddl(settings):
                c.execute(statement)
        ledger.close()
        build_fraud_app(settings, create_table=True).close()


@dataclass
class Container:
    settings: Settings
    ledger: Ledger
    writer: GroupCommitWriter
    idempotency: Any
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.writer.stop()
        self.ledger.close()


def build(settings: Settings, *, start_writer: bool = True) -> Container:
    ledger = build_ledger(settings)
    writer = GroupCommitWriter(
        ledger,
        window_s=settings.group_commit_window_ms / 1000,
        batch_max=settings.group_commit_batch_max,
        queue_max=settings.group_commit_queue_max,
    )
    if start_writer:
        writer.start()
    datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
    idempotency = PostgresIdempotencyStore(datastore) if settings.is_postgres else SQLiteIdempotencyStore(datastore)
    container = Container(settings=settings, ledger=ledger, writer=writer, idempotency=idempotency)
    container.extras["audit"] = build_audit(settings, ledger)
    return container


def key_store(container: Container) -> Any:
    """The API key store of this deployment (table `keel_api_keys`, created by migrate)."""
    from infrastructure.keys import PostgresKeyStore, SQLiteKeyStore

    datastore = container.ledger.recorder.datastore  # type: ignore[attr-defined]
    return PostgresKeyStore(datastore) if container.settings.is_postgres else SQLiteKeyStore(datastore)


def idempotency_claims(container: Container) -> Any:
    """Cross-process claims on Idempotency-Keys (table `keel_idempotency_claims`)."""
    from infrastructure.idempotency_claims import PostgresClaims, SQLiteClaims

    datastore = container.ledger.recorder.datastore  # type: ignore[attr-defined]
    return PostgresClaims(datastore) if container.settings.is_postgres else SQLiteClaims(datastore)


# ---- fraud scoring (fraud/) -------------------------------------------------------------------


def build_fraud_app(settings: Settings, *, create_table: bool = False) -> Any:
    from fraud.app import FraudApp

    app = FraudApp(env=persistence_env(settings, create_table=create_table))
    _configure_mapper(app, settings)
    if create_table:
        app.create_indexes()
    return app


def fraud_service(container: Container) -> Any:
    """The container's FraudService, built on first use (the API and the worker share it)."""
    from fraud.model import ModelStore
    from fraud.service import FraudService

    service = container.extras.get("fraud")
    if service is None:
        s = container.settings
        service = FraudService(
            ledger=container.ledger,
            app=build_fraud_app(s),
            store=ModelStore(s.fraud_model_dir, s.fraud_model_key),
            elevated=s.fraud_elevated_threshold,
            high=s.fraud_high_threshold,
        )
        container.extras["fraud"] = service
    return service
