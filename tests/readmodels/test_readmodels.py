"""Read models against real stores (SQLite file and a fresh PostgreSQL schema): the worker,
the read side's queries, and `keel replay --check/--rebuild`."""
from __future__ import annotations

import io
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount
from domain.errors import ValidationFailed
from domain.identity import account_key, settlement_public_id
from infrastructure.readmodels import ViewDatabase
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from infrastructure.projection_worker import ProjectionWorker, log_reader
from infrastructure.replay import replay_check, replay_rebuild, scratch_catch_up
from tests.readmodels.helpers import TENANT, TENANT2, dump_views, literal_fold, log_events, random_ops, run_history


@pytest.fixture
def c(settings: Settings) -> Iterator[Container]:
    container = build(settings)
    yield container
    container.close()


def caught_up(c: Container, timeout_s: float = 20.0) -> int:
    head = c.ledger.recorder.max_notification_id() or 0
    rs = c.read_side
    deadline = time.monotonic() + timeout_s
    while not rs.wait_for_position(head):
        assert time.monotonic() < deadline, f"projection stuck at {rs.position()} of {head}"
    return head


def db_of(c: Container) -> ViewDatabase:
    return c.store.read_models


def test_worker_follows_log_and_replay_detects_tampering(c: Container) -> None:
    worker = ProjectionWorker(c.ledger, c.store.read_models, c.store.open_log_waiter, batch_max=37)
    worker.start()
    try:
        run_history(c.ledger, random_ops(random.Random(3), 300))
        caught_up(c)
        assert dump_views(db_of(c)) == literal_fold(log_events(c.ledger))
        out = io.StringIO()
        assert replay_check(c.ledger, c.store.read_models, out=out) == 0, out.getvalue()

        # Tamper with one history row: the check names the table and exits non-zero.
        with db_of(c).transaction(commit=True) as cur:
            cur.execute(
                f"UPDATE {db_of(c).table('rm_entries')} SET amount_minor = amount_minor + 1"
                f" WHERE position = (SELECT MAX(position) FROM {db_of(c).table('rm_entries')}) AND direction = %s",
                ("credit",),
            )
        out = io.StringIO()
        assert replay_check(c.ledger, c.store.read_models, out=out) > 0
        assert "entries: 1 row(s) live only" in out.getvalue()

        # The public ids shown to clients are compared too (each view, one row each).
        db = db_of(c)
        with db.transaction(commit=True) as cur:
            forged = str(uuid.uuid4())
            for table, column, key in (("rm_accounts", "public_id", "account_id"),
                                       ("rm_transfers", "debit_public_id", "transfer_id"),
                                       ("rm_entries", "counterparty_public_id", "transfer_id")):  # fmt: skip
                cur.execute((f"UPDATE {db.table(table)} SET {column} = %s WHERE {key} = (SELECT MIN({key}) FROM {db.table(table)})"), (forged,))
        out = io.StringIO()
        assert replay_check(c.ledger, c.store.read_models, out=out) > 0
        for table in ("accounts", "transfers", "entries"):
            assert f"{table}: " in out.getvalue() and forged in out.getvalue(), out.getvalue()

        # Rebuild while the worker runs; the worker resumes from the swapped-in position.
        replay_rebuild(c.ledger, c.store.read_models, out=io.StringIO())
        run_history(c.ledger, random_ops(random.Random(4), 100))
        caught_up(c)
        assert dump_views(db_of(c)) == literal_fold(log_events(c.ledger))
        assert replay_check(c.ledger, c.store.read_models, out=io.StringIO()) == 0
    finally:
        worker.stop()


def test_read_side_queries(c: Container) -> None:
    worker = ProjectionWorker(c.ledger, c.store.read_models, c.store.open_log_waiter)
    worker.start()
    try:
        ids = [c.writer.execute(OpenAccount(tenant=TENANT, currency="USD")).id for _ in range(4)]
        keys = [str(account_key(TENANT, a)) for a in ids]
        # Another tenant's account with the same public id as ids[1]: a different account.
        other = c.writer.execute(OpenAccount(tenant=TENANT2, currency="USD", account_id=ids[1])).id
        assert other == ids[1]
        other_key = str(account_key(TENANT2, other))
        c.writer.execute(Deposit(tenant=TENANT2, account_id=other, amount_minor=777, currency="USD"))
        for i, a in enumerate(ids):
            c.writer.execute(Deposit(tenant=TENANT, account_id=a, amount_minor=10_000 * (i + 1), currency="USD"))
        rng = random.Random(5)
        for _ in range(60):
            a, b = rng.sample(ids, 2)
            c.writer.execute(MakeTransfer(tenant=TENANT, debit_account_id=a, credit_account_id=b, amount_minor=rng.randint(1, 500), currency="USD"))
        caught_up(c)
        rs = c.read_side

        # One account's history: newest first, pages neither overlap nor skip.
        legs, cursor = [], None
        while True:
            page = rs.account_transactions(keys[0], cursor, 7)
            legs += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        positions = [x["position"] for x in legs]
        assert positions == sorted(positions, reverse=True) and len(set(positions)) == len(positions)
        everything = rs.account_transactions(keys[0], None, 1000).items
        assert legs == everything
        signed = sum(x["amount"] if x["direction"] == "credit" else -x["amount"] for x in legs)
        assert signed == c.ledger.get_account(ids[0], TENANT).posted_minor
        # Legs show public ids: this account's, its transfers', its counterparties' (the
        # settlement account's for the deposit), all as the tenant knows them.
        assert {x["account_id"] for x in legs} == {str(ids[0])}
        assert {x["counterparty_id"] for x in legs} <= {*map(str, ids[1:]), str(settlement_public_id("USD"))}
        assert str(settlement_public_id("USD")) in {x["counterparty_id"] for x in legs}
        for leg in legs[:5]:
            assert c.ledger.get_transfer(uuid.UUID(leg["transfer_id"]), TENANT).amount_minor == leg["amount"]
        assert rs.account_tenant(other_key) == TENANT2 and rs.account_tenant(keys[1]) == TENANT
        assert rs.account_tenant(str(other)) is None  # a public id is not a key
        # The twin in the other tenant has its own history (its deposit only).
        assert [x["amount"] for x in rs.account_transactions(other_key, None, 10).items] == [777]

        # Balances equal the aggregates; totals per currency and kind sum to zero overall.
        bal = rs.balances("USD", None, 1000)
        by_tenant_id = {(x["tenant"], x["id"]): x for x in bal["accounts"]}
        for tenant, a in [*((TENANT, a) for a in ids), (TENANT2, other)]:
            agg = c.ledger.get_account(a, tenant)
            row = by_tenant_id[(tenant, str(a))]
            assert (row["posted"], row["available"]) == (agg.posted_minor, agg.available_minor)
            assert "holder" not in row
        assert by_tenant_id[(TENANT2, str(other))]["posted"] == 777
        assert sum(t["posted"] for t in bal["totals"]) == 0
        # Paginated by storage key: pages neither overlap nor skip.
        paged, cursor = [], None
        while True:
            page = rs.balances("USD", cursor, 2)
            paged += page["accounts"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted((x["tenant"], x["id"]) for x in paged) == sorted(by_tenant_id)

        # Volumes sum to the committed amounts; transactions filter and paginate.
        committed = defaultdict(int)
        all_transfers, cursor = [], None
        while True:
            page = rs.transactions(account=None, min_amount=None, max_amount=None, from_us=None, to_us_=None, cursor=cursor, limit=9)
            all_transfers += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(all_transfers) == 65
        for t in all_transfers:
            committed[t["currency"]] += t["posted_amount"]
            assert c.ledger.get_transfer(uuid.UUID(t["id"]), t["tenant"]).debit_account_id == uuid.UUID(t["debit_account_id"])
        for interval in ("hour", "day"):
            assert sum(v["amount"] for v in rs.volumes("USD", interval, None, None)) == committed["USD"]
            assert sum(v["count"] for v in rs.volumes(None, interval, None, None)) == 65
        big = rs.transactions(account=None, min_amount=250, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=1000)
        assert big.items and all(t["amount"] >= 250 for t in big.items)

        # The analysts' account filter names an account by public id: in every tenant, or in one.
        def by_account(account: str, tenant: str | None = None) -> list[dict]:
            return rs.transactions(account=account, tenant=tenant, min_amount=None, max_amount=None, from_us=None,
                                   to_us_=None, cursor=None, limit=1000).items  # fmt: skip

        mine = by_account(str(ids[1]), TENANT)
        assert mine and all(str(ids[1]) in (t["debit_account_id"], t["credit_account_id"]) for t in mine)
        assert {t["tenant"] for t in mine} == {TENANT}
        theirs = by_account(str(ids[1]), TENANT2)
        assert [(t["tenant"], t["amount"], t["credit_account_id"]) for t in theirs] == [(TENANT2, 777, str(ids[1]))]
        both = by_account(str(ids[1]))
        assert [t["position"] for t in both] == sorted(t["position"] for t in [*mine, *theirs])
        assert by_account(str(uuid.uuid4())) == [] and by_account(str(ids[0]), TENANT2) == []
        only_t2 = rs.transactions(account=None, tenant=TENANT2, min_amount=None, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=1000)
        assert [t["amount"] for t in only_t2.items] == [777]

        top = rs.top_accounts("inflow", None, None, 3)
        assert len(top) == 3 and [x["inflow"] for x in top] == sorted((x["inflow"] for x in top), reverse=True)
        for x in top:  # public ids with their tenant
            assert c.ledger.get_account(uuid.UUID(x["account_id"]), x["tenant"]).currency == x["currency"]

        status = rs.projections()
        assert status["projections"][0]["lag_events"] == 0 and status["head"] == status["projections"][0]["position"]

        for bad in (lambda: rs.account_transactions(keys[0], "garbage!", 5),
                    lambda: rs.account_transactions(keys[0], None, 0),
                    lambda: rs.volumes(None, "week", None, None),
                    lambda: rs.top_accounts("sideways", None, None, 5),
                    lambda: rs.transactions(account=None, min_amount=5, max_amount=1, from_us=None, to_us_=None, cursor=None, limit=5),
                    lambda: rs.transactions(account="nope", min_amount=None, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=5),
                    lambda: rs.transactions(account=None, tenant="a\x00b", min_amount=None, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=5)):  # fmt: skip
            with pytest.raises(ValidationFailed):
                bad()

        # Every number a query carries is range-checked before it reaches the database.
        from infrastructure.readside import encode_cursor

        for n in (2**63, 10**30, -(2**63) - 1, -(2**70)):
            for bad in (lambda: rs.account_transactions(keys[0], encode_cursor(n), 5),
                        lambda: rs.transactions(account=None, min_amount=None, max_amount=None, from_us=None, to_us_=None, cursor=encode_cursor(n), limit=5),
                        lambda: rs.transactions(account=None, min_amount=n, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=5),
                        lambda: rs.transactions(account=None, min_amount=None, max_amount=n, from_us=None, to_us_=None, cursor=None, limit=5),
                        lambda: rs.transactions(account=None, min_amount=None, max_amount=None, from_us=n, to_us_=None, cursor=None, limit=5),
                        lambda: rs.volumes(None, "day", None, n),
                        lambda: rs.top_accounts("inflow", n, None, 5),
                        lambda: rs.account_transactions(keys[0], None, n),
                        lambda: rs.balances(None, encode_cursor(n), 5)):  # fmt: skip
                with pytest.raises(ValidationFailed):
                    bad()
        for cursor in (encode_cursor("x\x00"), encode_cursor(keys[0].upper()), encode_cursor(True), encode_cursor(1.5)):
            with pytest.raises(ValidationFailed):
                rs.balances(None, cursor, 5)
        # The extremes of the range are valid keys (nothing before/after them).
        assert rs.account_transactions(keys[0], encode_cursor(-(2**63)), 5).items == []
        assert len(rs.account_transactions(keys[0], encode_cursor(2**63 - 1), 5).items) == 5
        assert rs.transactions(account=None, min_amount=2**63 - 1, max_amount=None, from_us=None, to_us_=None, cursor=None, limit=5).items == []
    finally:
        worker.stop()


def test_history_waits_only_for_the_accounts_own_writes(c: Container) -> None:
    """Read-your-writes per account: a write to another account does not make a read wait."""
    a_id = c.writer.execute(OpenAccount(tenant=TENANT, currency="USD")).id
    b_id = c.writer.execute(OpenAccount(tenant=TENANT, currency="USD")).id
    a, b = account_key(TENANT, a_id), account_key(TENANT, b_id)
    c.writer.execute(Deposit(tenant=TENANT, account_id=a_id, amount_minor=100, currency="USD"))
    rs = c.read_side
    worker = ProjectionWorker(c.ledger, c.store.read_models, c.store.open_log_waiter)
    worker.start()
    try:
        caught_up(c)
    finally:
        worker.stop()
    position_a = rs._last_position(a)  # noqa: SLF001
    latest_a = max(n.id for n in c.ledger.recorder.select_notifications(1, 10**6) if n.originator_id == a)
    assert position_a == latest_a
    c.writer.execute(Deposit(tenant=TENANT, account_id=b_id, amount_minor=5, currency="USD"))  # not projected
    started = time.monotonic()
    assert rs.wait_for_aggregate(a, timeout_s=60) is True
    assert time.monotonic() - started < 0.5
    assert rs.wait_for_aggregate(b, timeout_s=0.2) is False  # b's deposit is not in the views
    assert rs._last_position(uuid.uuid4()) == 0  # noqa: SLF001


def test_wait_for_position_is_bounded(c: Container) -> None:
    rs = c.read_side
    started = time.monotonic()
    assert rs.wait_for_position(10**9, timeout_s=60) is False
    assert time.monotonic() - started < 2.5


def test_second_runner_and_swap_with_catch_up_never_double_apply(c: Container) -> None:
    from application.view_follower import ViewFollower
    from infrastructure.readmodels import SqlViewStore, create_scratch, drop_scratch, replace_live
    
    run_history(c.ledger, random_ops(random.Random(8), 200))
    db = db_of(c)
    a = ViewFollower(log_reader(c.ledger, db), SqlViewStore(db), batch_max=50)
    b = ViewFollower(log_reader(c.ledger, db), SqlViewStore(db), batch_max=50)
    assert a.step() > 0
    # b starts from the same position: it must notice the move, apply nothing, and resume.
    assert b.step() == 0 and b.position == a.position
    assert b.catch_up() > 0 and a.step() == 0
    head = c.ledger.recorder.max_notification_id()
    assert a.position == b.position == head
    assert dump_views(db) == literal_fold(log_events(c.ledger))

    # A rebuilt copy that is behind the live views is caught up inside the swap.
    scratch = create_scratch(db)
    behind = ViewFollower(log_reader(c.ledger, db), scratch, batch_max=64)
    behind.catch_up(stop=head // 2)
    assert 0 < behind.position < head
    assert replace_live(db, behind.position, scratch_catch_up(c.ledger, db, behind.position)) == head
    drop_scratch(db)
    assert SqlViewStore(db).position() == head
    assert dump_views(db) == literal_fold(log_events(c.ledger))


def test_encrypted_log_and_replay_cli_exit_status(tmp_path: Path) -> None:
    """Events encrypted at rest are read by the projection; `keel replay --check` exits 1 on a
    tampered view and 0 once rebuilt (through the real command line)."""
    import base64
    import os
    import subprocess
    import sys

    from application.view_follower import ViewFollower
    from infrastructure.readmodels import SqlViewStore
    from tests.conftest import fresh_sqlite_settings

    key = "k1:" + base64.b64encode(os.urandom(32)).decode()
    s = fresh_sqlite_settings(tmp_path, data_key=key)
    container = build(s)
    try:
        run_history(container.ledger, random_ops(random.Random(9), 120))
        with container.ledger.recorder.datastore.transaction(commit=False) as cur:
            cur.execute("SELECT state FROM ledger_events LIMIT 1")
            assert bytes(cur.fetchone()[0]).startswith(b"K1")  # really encrypted at rest
        db = db_of(container)
        ViewFollower(log_reader(container.ledger, db), SqlViewStore(db)).catch_up()
        assert dump_views(db) == literal_fold(log_events(container.ledger))
        with db.transaction(commit=True) as cur:
            cur.execute("UPDATE rm_accounts SET status = 'closed' WHERE kind = 'customer'")
    finally:
        container.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(KEEL_DATABASE_URL=s.database_url, KEEL_DATA_KEY=key, KEEL_LOG_LEVEL="WARNING")
    root = Path(__file__).resolve().parents[2]

    def keel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keel.cli", *args], env=env, cwd=root, capture_output=True, text=True, timeout=120)

    tampered = keel("replay", "--check")
    assert tampered.returncode == 1 and "accounts:" in tampered.stdout, tampered.stdout + tampered.stderr
    assert keel("replay", "--rebuild").returncode == 0
    clean = keel("replay", "--check")
    assert clean.returncode == 0 and "match" in clean.stdout, clean.stdout + clean.stderr
