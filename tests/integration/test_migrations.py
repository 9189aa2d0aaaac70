"""Versioned migrations on both stores: a store made by the previous migration level upgrades with
`keel migrate` and keeps its data; a second `keel migrate` does nothing; a store that is not
migrated, or only partly, says so in one line; two processes migrating at once apply each
migration once. Also the store's adapters that nothing else exercises yet."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount
from application.ports import IdempotencyRecord
from application.view_follower import ViewFollower
from infrastructure.keys import new_key
from infrastructure.migrations import EXPECTED_VERSION, MIGRATIONS
from infrastructure.readmodels import LogReader, SqlViewStore
from infrastructure.schema import SCHEMA_VERSION
from infrastructure.settings import Settings, load_settings
from infrastructure.transfer_ids import SqlTransferIds
from keel.bootstrap import Container, build, migrate, open_store, prepare_store, schema_status
from tests.conftest import PG_DSN, TEST_HOLDER_KEK, require_postgres
from tests.readmodels.helpers import dump_views, literal_fold, log_events

T = "tenant-m"
PREVIOUS = EXPECTED_VERSION - 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty(request: pytest.FixtureRequest, tmp_path: Any, pg_session_schemas: list[str]) -> Settings:
    """Settings of a store nothing has migrated yet."""
    if request.param == "postgres":
        require_postgres()
        schema = f"keel_test_{uuid.uuid4().hex[:12]}"
        pg_session_schemas.append(schema)
        return load_settings({}, database_url=PG_DSN, database_schema=schema, holder_kek=TEST_HOLDER_KEK)
    return load_settings({}, database_url=f"sqlite:///{tmp_path}/keel-{uuid.uuid4().hex[:8]}.db")


class _StoreResponse:
    """An OutcomeRecorder that stores one fixed idempotency record with the command's effect."""

    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record

    def recorded(self) -> bool:
        return False

    def render(self, outcome: object) -> IdempotencyRecord:
        return self.record


def _project(c: Container) -> None:
    db = c.read_side.db
    ViewFollower(LogReader(db, c.ledger.recorder, c.ledger.mapper), SqlViewStore(db)).catch_up()


def _versions(settings: Settings) -> list[tuple[int, str]]:
    with open_store(settings) as store:
        rows = store.sql.fetchall(f"SELECT version, name FROM {store.sql.table(SCHEMA_VERSION)} ORDER BY version")
    return [(int(v), n) for v, n in rows]


def test_a_store_at_the_previous_level_upgrades_and_keeps_its_data(empty: Settings) -> None:
    with open_store(empty) as store:
        assert store.migrate(up_to=PREVIOUS) == list(range(1, EXPECTED_VERSION))
    status = schema_status(empty)
    assert (status.current, status.expected, status.up_to_date) == (PREVIOUS, EXPECTED_VERSION, False)
    assert status.problem == f"the store's schema is at version {PREVIOUS} of {EXPECTED_VERSION}: run `keel migrate`"

    # Data of every kind, written through the real paths at the previous level — except the
    # stored idempotent answer, whose shape migration 3 changes: written as that level wrote it.
    created_ms = int(time.time() * 1000)
    record = IdempotencyRecord(scope="key-m", key="pay-1", request_hash="h1", answer=(201).to_bytes(2, "big") + b'{"ok":true}',
                               created_at_ms=created_ms)  # fmt: skip
    with open_store(empty) as store:
        if PREVIOUS >= 3:  # migration 3 has run: the answer is opaque
            store.sql.execute(
                f"INSERT INTO {store.sql.table('keel_idempotency')} (scope, key, request_hash, answer, created_at_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                ("key-m", "pay-1", "h1", record.answer, created_ms),
            )
        else:
            store.sql.execute(
                f"INSERT INTO {store.sql.table('keel_idempotency')} (scope, key, request_hash, status_code, body, created_at_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                ("key-m", "pay-1", "h1", 201, b'{"ok":true}', created_ms),
            )
    key, _ = new_key("banking", T)
    c = build(empty)
    try:
        a = c.writer.execute(OpenAccount(tenant=T, currency="USD", holder={"name": "Ann Example", "email": "ann@example.com"}))
        b = c.writer.execute(OpenAccount(tenant=T, currency="USD"))
        c.writer.execute(Deposit(tenant=T, account_id=a.id, amount_minor=10_000, currency="USD"))
        c.writer.execute(
            MakeTransfer(tenant=T, debit_account_id=a.id, credit_account_id=b.id, amount_minor=2_500, currency="USD"),
        )
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=b.id, credit_account_id=a.id, amount_minor=500,
                                      currency="USD", pending=True))  # fmt: skip
        c.keys.add(key)
        _project(c)
        views_before = dump_views(c.read_side.db)
        assert views_before["transfers"] and views_before["accounts"]
        report_before = c.audit.verify()
        assert report_before.ok
    finally:
        c.close()

    assert migrate(empty) == [EXPECTED_VERSION]  # `keel migrate`
    assert migrate(empty) == []  # again: nothing to do
    assert schema_status(empty).up_to_date and schema_status(empty).problem is None
    assert _versions(empty) == [(m.version, m.name) for m in MIGRATIONS]

    c = build(empty)
    try:
        assert c.ledger.get_account(a.id, T).posted_minor == 10_000 - 2_500 + 0
        assert c.ledger.get_account(b.id, T).posted_minor == 2_500
        assert c.ledger.get_account(b.id, T).pending_debits_minor == 500
        assert c.ledger.get_account(a.id, T).holder == {"name": "Ann Example", "email": "ann@example.com"}
        assert c.idempotency.get(record.scope, record.key) == record
        assert c.keys.get(key.key_id) == key
        assert dump_views(c.read_side.db) == views_before
        report = c.audit.verify()
        assert report.ok and report.events_checked == report_before.events_checked
        assert report.head_hash == report_before.head_hash
        # The upgraded store takes new writes, and the views follow them.
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a.id, credit_account_id=b.id, amount_minor=1, currency="USD"))
        _project(c)
        assert dump_views(c.read_side.db) == literal_fold(log_events(c.ledger))
        page = c.read_side.transactions(account=None, tenant=T, min_amount=None, max_amount=None, from_us=None,
                                        to_us_=None, cursor=None, limit=10)  # fmt: skip
        assert len(page.items) == 4  # the deposit and three transfers (the query the new index serves)
    finally:
        c.close()


def test_an_unmigrated_store_reports_it(empty: Settings) -> None:
    status = schema_status(empty)
    assert (status.current, status.expected, status.up_to_date) == (0, EXPECTED_VERSION, False)
    assert status.problem == f"the store has no Keel schema (version 0 of {EXPECTED_VERSION}): run `keel migrate`"

    # The library's tables alone (a store migrated to level 0) are not a Keel schema either.
    with open_store(empty) as store:
        assert store.migrate(up_to=0) == []
        assert store.schema_status().current == 0

    # A store migrated by a newer Keel: refuse rather than run on a schema this code does not know.
    migrate(empty)
    with open_store(empty) as store:
        store.sql.execute(
            f"INSERT INTO {store.sql.table(SCHEMA_VERSION)} (version, name, applied_at) VALUES (%s, %s, %s)",
            (EXPECTED_VERSION + 1, "from_the_future", "2099-01-01T00:00:00+00:00"),
        )
        status = store.schema_status()
    assert status.current == EXPECTED_VERSION + 1 and not status.up_to_date
    assert status.problem is not None and "newer than this Keel" in status.problem


def test_a_command_migrates_the_embedded_store_and_only_looks_at_a_server_store(empty: Settings) -> None:
    with open_store(empty) as store:
        embedded = store.embedded
    status = prepare_store(empty)
    assert status.up_to_date is embedded
    assert (status.problem is None) is embedded
    assert schema_status(empty) == status  # looking changed nothing


def test_two_processes_migrating_at_once_apply_each_migration_once(empty: Settings) -> None:
    stores = [open_store(empty) for _ in range(3)]
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def run(store: Any) -> None:
        try:
            start.wait()
            applied.append(store.migrate())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors, errors
    assert sorted(v for versions in applied for v in versions) == list(range(1, EXPECTED_VERSION + 1))
    assert _versions(empty) == [(m.version, m.name) for m in MIGRATIONS]


def test_fraud_transfer_ids_and_the_log_waiter(empty: Settings) -> None:
    migrate(empty)
    with open_store(empty) as store:
        ids = SqlTransferIds(store.sql)  # on the store's own pool here; the fraud app uses its own
        public, k1, k2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        ids.add([(public, "t1", k1), (public, "t2", k2)])
        ids.add([(public, "t1", k1)])  # a page scored again adds nothing twice
        assert ids.keys_of(public) == [("t1", k1), ("t2", k2)]
        assert ids.keys_of(uuid.uuid4()) == []

        # A waiter opened before a commit returns soon after it (LISTEN/NOTIFY, or one poll).
        waiter = store.open_log_waiter()
        c = build(empty)
        try:
            c.writer.execute(OpenAccount(tenant=T, currency="EUR"))
            started = time.monotonic()
            waiter.wait(threading.Event())
            assert time.monotonic() - started < 0.45
        finally:
            waiter.close()
            c.close()
