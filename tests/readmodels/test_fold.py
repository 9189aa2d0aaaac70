"""Property: for any generated history, every view equals the literal fold of the log.

Histories are real ledger commands (so the events are the ones production writes), grouped
into commits at random; the projection then reads the log in batches of a random size, so
folding within a batch and across batch boundaries are both exercised. Histories span two
tenants that share public ids (twin accounts, and the settlement accounts' ids), so the views
must keep everything apart by storage key and still show each object's own public id.
"""
from __future__ import annotations

import tempfile
import uuid
from collections import defaultdict

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pytest

from application.projections import ACCOUNT_COLUMNS, TRANSFER_COLUMNS
from application.view_follower import ViewFollower
from infrastructure.readmodels import SqlViewStore
from infrastructure.settings import Settings, load_settings
from keel.bootstrap import build_ledger, migrate, open_store
from infrastructure.projection_worker import log_reader
from tests.conftest import fresh_pg_settings
from tests.readmodels.helpers import dump_views, literal_fold, log_events, run_history

small = st.integers(0, 40)
amount = st.integers(1, 3000)
op = st.one_of(
    st.tuples(st.just("open"), st.integers(0, 1), st.sampled_from([0, 1000]), st.booleans()),
    st.tuples(st.just("deposit"), small, amount, st.one_of(st.none(), st.integers(0, 47))),  # event time: hours after opening
    st.tuples(st.just("withdraw"), small, amount),
    st.tuples(st.just("transfer"), small, small, amount, st.booleans()),
    st.tuples(st.just("post"), small, st.one_of(st.none(), st.integers(1, 500))),
    st.tuples(st.just("void"), small),
    st.tuples(st.just("reverse"), small),
    st.tuples(st.sampled_from(["freeze", "unfreeze"]), small),
    st.tuples(st.just("commit")),
)
# Accounts 0 and 1 are one public id in two tenants, and so are 3 and 4.
SEED = [
    ("open", 0, 0, True), ("open", 0, 1000, False), ("open", 1, 0, True), ("commit",),
    ("deposit", 0, 5000), ("deposit", 1, 4000), ("deposit", 2, 5000), ("deposit", 4, 3000),
]  # fmt: skip


ops_strategy = st.lists(op, min_size=10, max_size=80)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A hold initiated and partly posted inside one read batch, and across batches.
@example(ops=[("transfer", 0, 1, 700, True), ("commit",), ("post", 0, 300), ("commit",)], batch_max=40)
@example(ops=[("transfer", 0, 1, 700, True), ("commit",), ("post", 0, 300), ("commit",)], batch_max=1)
@given(ops=ops_strategy, batch_max=st.integers(1, 40))
def test_views_equal_the_literal_fold_of_the_log(ops: list, batch_max: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = load_settings({}, database_url=f"sqlite:///{tmp}/k-{uuid.uuid4().hex[:6]}.db")
        migrate(s)
        check_history(s, ops, batch_max, None)


@pytest.mark.postgres
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(ops=[("transfer", 0, 1, 700, True), ("commit",), ("post", 0, 300), ("commit",)], batch_max=40, by_copy=True)
@given(ops=ops_strategy, batch_max=st.integers(1, 40), by_copy=st.booleans())
def test_views_equal_the_literal_fold_of_the_log_postgres(pg_session_schemas: list[str], ops: list, batch_max: int, by_copy: bool) -> None:
    # Both ways of writing a batch: one statement (live following) and COPY (large batches).
    check_history(fresh_pg_settings(pg_session_schemas), ops, batch_max, -1 if by_copy else None)


def check_history(s: Settings, ops: list, batch_max: int, one_statement_rows_max: int | None) -> None:
    store_ = open_store(s)
    ledger = build_ledger(s, store_)
    try:
        run_history(ledger, SEED + ops)
        db = store_.read_models
        store = SqlViewStore(db, one_statement_rows_max=one_statement_rows_max)
        follower = ViewFollower(log_reader(ledger, db), store, batch_max=batch_max)
        follower.catch_up()
        events = log_events(ledger)
        assert follower.position == events[-1][0]
        views = dump_views(db)
        assert views == literal_fold(events)

        # Analytics totals equal the ledger: balances equal the aggregates, and per
        # currency the volumes (hour and day alike) sum to the committed transfer amounts.
        # Each row is the object stored at its key, shown by its tenant's public id.
        for values in views["accounts"]:
            row = dict(zip(ACCOUNT_COLUMNS, values, strict=True))
            a = ledger.account_by_key(uuid.UUID(row["account_id"]))
            assert a.key == uuid.UUID(row["account_id"])
            assert (row["public_id"], row["tenant"]) == (str(a.id), a.tenant)
            assert ledger.get_account(a.id, a.tenant).key == a.key
            assert (row["posted_minor"], row["pending_debits_minor"], row["pending_credits_minor"], row["status"]) == (
                a.posted_minor, a.pending_debits_minor, a.pending_credits_minor, a.status
            )
        public_ids = [r[ACCOUNT_COLUMNS.index("public_id")] for r in views["accounts"]]
        assert len(set(public_ids)) < len(public_ids), "the history shares public ids between tenants"
        committed: dict[str, int] = defaultdict(int)
        for values in views["transfers"]:
            row = dict(zip(TRANSFER_COLUMNS, values, strict=True))
            t = ledger.transfer_by_key(uuid.UUID(row["transfer_id"]))
            assert (row["public_id"], row["tenant"]) == (str(t.id), t.tenant)
            assert (row["debit_public_id"], row["credit_public_id"]) == (str(t.debit_account_id), str(t.credit_account_id))
            assert (row["posted_amount_minor"], row["status"], row["reversed_by_public_id"], row["reverses_public_id"]) == (
                t.posted_amount_minor, t.status, str(t.reversed_by_id) if t.reversed_by_id else None,
                str(t.reverses_id) if t.reverses_id else None,
            )  # fmt: skip
            if t.status == "posted":
                committed[t.currency] += t.posted_amount_minor
        for period in ("hour", "day"):
            volume: dict[str, int] = defaultdict(int)
            for p, _, currency, amount_minor, _ in views["volumes"]:
                if p == period:
                    volume[currency] += amount_minor
            assert volume == committed
        # Conservation holds in the view too.
        per_currency: dict[str, int] = defaultdict(int)
        for values in views["accounts"]:
            row = dict(zip(ACCOUNT_COLUMNS, values, strict=True))
            per_currency[row["currency"]] += row["posted_minor"]
        assert all(v == 0 for v in per_currency.values())
    finally:
        ledger.close()
        store_.close()
