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
    app.mapper.keyring = KeyRing.parse(settings.data_key) if settings.data_key else None


def build_ledger(settings: Settings, *, create_table: bool = False) -> Ledger:
    ledger = Ledger(env=persistence_env(settings, create_table=create_table))
    _configure_mapper(ledger, settings)
    return ledger


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
    else:
        ledger = build_ledger(settings, create_table=True)
        with ledger.recorder.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
            for statement in extra_ddl(settings):
                c.execute(statement)
        ledger.close()


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
    return Container(settings=settings, ledger=ledger, writer=writer, idempotency=idempotency)


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
