"""The incremental features equal a brute-force recomputation over the whole history; time is
read through one accessor and never from the wall clock; the refusal slot is plumbed.

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
from fraud import features as features_mod
from fraud.features import FEATURE_NAMES, INDEX, NO_DATA, NULLABLE, FeatureExtractor

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
        st.sampled_from([0, 0, 1, 5, 30, 59, 61, 600, 3599, 3601, 40_000, 86_399, 86_401, 400_000, 604_799, 604_801]),
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
    """Features of the transfer events[k], from events[:k] by rescanning them (docs/fraud.md)."""
    no = -1.0  # NO_DATA
    e = events[k]
    now = e.timestamp.timestamp()
    prior = events[:k]
    kinds = {x.originator_id: x.kind for x in prior if isinstance(x, Account.Opened)}
    opened_at = {x.originator_id: x.timestamp.timestamp() for x in prior if isinstance(x, Account.Opened)}
    overdraft = {x.originator_id: x.overdraft_limit_minor for x in prior if isinstance(x, Account.Opened)}
    transfers = [x for x in prior if isinstance(x, Transfer.Initiated)]
    ts = lambda x: x.timestamp.timestamp()  # noqa: E731
    tracked = lambda a: kinds.get(a) != SETTLEMENT  # noqa: E731
    within = lambda x, w: ts(x) > now - w  # noqa: E731
    actor = e.credit_account_id if e.kind == DEPOSIT else e.debit_account_id
    out_dir = e.kind != DEPOSIT
    side = [x for x in transfers if (x.debit_account_id == actor if out_dir else x.credit_account_id == actor)]
    amounts = [x.amount_minor for x in side]
    n = len(amounts)
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
    involved = [ts(x) for x in transfers if actor in (x.debit_account_id, x.credit_account_id)]
    amount = e.amount_minor

    def fan_in(acct: UUID) -> int:
        return len({x.debit_account_id for x in transfers if x.credit_account_id == acct and tracked(x.debit_account_id)
                    and within(x, 86400)})

    if out_dir:
        share = 10.0 if available <= 0 else min(10.0, amount / available)
        sent = sum(x.amount_minor for x in side if within(x, 86400))
        share_24h = 10.0 if available + sent <= 0 else min(10.0, (sent + amount) / (available + sent))
        since_inflow = math.log1p(now - ts(ins[-1])) if ins else no
    else:
        share = share_24h = since_inflow = no
    if payee is not None:
        paid = [x.amount_minor for x in transfers if x.debit_account_id == actor and x.credit_account_id == payee]
        first_paid = min((ts(x) for x in transfers if x.debit_account_id == actor and x.credit_account_id == payee), default=None)
        received = [x.amount_minor for x in transfers if x.credit_account_id == payee]
        new_payee = 0.0 if paid else 1.0
        since_first = math.log1p(now - first_paid) if first_paid is not None else no
        to_paid_max = min(10_000.0, amount / max(paid)) if paid else no
        payee_age = math.log1p((now - opened_at[payee]) / 86400)
        payee_n = math.log1p(len(received))
        payee_mean = min(10_000.0, amount / (sum(received) / len(received))) if received else no
        payee_fan_in = float(fan_in(payee)) if received else no
    else:
        new_payee = since_first = to_paid_max = payee_age = payee_n = payee_mean = payee_fan_in = no
    band = lambda a: 850_000 <= a < 1_000_000  # noqa: E731
    hour = [x for x in side if within(x, 3600)]
    return {
        "is_deposit": float(e.kind == DEPOSIT),
        "is_withdrawal": float(e.kind == WITHDRAWAL),
        "log_amount": math.log10(amount),
        "share_of_available": share,
        "share_out_24h": share_24h,
        "amount_to_mean": min(10_000.0, amount / (sum(amounts) / n)) if n else no,
        "amount_to_max": min(10_000.0, amount / max(amounts)) if n else no,
        "amount_to_payee_mean": payee_mean,
        "amount_to_payee_paid_max": to_paid_max,
        "history_log": math.log1p(n),
        "age_log_days": math.log1p((now - opened_at[actor]) / 86400),
        "idle_log_days": math.log1p((now - max(involved + [opened_at[actor]])) / 86400),
        "since_inflow_log_s": since_inflow,
        "inflow_24h_log": math.log10(1 + sum(x.amount_minor for x in ins if within(x, 86400))),
        "new_payee": new_payee,
        "since_first_paid_log_s": since_first,
        "payee_age_log_days": payee_age,
        "payee_received_log_n": payee_n,
        "payee_fan_in_24h": payee_fan_in,
        "velocity_1m": sum(1 for x in side if within(x, 60)),
        "velocity_1h": len(hour),
        "velocity_24h": sum(1 for x in side if within(x, 86400)),
        "since_last_log_s": math.log1p(now - ts(side[-1])) if side else no,
        "small_1h": sum(1 for x in hour if x.amount_minor < 500),
        "fan_out_1h": len({x.credit_account_id for x in hour if tracked(x.credit_account_id)}) if out_dir else 0.0,
        "fan_in_24h": fan_in(actor),
        "fan_out_24h": len({x.credit_account_id for x in transfers if x.debit_account_id == actor and tracked(x.credit_account_id)
                            and within(x, 86400)}),
        "hour_of_day": (now % 86400) / 3600,
        "near_threshold": float(e.kind == DEPOSIT and band(amount)),
        "near_threshold_7d": float(sum(1 for x in ins if x.kind == DEPOSIT and band(x.amount_minor) and within(x, 7 * 86400))
                                   if e.kind == DEPOSIT else 0),
        "refused_1h": 0.0,
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
    from fraud.dataset import ledger_events
    from fraud.simulate import SimConfig, simulate

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


def test_time_is_read_through_one_accessor_and_never_from_the_wall_clock(monkeypatch) -> None:  # noqa: ANN001
    """Every time feature uses `event_time_s` (`occurred_at`, else the recording time):
    shifting what it returns by 3 h 20 min shifts the hour of day and nothing else."""
    import inspect

    source = inspect.getsource(features_mod)
    # The one read of an event's time, inside event_time_s: its occurred_at, else its timestamp.
    body = inspect.getsource(features_mod.event_time_s)
    assert source.count(".timestamp") == body.count(".timestamp") == 2 and "occurred_at" in body
    for clock in ("time.time", "perf_counter", "monotonic", "datetime.now", "utcnow", "date.today", "import time"):
        assert clock not in source, clock
    ops_ = [("transfer", i % 5, (i + 2) % 5, 400 + 37 * i, False, 45 * i) for i in range(80)]
    ops_ += [("deposit", 1, 0, 900_000, False, 3000), ("withdrawal", 2, 0, 700, False, 90)]
    events = history(ops_, [0, 0, 0, 0, 0])
    plain = [o.features for o in map(FeatureExtractor().observe, events) if o]
    shift_s = 12_000.0
    monkeypatch.setattr(features_mod, "event_time_s", lambda e: e.timestamp.timestamp() + shift_s)
    shifted = [o.features for o in map(FeatureExtractor().observe, events) if o]
    hour = INDEX["hour_of_day"]
    for a, b in zip(plain, shifted, strict=True):
        assert math.isclose((a[hour] + shift_s / 3600) % 24, b[hour], abs_tol=1e-9)
        assert a[:hour] + a[hour + 1 :] == b[:hour] + b[hour + 1 :]


def test_no_history_is_no_data_never_a_normal_looking_zero() -> None:
    """A first payment from a fresh account to a fresh payee: every history-based feature says
    NO_DATA (the model reads NaN), not 0."""
    events = history([("transfer", 0, 1, 1_000, False, 10)], [5_000, 0, 0, 0, 0])
    got = [o for o in map(FeatureExtractor().observe, events) if o][0].features
    for name in ("amount_to_mean", "amount_to_max", "amount_to_payee_mean", "amount_to_payee_paid_max",
                 "since_inflow_log_s", "since_first_paid_log_s", "since_last_log_s", "payee_fan_in_24h"):
        assert name in NULLABLE and got[INDEX[name]] == NO_DATA, name
    assert got[INDEX["history_log"]] == 0.0 and got[INDEX["new_payee"]] == 1.0 and got[INDEX["payee_received_log_n"]] == 0.0
    assert got[INDEX["payee_fan_in_24h"]] == NO_DATA  # a payee that never received: no fan-in, not "0 accounts"
    # Only features that are never negative may use the sentinel.
    assert all(got[INDEX[n]] >= 0 or got[INDEX[n]] == NO_DATA for n in FEATURE_NAMES if n in NULLABLE)


def test_refused_attempts_feed_refused_1h() -> None:
    """The slot for refusals (issue #15): plumbed, counted over one hour of event time, 0 until fed."""
    events = history([("transfer", 0, 1, 1_000, False, 10), ("transfer", 0, 1, 1_000, False, 10)], [5_000, 0, 0, 0, 0])
    ex = FeatureExtractor()
    observed = []
    for event in events:
        if isinstance(event, Transfer.Initiated) and not observed:
            at = event.timestamp.timestamp()
            for back_s in (3_700, 1_800, 5):  # one of them more than an hour before
                ex.refused(event.debit_account_id, at - back_s)
        o = ex.observe(event)
        if o:
            observed.append(o.features[INDEX["refused_1h"]])
    assert observed == [2.0, 2.0]
    assert all(o.features[INDEX["refused_1h"]] == 0.0 for o in map(FeatureExtractor().observe, events) if o)
