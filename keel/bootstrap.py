"""The composition root: the one place that turns Settings into running Applications.

`keel serve`, the workers, the CLI and the tests all call `build()`; nothing else constructs
an Application or reads the environment.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from application.aggregate_cache import AsyncLogHead
from application.audit import Audit
from application.group_commit import CommitHooks, GroupCommitWriter
from application.ledger import Ledger
from fraud.service import FraudService
from infrastructure.readside import ReadSide
from infrastructure.feed import FeedStore
from infrastructure.oauth import TokenService, token_service
from infrastructure.webhooks import SqlWebhookStore, UrlGuard
from infrastructure.mapper import KeyRing, MsgspecMapper
from infrastructure.migrations import SchemaStatus
from infrastructure.settings import Settings
from infrastructure.store import Store

log = logging.getLogger(__name__)


def _configure_mapper(app: Any, settings: Settings) -> None:
    assert isinstance(app.mapper, MsgspecMapper), "MAPPER_TOPIC must select the msgspec mapper"
    from infrastructure.audit_keys import data_key_spec

    # KEEL_DATA_KEY, then KEEL_DATA_KEY_FILE; the embedded store's own data-keys file otherwise
    spec = data_key_spec(settings)
    app.mapper.keyring = KeyRing.parse(spec) if spec else None


def open_store(settings: Settings) -> Store:
    """The store of this deployment (infrastructure/store.py): the one place that picks the
    database, by the URL's scheme. Everything that differs by database comes from it."""
    if settings.is_postgres:
        from infrastructure.postgres import open_store as open_database
    else:
        from infrastructure.sqlite import open_store as open_database
    return open_database(settings)


def store_problem(settings: Settings) -> Exception | None:
    """Why this deployment's store cannot be used now, asked after a command failed on it: the
    database's own diagnosis (a SettingsError for a configuration to fix, StoreUnreachable for a
    server that does not answer), one line naming the fix; None when it looks usable."""
    if settings.is_postgres:
        from infrastructure.postgres.diagnose import connection_problem

        return connection_problem(settings)
    from infrastructure.sqlite.diagnose import store_problem as sqlite_problem

    return sqlite_problem(settings)


def build_ledger(settings: Settings, store: Store | None = None) -> Ledger:
    """The Ledger on the store's pool, with the store's adapters. Without a store it opens its
    own; either way closing the Ledger closes the pool."""
    store = store if store is not None else open_store(settings)
    ledger = Ledger(env=dict(store.ledger_env))
    _configure_mapper(ledger, settings)
    ledger.holder_vault = store.holder_vault
    ledger.account_directory = store.account_directory
    ledger.write_lease = store.write_lease
    ledger.aggregate_loader = store.aggregate_loader
    assert store.aggregate_loader is None or ledger.snapshots is not None, "the bulk loader reads snapshots"
    return ledger


def build_audit(settings: Settings, ledger: Ledger, store: Store) -> Any:
    """The auditor's service (application/audit.py) over the store's audit tables and the audit keys."""
    from application.audit import Audit
    from infrastructure.audit_keys import SignatureChecker, describe_public_key, load_signer, trusted_public_keys

    signer = load_signer(settings)
    trusted = trusted_public_keys(settings)  # the signer's own first
    public = describe_public_key(trusted[0]) if trusted else None
    return Audit(ledger, store.audit, ledger.holder_vault, SignatureChecker(*trusted), signer, public)


def migrate(settings: Settings) -> list[int]:
    """`keel migrate`: the library's tables, then every numbered migration not yet applied, each
    recorded (infrastructure/migrations/); returns the versions applied now. Running it again
    does nothing. The only code that runs DDL."""
    with open_store(settings) as store:
        return _migrate(settings, store)


def _migrate(settings: Settings, store: Store) -> list[int]:
    from infrastructure.audit_keys import data_key_spec

    # As every command that opens the embedded store: its data key is made on first start.
    data_key_spec(settings)
    return store.migrate()


def schema_status(settings: Settings) -> SchemaStatus:
    """The store's schema version against this code's: `.problem` is the one line to refuse to
    start on (None when `keel migrate` has brought the store to this version)."""
    with open_store(settings) as store:
        return store.schema_status()


def prepare_store(settings: Settings) -> SchemaStatus:
    """What a command does before `build()`: the embedded store is migrated (it needs no separate
    step); a server store is only looked at (`keel migrate` alone changes it). Returns the
    schema status: refuse to run when its `.problem` is set."""
    with open_store(settings) as store:
        if store.embedded:
            _migrate(settings, store)
        return store.schema_status()


@dataclass(frozen=True)
class Container:
    """Everything a Keel process runs on, built whole by `build()` and handed down: the API gets
    its services from it (api/app.py), the workers and the command line too. Nothing is built
    lazily on the side."""

    settings: Settings
    store: Store  # everything that differs by database (infrastructure/store.py)
    ledger: Ledger
    writer: GroupCommitWriter
    commit_hooks: CommitHooks
    idempotency: Any  # application.ports.IdempotencyStore
    claims: Any  # cross-process Idempotency-Key claims
    keys: Any  # API key store
    audit: Audit
    read_side: ReadSide
    fraud: FraudService
    # real time (issue #17; docs/realtime.md): the event feed, webhooks, OAuth access tokens
    feed: FeedStore
    webhooks: SqlWebhookStore
    url_guard: UrlGuard
    tokens: TokenService

    def open_log_head(self) -> AsyncLogHead | None:
        """For an event loop (the API's): the ledger log's head read there without a thread,
        where the store can (PostgreSQL); None elsewhere. Each loop opens its own."""
        if self.store.open_async_head is None:
            return None
        reader = self.store.open_async_head()
        return AsyncLogHead(reader, reader.close, reader.fetchall)

    def close(self) -> None:
        self.writer.stop()
        self.fraud.close()
        self.ledger.close()
        self.store.close()


def build(settings: Settings, *, start_writer: bool = True) -> Container:
    from fraud.model import ModelStore
    from fraud.service import FraudService

    store = open_store(settings)
    ledger = build_ledger(settings, store)
    hooks = CommitHooks()
    writer = GroupCommitWriter(
        ledger,
        window_s=settings.group_commit_window_ms / 1000,
        batch_max=settings.group_commit_batch_max,
        queue_max=settings.group_commit_queue_max,
        on_commit=hooks,
    )
    fraud = FraudService(
        ledger=ledger,
        app=build_fraud_app(settings, store),
        store=ModelStore(settings.fraud_model_dir, settings.fraud_model_key),
        elevated=settings.fraud_elevated_threshold,
        high=settings.fraud_high_threshold,
    )
    container = Container(
        settings=settings,
        store=store,
        ledger=ledger,
        writer=writer,
        commit_hooks=hooks,
        idempotency=store.idempotency,
        claims=store.claims,
        keys=store.keys,
        audit=build_audit(settings, ledger, store),
        read_side=_read_side(ledger, store),
        fraud=fraud,
        feed=FeedStore(store.sql),
        webhooks=SqlWebhookStore(store.sql, ledger.mapper.keyring),
        url_guard=UrlGuard(settings.webhook_allowed_hosts),
        tokens=token_service(settings, store.sql),
    )
    if start_writer:
        writer.start()
    return container


def _read_side(ledger: Ledger, store: Store) -> ReadSide:
    from infrastructure.readmodels import LogReader

    def event_time_after(position: int) -> datetime | None:
        notes = ledger.recorder.select_notifications(position, 1, inclusive_of_start=False)
        return ledger.mapper.to_domain_event(notes[0]).timestamp if notes else None

    db = store.read_models
    from_log = LogReader(db, ledger.recorder, ledger.mapper).last_position

    def last_position(key: UUID) -> int:
        known = ledger.latest_position(key)  # the writer's, when current: no query
        return known if known is not None else from_log(key)

    return ReadSide(db, ledger.recorder.max_notification_id, event_time_after, last_position)


# ---- fraud scoring (fraud/) -------------------------------------------------------------------


def build_fraud_app(settings: Settings, store: Store | None = None) -> Any:
    """The fraud module's Application, on a pool of its own (its writes never queue behind the
    ledger's); its tables are made by `keel migrate`."""
    from fraud.app import FraudApp

    from infrastructure.transfer_ids import SqlTransferIds

    store = store if store is not None else open_store(settings)
    app = FraudApp(env=dict(store.env))
    _configure_mapper(app, settings)
    app.transfer_ids = SqlTransferIds(store.sql_over(app.recorder.datastore))  # type: ignore[attr-defined]
    return app
