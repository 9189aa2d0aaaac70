"""Features of each transfer, computed incrementally from the ledger's own events.

`FeatureExtractor.observe(event)` takes the ledger's domain events in log order (Account.Opened
and the Transfer lifecycle events) and, for each Transfer.Initiated, returns the feature vector
of that transfer as it stood just before the transfer, then folds the transfer into its state.
Time is always the event's own timestamp, never the wall clock, so replaying the log after a
restart rebuilds exactly the same state and the same vectors.

It must never look at labels, simulator internals or anything but the events. Memory per
account is bounded: windows keep at most 24 h (and at most WINDOW_ITEMS_MAX entries), payees are
an LRU of PAYEES_MAX.

Accounts and transfers are keyed by their storage keys (the aggregate ids and the ids event
payloads refer to, domain/identity.py), so state never mixes tenants even where two tenants use
the same public id.

The "actor" of a transfer is the customer who moves the money: the debit account of a transfer
or withdrawal, the credit account of a deposit. Its "direction" is out (debits) or in (credits).
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.account import SETTLEMENT, Account
from domain.transfer import DEPOSIT, WITHDRAWAL, Transfer

WINDOW_1M_S = 60.0
WINDOW_1H_S = 3600.0
WINDOW_24H_S = 86400.0
WINDOW_ITEMS_MAX = 5000
PAYEES_MAX = 512
HOLDS_MAX = 1_000_000
SMALL_AMOUNT_MINOR = 500
# The band just under the 10,000.00 cash reporting threshold that structuring aims for.
THRESHOLD_MINOR = 1_000_000
THRESHOLD_BAND_LOW_MINOR = 850_000
NO_INFLOW_S = 1e9
SHARE_MAX = 10.0
RATIO_MAX = 10_000.0
Z_MAX = 100.0

FEATURE_NAMES: tuple[str, ...] = (
    "is_deposit",
    "is_withdrawal",
    "log_amount",
    "amount_z",
    "amount_to_mean",
    "history_log",
    "velocity_1m",
    "velocity_1h",
    "velocity_24h",
    "small_1h",
    "new_counterparty",
    "share_of_available",
    "fan_in_24h",
    "fan_out_24h",
    "payee_fan_in_24h",
    "payee_age_log_days",
    "age_log_days",
    "hour_of_day",
    "inflow_24h_to_amount",
    "since_inflow_log_s",
    "idle_log_days",
    "near_threshold",
    "near_threshold_24h",
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

TOPICS_CLASSES = (Account.Opened, Transfer.Initiated, Transfer.HoldPosted, Transfer.HoldVoided, Transfer.HoldExpired)


class _Side:
    """One direction (out or in) of one account: running stats and a 24 h window."""

    __slots__ = ("counts", "m2", "mean", "n", "window")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.window: deque[tuple[float, int, UUID | None]] = deque()
        self.counts: dict[UUID, int] = {}  # counterparty -> entries in the window

    def evict(self, now_s: float) -> None:
        cutoff = now_s - WINDOW_24H_S
        w = self.window
        while w and (w[0][0] <= cutoff or len(w) > WINDOW_ITEMS_MAX):
            self._drop(w.popleft()[2])

    def _drop(self, cp: UUID | None) -> None:
        if cp is not None:
            left = self.counts[cp] - 1
            if left:
                self.counts[cp] = left
            else:
                del self.counts[cp]

    def add(self, now_s: float, amount: int, cp: UUID | None) -> None:
        # Welford's update: O(1) memory for the mean and variance of all history.
        self.n += 1
        delta = amount - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (amount - self.mean)
        self.window.append((now_s, amount, cp))
        if cp is not None:
            self.counts[cp] = self.counts.get(cp, 0) + 1
        if len(self.window) > WINDOW_ITEMS_MAX:
            self._drop(self.window.popleft()[2])


class _Acct:
    __slots__ = ("last_at", "last_in_at", "opened_at", "out", "overdraft", "payees", "pending", "posted", "side_in", "tracked")

    def __init__(self, opened_at: float, overdraft: int, tracked: bool) -> None:
        self.opened_at = opened_at
        self.overdraft = overdraft
        self.tracked = tracked  # settlement accounts keep balances only
        self.posted = 0
        self.pending = 0
        self.last_at = opened_at
        self.last_in_at: float | None = None
        self.out = _Side()
        self.side_in = _Side()
        self.payees: OrderedDict[UUID, None] = OrderedDict()

    @property
    def available(self) -> int:
        return self.posted - self.pending + self.overdraft


@dataclass(frozen=True, slots=True)
class Observed:
    """A transfer as the extractor saw it. `transfer_key` and the account ids are storage keys
    (domain/identity.py: tenant-isolated by construction); `public_id` is the id its tenant
    knows the transfer by, kept only to show it back."""

    transfer_key: UUID
    public_id: UUID
    tenant: str
    kind: str
    amount_minor: int
    debit_account_id: UUID
    credit_account_id: UUID
    at_s: float
    features: tuple[float, ...]


def _count_since(window: deque[tuple[float, int, UUID | None]], since_s: float) -> int:
    n = 0
    for ts, _, _ in reversed(window):
        if ts <= since_s:
            break
        n += 1
    return n


class FeatureExtractor:
    def __init__(self) -> None:
        self.accounts: dict[UUID, _Acct] = {}
        self.holds: dict[UUID, tuple[UUID, UUID, int]] = {}

    def _acct(self, account_id: UUID, now_s: float) -> _Acct:
        a = self.accounts.get(account_id)
        if a is None:
            # Opened before the part of the log we saw (or never): its age starts now.
            a = self.accounts[account_id] = _Acct(now_s, 0, True)
        return a

    def observe(self, event: Any) -> Observed | None:
        """Folds one ledger event in; for a new transfer returns its features (as of before it)."""
        if isinstance(event, Transfer.Initiated):
            return self._initiated(event)
        if isinstance(event, Account.Opened):
            ts = event.timestamp.timestamp()
            if event.originator_id not in self.accounts:
                self.accounts[event.originator_id] = _Acct(ts, event.overdraft_limit_minor, event.kind != SETTLEMENT)
        elif isinstance(event, Transfer.HoldPosted):
            hold = self.holds.pop(event.originator_id, None)
            if hold is not None:
                debit, credit, held = hold
                now_s = event.timestamp.timestamp()
                d, c = self._acct(debit, now_s), self._acct(credit, now_s)
                d.pending -= held
                d.posted -= event.amount_minor
                c.posted += event.amount_minor
        elif isinstance(event, Transfer.HoldVoided | Transfer.HoldExpired):
            hold = self.holds.pop(event.originator_id, None)
            if hold is not None:
                self._acct(hold[0], event.timestamp.timestamp()).pending -= hold[2]
        return None

    def _initiated(self, e: Any) -> Observed:
        now_s = e.timestamp.timestamp()
        amount = e.amount_minor
        debit = self._acct(e.debit_account_id, now_s)
        credit = self._acct(e.credit_account_id, now_s)
        if e.kind == DEPOSIT:
            actor, side, payee = credit, credit.side_in, None
        else:
            actor, side = debit, debit.out
            payee = credit if e.kind != WITHDRAWAL and credit.tracked else None
        for a in (debit, credit):
            if a.tracked:
                a.out.evict(now_s)
                a.side_in.evict(now_s)
        features = self._features(e, now_s, amount, actor, side, payee)
        self._apply(e, now_s, amount, debit, credit)
        return Observed(
            transfer_key=e.originator_id, public_id=e.public_id, tenant=e.tenant, kind=e.kind, amount_minor=amount,
            debit_account_id=e.debit_account_id, credit_account_id=e.credit_account_id, at_s=now_s, features=features,
        )

    @staticmethod
    def _features(e: Any, now_s: float, amount: int, actor: _Acct, side: _Side, payee: _Acct | None) -> tuple[float, ...]:
        is_deposit = e.kind == DEPOSIT
        z = 0.0
        to_mean = 0.0
        if side.n >= 1 and side.mean > 0:
            to_mean = min(RATIO_MAX, amount / side.mean)
        if side.n >= 2:
            std = max(1.0, math.sqrt(side.m2 / side.n))
            z = max(-Z_MAX, min(Z_MAX, (amount - side.mean) / std))
        w = side.window
        near = 1.0 if THRESHOLD_BAND_LOW_MINOR <= amount < THRESHOLD_MINOR else 0.0
        near_24h = sum(1 for _, amt, _ in w if THRESHOLD_BAND_LOW_MINOR <= amt < THRESHOLD_MINOR)
        small_1h = 0
        for ts, amt, _ in reversed(w):
            if ts <= now_s - WINDOW_1H_S:
                break
            if amt < SMALL_AMOUNT_MINOR:
                small_1h += 1
        if is_deposit:
            share = 0.0
            inflow_ratio = 0.0
            since_inflow = 0.0
            new_cp = 0.0
        else:
            available = actor.available
            share = SHARE_MAX if available <= 0 else min(SHARE_MAX, amount / available)
            inflow_ratio = min(RATIO_MAX, sum(amt for _, amt, _ in actor.side_in.window) / amount)
            since_inflow = math.log1p(NO_INFLOW_S if actor.last_in_at is None else max(0.0, now_s - actor.last_in_at))
            new_cp = 1.0 if payee is not None and e.credit_account_id not in actor.payees else 0.0
        if payee is not None:
            payee_fan_in = float(len(payee.side_in.counts))
            payee_age = math.log1p(max(0.0, now_s - payee.opened_at) / 86400)
        else:
            payee_fan_in = 0.0
            payee_age = -1.0
        return (
            1.0 if is_deposit else 0.0,
            1.0 if e.kind == WITHDRAWAL else 0.0,
            math.log10(amount),
            z,
            to_mean,
            math.log1p(side.n),
            float(_count_since(w, now_s - WINDOW_1M_S)),
            float(_count_since(w, now_s - WINDOW_1H_S)),
            float(len(w)),
            float(small_1h),
            new_cp,
            share,
            float(len(actor.side_in.counts)),
            float(len(actor.out.counts)),
            payee_fan_in,
            payee_age,
            math.log1p(max(0.0, now_s - actor.opened_at) / 86400),
            (now_s % 86400) / 3600,
            inflow_ratio,
            since_inflow,
            math.log1p(max(0.0, now_s - actor.last_at) / 86400),
            near,
            float(near_24h),
        )

    def _apply(self, e: Any, now_s: float, amount: int, debit: _Acct, credit: _Acct) -> None:
        if e.pending:
            debit.pending += amount
            if len(self.holds) < HOLDS_MAX:
                self.holds[e.originator_id] = (e.debit_account_id, e.credit_account_id, amount)
        else:
            debit.posted -= amount
            credit.posted += amount
        if debit.tracked:
            debit.out.add(now_s, amount, e.credit_account_id if credit.tracked else None)
            debit.last_at = now_s
            if credit.tracked:
                debit.payees[e.credit_account_id] = None
                debit.payees.move_to_end(e.credit_account_id)
                if len(debit.payees) > PAYEES_MAX:
                    debit.payees.popitem(last=False)
        if credit.tracked:
            credit.side_in.add(now_s, amount, e.debit_account_id if debit.tracked else None)
            credit.last_at = now_s
            credit.last_in_at = now_s
