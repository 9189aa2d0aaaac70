"""The incremental features equal a brute-force recomputation over the whole history.

The brute force below is written independently of fraud/features.py: for every transfer it
rescans all earlier events (no deques, no running sums), straight from the definitions.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.account import CUSTOMER, SETTLEMENT, Account
from domain.transfer import DEPOSIT, TRANSFER, WITHDRAWAL, Transfer
from fraud.features import FEATURE_NAMES, FeatureExtractor

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SETTLE = UUID(int=1)


def opened(account_id: UUID, at: datetime, kind: str, overdraft: int) -> Account.Opened:
    # Ids here stand for storage keys; the public ids only travel along for display.
    return Account.Opened(originator_id=account_id, originator_version=1, timestamp=at, originator_topic="", tenant="t",
                          public_id=uuid4(), currency="EUR", kind=kind, overdraft_limit_minor=overdraft, holder=None,
                          metadata={})


def initiated(tid: UUID, at: datetime, kind: str, debit: UUID, credit: UUID, amount: int, pending: bool) -> Transfer.Initiated:
    return Transfer.Initiated(originator_id=tid, originator_version=1, timestamp=at, originator_topic="", tenant="t",
                              public_id=uuid4(), kind=kind, debit_account_id=debit, credit_account_id=credit,
                              debit_public_id=uuid4(), credit_public_id=uuid4(), amount_minor=amount, currency="EUR",
                              reference=None, metadata={}, pending=pending, timeout_s=None, reverses_id=None,
                              reverses_public_id=None)


ops = st.lists(
    st.tuples(
        st.sampled_from(["transfer", "transfer", "deposit", "withdrawal", "post", "void"]),
        st.integers(0, 4), st.integers(0, 4),
        st.one_of(st.integers(1, 600), st.integers(850_000, 1_000_100), st.integers(1, 5_000_000)),
        st.booleans(),
        st.sampled_from([0, 0, 1, 5, 30, 59, 61, 600, 3599, 3601, 40_000, 86_399, 86_401, 400_000]),
    ),
    min_size=1, max_size=60,
)


def history(draw_ops: list, overdrafts: list[int]) -> list:
    accounts = [uuid4() for _ in range(5)]
    events: list = [opened(SETTLE, T0, SETTLEMENT, 0)]
    for i, a in enumerate(accounts):
        events.append(opened(a, T0 + timedelta(seconds=1000 * i), CUSTOMER, overdrafts[i]))
    at = T0 + timedelta(days=1)
    open_holds: list[UUID] = []
    for op, x, y, amount, pending, gap in draw_ops:
        at += timedelta(seconds=gap)
        if op == "deposit":
            events.append(initiated(uuid4(), at, DEPOSIT, SETTLE, accounts[x], amount, False))
        elif op == "withdrawal":
            events.append(initiated(uuid4(), at, WITHDRAWAL, accounts[x], SETTLE, amount, False))
        elif op == "transfer" and x != y:
            tid = uuid4()
            events.append(initiated(tid, at, TRANSFER, accounts[x], accounts[y], amount, pending))
            if pending:
                open_holds.append(tid)
        elif op == "post" and open_holds:
            tid = open_holds.pop(0)
            held = next(e.amount_minor for e in events if isinstance(e, Transfer.Initiated) and e.originator_id == tid)
            events.append(Transfer.HoldPosted(originator_id=tid, originator_version=2, timestamp=at, amount_minor=min(amount, held)))
        elif op == "void" and open_holds:
            events.append(Transfer.HoldVoided(originator_id=open_holds.pop(0), originator_version=2, timestamp=at))
    return events


def brute_force(events: list, k: int) -> dict[str, float]:
    """Features of the transfer events[k], from events[:k] by rescanning them."""
    e = events[k]
    now = e.timestamp.timestamp()
    prior = events[:k]
    kinds = {x.originator_id: x.kind for x in prior if isinstance(x, Account.Opened)}
    opened_at = {x.originator_id: x.timestamp.timestamp() for x in prior if isinstance(x, Account.Opened)}
    overdraft = {x.originator_id: x.overdraft_limit_minor for x in prior if isinstance(x, Account.Opened)}
    transfers = [x for x in prior if isinstance(x, Transfer.Initiated)]
    tracked = lambda a: kinds.get(a) != SETTLEMENT  # noqa: E731
    actor = e.credit_account_id if e.kind == DEPOSIT else e.debit_account_id
    out_dir = e.kind != DEPOSIT
    side = [(x.timestamp.timestamp(), x.amount_minor) for x in transfers
            if (x.debit_account_id == actor if out_dir else x.credit_account_id == actor)]
    amounts = [a for _, a in side]
    n = len(amounts)
    mean = sum(amounts) / n if n else 0.0
    z = 0.0
    if n >= 2:
        std = max(1.0, math.sqrt(sum((a - mean) ** 2 for a in amounts) / n))
        z = max(-100.0, min(100.0, (e.amount_minor - mean) / std))
    in_window = lambda ts, w: ts > now - w  # noqa: E731
    day = [(ts, a) for ts, a in side if in_window(ts, 86400)]
    # balances of the actor before this transfer
    posted = pending = 0
    holds = {}
    for x in prior:
        if isinstance(x, Transfer.Initiated):
            if x.pending:
                holds[x.originator_id] = x
                if x.debit_account_id == actor:
                    pending += x.amount_minor
            else:
                posted += x.amount_minor * ((x.credit_account_id == actor) - (x.debit_account_id == actor))
        elif isinstance(x, Transfer.HoldPosted | Transfer.HoldVoided):
            h = holds.pop(x.originator_id)
            if h.debit_account_id == actor:
                pending -= h.amount_minor
            got = x.amount_minor if isinstance(x, Transfer.HoldPosted) else 0
            posted += got * ((h.credit_account_id == actor) - (h.debit_account_id == actor))
    available = posted - pending + overdraft.get(actor, 0)
    payee = e.credit_account_id if e.kind not in (DEPOSIT, WITHDRAWAL) and tracked(e.credit_account_id) else None
    ins = [x for x in transfers if x.credit_account_id == actor]
    involved = [x.timestamp.timestamp() for x in transfers if actor in (x.debit_account_id, x.credit_account_id)]

    def fan_in(acct: UUID) -> int:
        return len({x.debit_account_id for x in transfers if x.credit_account_id == acct and tracked(x.debit_account_id)
                    and in_window(x.timestamp.timestamp(), 86400)})

    if out_dir:
        share = 10.0 if available <= 0 else min(10.0, e.amount_minor / available)
        inflow = min(10_000.0, sum(x.amount_minor for x in ins if in_window(x.timestamp.timestamp(), 86400)) / e.amount_minor)
        since = math.log1p(now - ins[-1].timestamp.timestamp() if ins else 1e9)
        new_cp = 1.0 if payee is not None and payee not in {x.credit_account_id for x in transfers if x.debit_account_id == actor} else 0.0
    else:
        share = inflow = since = new_cp = 0.0
    return {
        "is_deposit": float(e.kind == DEPOSIT),
        "is_withdrawal": float(e.kind == WITHDRAWAL),
        "log_amount": math.log10(e.amount_minor),
        "amount_z": z,
        "amount_to_mean": min(10_000.0, e.amount_minor / mean) if n and mean > 0 else 0.0,
        "history_log": math.log1p(n),
        "velocity_1m": sum(1 for ts, _ in side if in_window(ts, 60)),
        "velocity_1h": sum(1 for ts, _ in side if in_window(ts, 3600)),
        "velocity_24h": len(day),
        "small_1h": sum(1 for ts, a in side if in_window(ts, 3600) and a < 500),
        "new_counterparty": new_cp,
        "share_of_available": share,
        "fan_in_24h": fan_in(actor),
        "fan_out_24h": len({x.credit_account_id for x in transfers if x.debit_account_id == actor and tracked(x.credit_account_id)
                            and in_window(x.timestamp.timestamp(), 86400)}),
        "payee_fan_in_24h": fan_in(payee) if payee is not None else 0.0,
        "payee_age_log_days": math.log1p((now - opened_at[payee]) / 86400) if payee is not None else -1.0,
        "age_log_days": math.log1p((now - opened_at[actor]) / 86400),
        "hour_of_day": (now % 86400) / 3600,
        "inflow_24h_to_amount": inflow,
        "since_inflow_log_s": since,
        "idle_log_days": math.log1p((now - max(involved + [opened_at[actor]])) / 86400),
        "near_threshold": float(850_000 <= e.amount_minor < 1_000_000),
        "near_threshold_24h": sum(1 for _, a in day if 850_000 <= a < 1_000_000),
    }


@settings(max_examples=60, deadline=None)
@given(ops, st.lists(st.integers(0, 1000), min_size=5, max_size=5))
def test_incremental_features_equal_brute_force(draw_ops: list, overdrafts: list[int]) -> None:
    events = history(draw_ops, overdrafts)
    ex = FeatureExtractor()
    for k, event in enumerate(events):
        got = ex.observe(event)
        if not isinstance(event, Transfer.Initiated):
            assert got is None
            continue
        assert got is not None and got.transfer_key == event.originator_id and got.public_id == event.public_id
        assert got.tenant == event.tenant
        want = brute_force(events, k)
        for name, value in zip(FEATURE_NAMES, got.features, strict=True):
            assert math.isclose(value, want[name], rel_tol=1e-9, abs_tol=1e-9), (name, value, want[name], k)


def test_replaying_the_same_log_gives_the_same_vectors() -> None:
    ops_ = [("transfer", i % 5, (i + 1) % 5, 1000 + i, i % 7 == 0, 30 * i) for i in range(200)]
    events = history(ops_, [0, 0, 100, 0, 0])
    first = [o.features for o in map(FeatureExtractor().observe, events) if o]
    again = [o.features for o in map(FeatureExtractor().observe, events) if o]
    assert first == again and len(first) > 100


def test_two_tenants_with_the_same_public_ids_keep_apart() -> None:
    """The same simulated activity in two tenants (same public ids for every account and transfer)
    interleaved in one log: each tenant's vectors equal those of a log holding that tenant alone,
    because features are keyed by storage key (domain/identity.py), never by public id."""
    from fraud.simulate import SimConfig, ledger_events, simulate

    records = simulate(SimConfig(seed=41, customers=25, days=3, takeovers=800.0, mule_rings=200.0))
    alone = {t: [(o.public_id, o.features) for o in map(FeatureExtractor().observe, ledger_events(records, tenant=t)) if o]
             for t in ("a", "b")}
    assert alone["a"] == alone["b"] and len(alone["a"]) > 100
    a_events, b_events = list(ledger_events(records, tenant="a")), list(ledger_events(records, tenant="b"))
    both = [e for pair in zip(a_events, b_events, strict=True) for e in pair]  # a, b, a, b, ... in time order
    ex = FeatureExtractor()
    mixed: dict[str, list] = {"a": [], "b": []}
    for o in map(ex.observe, both):
        if o is not None:
            mixed[o.tenant].append((o.public_id, o.features))
    assert mixed == alone
