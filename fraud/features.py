"""Features of each transfer, computed incrementally from the ledger's own events.

`FeatureExtractor.observe(event)` takes the ledger's domain events in log order (Account.Opened
and the Transfer lifecycle events) and, for each Transfer.Initiated, returns the feature vector
of that transfer as it stood just before the transfer, then folds the transfer into its state.

Time is the event's own time, read by one function, `event_time_s`, and nowhere else: never the
wall clock. Replaying the log after a restart (or a file in `keel fraud evaluate --dataset`)
therefore rebuilds exactly the same state and the same vectors.

Features describe behaviour (how much of the balance moves, how new the payee is, how the amount
compares with this account's and the payee's history, how fast money moves), never anything the
simulator knows: this module must never look at labels, simulator internals or anything but the
events. Where a feature has no data (no history, no payee, never received money) it is NO_DATA
(-1.0) in the recorded vector, never a 0 that reads as "normal"; the model sees NaN there
(`model_input` in fraud/model.py) and a reason is never given from it.

Memory per account is bounded: windows keep at most 24 h (and at most WINDOW_ITEMS_MAX entries),
payees are an LRU of PAYEES_MAX, the 7-day structuring window and the refusal window are capped.

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

# Bump when a feature is added, removed, reordered or redefined: a model is only ever used with
# vectors of the feature set it was trained on (fraud/model.py refuses others).
FEATURE_SET = "f2"

WINDOW_1M_S = 60.0
WINDOW_1H_S = 3600.0
WINDOW_24H_S = 86400.0
WINDOW_7D_S = 7 * 86400.0
WINDOW_ITEMS_MAX = 5000
NEAR_THRESHOLD_ITEMS_MAX = 64
REFUSALS_MAX = 256
PAYEES_MAX = 512
HOLDS_MAX = 1_000_000
SMALL_AMOUNT_MINOR = 500
# The band just under the 10,000.00 cash reporting threshold that structuring aims for.
THRESHOLD_MINOR = 1_000_000
THRESHOLD_BAND_LOW_MINOR = 850_000
SHARE_MAX = 10.0
RATIO_MAX = 10_000.0
# "This feature has no data here" in a recorded vector. Only features that are never negative
# may take it (NULLABLE); the model reads it as NaN.
NO_DATA = -1.0

FEATURE_NAMES: tuple[str, ...] = (
    "is_deposit",
    "is_withdrawal",
    "log_amount",
    "share_of_available",  # amount / available balance before it (outgoing)
    "share_out_24h",  # (sent in 24 h + amount) / (available + sent in 24 h): a drain in several steps
    "amount_to_mean",  # amount / the actor's mean amount in this direction
    "amount_to_max",  # amount / the actor's largest earlier amount in this direction
    "amount_to_payee_mean",  # amount / the mean amount the payee has received
    "amount_to_payee_paid_max",  # amount / the largest amount the actor paid this payee before (a test?)
    "history_log",  # log1p(earlier transactions of the actor in this direction): 0 = none
    "age_log_days",
    "idle_log_days",
    "since_inflow_log_s",  # since the actor last received money
    "inflow_24h_log",  # log10(1 + money received in 24 h)
    "new_payee",  # never paid this payee before
    "since_first_paid_log_s",  # since the actor first paid this payee
    "payee_age_log_days",
    "payee_received_log_n",  # log1p(payments the payee ever received): 0 = none
    "payee_fan_in_24h",  # distinct accounts that paid the payee in 24 h
    "velocity_1m",
    "velocity_1h",
    "velocity_24h",
    "since_last_log_s",  # since the actor's previous transaction in this direction
    "small_1h",  # payments under 5.00 in the last hour
    "fan_out_1h",  # distinct accounts the actor paid in the last hour
    "fan_in_24h",
    "fan_out_24h",
    "hour_of_day",  # UTC
    "near_threshold",  # a deposit just under the reporting threshold
    "near_threshold_7d",  # earlier such deposits in 7 days
    "refused_1h",  # attempts of this actor refused in the last hour (fed by `refused`; 0 until then)
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
NULLABLE = frozenset({
    "share_of_available", "share_out_24h", "amount_to_mean", "amount_to_max", "amount_to_payee_mean",
    "amount_to_payee_paid_max", "since_inflow_log_s", "new_payee", "since_first_paid_log_s", "payee_age_log_days",
    "payee_received_log_n", "payee_fan_in_24h", "since_last_log_s",
})
# The direction of risk where it is known: +1 "more never lowers the score", -1 the reverse.
# Every feature that grows with the amount is +1, so a larger amount never scores lower. The one
# exception: a deposit that rises from just under the reporting threshold to at or above it leaves
# the structuring band (`near_threshold` 1 -> 0), and may score lower; that band is the point.
MONOTONE: dict[str, int] = {
    "log_amount": 1, "share_of_available": 1, "share_out_24h": 1, "amount_to_mean": 1, "amount_to_max": 1,
    "amount_to_payee_mean": 1, "amount_to_payee_paid_max": 1, "new_payee": 1, "small_1h": 1,
    "near_threshold": 1, "near_threshold_7d": 1, "refused_1h": 1, "since_first_paid_log_s": -1,
}

TOPICS_CLASSES = (Account.Opened, Account.DebitRefused, Transfer.Initiated, Transfer.HoldPosted, Transfer.HoldVoided,
                  Transfer.HoldExpired)


def event_time_s(event: Any) -> float:
    """When the event happened, in POSIX seconds: the one place feature code reads time. The
    event time the client gave (`occurred_at`: history imported or backfilled), else the ledger's
    recording time (`timestamp`). Never the wall clock."""
    occurred = getattr(event, "occurred_at", None)
    return (occurred or event.timestamp).timestamp()


class _Side:
    """One direction (out or in) of one account: running stats and a 24 h window."""

    __slots__ = ("counts", "last_at", "max", "mean", "n", "sum", "window")

    def __init__(self) -> None:
        self.n = 0
        self.last_at = 0.0
        self.mean = 0.0
        self.max = 0
        self.sum = 0  # of the amounts in the window
        self.window: deque[tuple[float, int, UUID | None]] = deque()
        self.counts: dict[UUID, int] = {}  # counterparty -> entries in the window

    def evict(self, now_s: float) -> None:
        cutoff = now_s - WINDOW_24H_S
        w = self.window
        while w and (w[0][0] <= cutoff or len(w) > WINDOW_ITEMS_MAX):
            self._drop(w.popleft())

    def _drop(self, item: tuple[float, int, UUID | None]) -> None:
        self.sum -= item[1]
        cp = item[2]
        if cp is not None:
            left = self.counts[cp] - 1
            if left:
                self.counts[cp] = left
            else:
                del self.counts[cp]

    def add(self, now_s: float, amount: int, cp: UUID | None) -> None:
        self.n += 1
        self.last_at = now_s
        self.mean += (amount - self.mean) / self.n
        self.max = max(self.max, amount)
        self.window.append((now_s, amount, cp))
        self.sum += amount
        if cp is not None:
            self.counts[cp] = self.counts.get(cp, 0) + 1
        if len(self.window) > WINDOW_ITEMS_MAX:
            self._drop(self.window.popleft())

    def since(self, since_s: float) -> int:
        n = 0
        for ts, _, _ in reversed(self.window):
            if ts <= since_s:
                break
            n += 1
        return n


class _Acct:
    __slots__ = ("last_at", "last_in_at", "near", "opened_at", "out", "overdraft", "payees", "pending", "posted",
                 "refusals", "side_in", "tracked")

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
        # payee -> [first paid at, largest amount paid], least recently paid first
        self.payees: OrderedDict[UUID, list[float]] = OrderedDict()
        self.near: deque[float] = deque()  # deposits just under the threshold, 7 days
        self.refusals: deque[float] = deque()  # refused attempts, 1 hour

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


def _log_s(seconds: float) -> float:
    return math.log1p(max(0.0, seconds))


def _log_days(seconds: float) -> float:
    return math.log1p(max(0.0, seconds) / 86400)


def _ratio(amount: int, of: float) -> float:
    return min(RATIO_MAX, amount / of) if of > 0 else NO_DATA


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
            observed = self.peek(event)
            self._apply(event, observed.at_s)
            return observed
        if isinstance(event, Account.Opened):
            if event.originator_id not in self.accounts:
                self.accounts[event.originator_id] = _Acct(event_time_s(event), event.overdraft_limit_minor,
                                                           event.kind != SETTLEMENT)
        elif isinstance(event, Transfer.HoldPosted):
            hold = self.holds.pop(event.originator_id, None)
            if hold is not None:
                debit, credit, held = hold
                now_s = event_time_s(event)
                d, c = self._acct(debit, now_s), self._acct(credit, now_s)
                d.pending -= held
                d.posted -= event.amount_minor
                c.posted += event.amount_minor
        elif isinstance(event, Transfer.HoldVoided | Transfer.HoldExpired):
            hold = self.holds.pop(event.originator_id, None)
            if hold is not None:
                self._acct(hold[0], event_time_s(event)).pending -= hold[2]
        elif isinstance(event, Account.DebitRefused):
            self.refused(event.originator_id, event_time_s(event))
        return None

    def refused(self, account_id: UUID, at_s: float) -> None:
        """An attempt by `account_id` (storage key) to move money that was refused (insufficient
        funds, frozen, closed: `Account.DebitRefused` in the ledger's log). Feeds `refused_1h`."""
        a = self._acct(account_id, at_s)
        a.refusals.append(at_s)
        while len(a.refusals) > REFUSALS_MAX:
            a.refusals.popleft()

    def peek(self, e: Any) -> Observed:
        """The features of Transfer.Initiated `e` against the current state, without folding it
        in (windows are trimmed to its time, which changes no feature of it or of later events)."""
        now_s = event_time_s(e)
        debit = self._acct(e.debit_account_id, now_s)
        credit = self._acct(e.credit_account_id, now_s)
        for a in (debit, credit):
            if a.tracked:
                a.out.evict(now_s)
                a.side_in.evict(now_s)
        features = self._features(e, now_s, debit, credit)
        return Observed(
            transfer_key=e.originator_id, public_id=e.public_id, tenant=e.tenant, kind=e.kind, amount_minor=e.amount_minor,
            debit_account_id=e.debit_account_id, credit_account_id=e.credit_account_id, at_s=now_s, features=features,
        )

    @staticmethod
    def _features(e: Any, now_s: float, debit: _Acct, credit: _Acct) -> tuple[float, ...]:
        amount = e.amount_minor
        is_deposit = e.kind == DEPOSIT
        if is_deposit:
            actor, side = credit, credit.side_in
            payee = None
        else:
            actor, side = debit, debit.out
            payee = credit if e.kind != WITHDRAWAL and credit.tracked else None
        w = side.window
        small_1h = 0
        paid_1h: set[UUID] = set()
        for ts, amt, cp in reversed(w):
            if ts <= now_s - WINDOW_1H_S:
                break
            if amt < SMALL_AMOUNT_MINOR:
                small_1h += 1
            if cp is not None and not is_deposit:
                paid_1h.add(cp)
        near = 0.0
        near_7d = 0.0
        if is_deposit:
            near = 1.0 if THRESHOLD_BAND_LOW_MINOR <= amount < THRESHOLD_MINOR else 0.0
            near_7d = float(sum(1 for ts in actor.near if ts > now_s - WINDOW_7D_S))
        if is_deposit:
            share = share_24h = since_inflow = NO_DATA
        else:
            available = actor.available
            share = SHARE_MAX if available <= 0 else min(SHARE_MAX, amount / available)
            sent = actor.out.sum
            share_24h = SHARE_MAX if available + sent <= 0 else min(SHARE_MAX, (sent + amount) / (available + sent))
            since_inflow = NO_DATA if actor.last_in_at is None else _log_s(now_s - actor.last_in_at)
        if payee is not None:
            paid = actor.payees.get(e.credit_account_id)
            new_payee = 0.0 if paid is not None else 1.0
            since_first_paid = NO_DATA if paid is None else _log_s(now_s - paid[0])
            to_paid_max = NO_DATA if paid is None else _ratio(amount, paid[1])
            payee_age = _log_days(now_s - payee.opened_at)
            payee_n = math.log1p(payee.side_in.n)
            payee_mean = _ratio(amount, payee.side_in.mean) if payee.side_in.n else NO_DATA
            # A payee that never received money has no fan-in to speak of (not "0 accounts").
            payee_fan_in = float(len(payee.side_in.counts)) if payee.side_in.n else NO_DATA
        else:
            new_payee = since_first_paid = to_paid_max = payee_age = payee_n = payee_mean = payee_fan_in = NO_DATA
        refused_1h = float(sum(1 for ts in actor.refusals if ts > now_s - WINDOW_1H_S))
        return (
            1.0 if is_deposit else 0.0,
            1.0 if e.kind == WITHDRAWAL else 0.0,
            math.log10(amount),
            share,
            share_24h,
            _ratio(amount, side.mean) if side.n else NO_DATA,
            _ratio(amount, side.max) if side.n else NO_DATA,
            payee_mean,
            to_paid_max,
            math.log1p(side.n),
            _log_days(now_s - actor.opened_at),
            _log_days(now_s - actor.last_at),
            since_inflow,
            math.log10(1 + actor.side_in.sum),
            new_payee,
            since_first_paid,
            payee_age,
            payee_n,
            payee_fan_in,
            float(side.since(now_s - WINDOW_1M_S)),
            float(side.since(now_s - WINDOW_1H_S)),
            float(len(w)),
            _log_s(now_s - side.last_at) if side.n else NO_DATA,
            float(small_1h),
            float(len(paid_1h)),
            float(len(actor.side_in.counts)),
            float(len(actor.out.counts)),
            (now_s % 86400) / 3600,
            near,
            near_7d,
            refused_1h,
        )

    def _apply(self, e: Any, now_s: float) -> None:
        amount = e.amount_minor
        debit, credit = self.accounts[e.debit_account_id], self.accounts[e.credit_account_id]
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
                paid = debit.payees.get(e.credit_account_id)
                if paid is None:
                    debit.payees[e.credit_account_id] = [now_s, float(amount)]
                else:
                    paid[1] = max(paid[1], float(amount))
                    debit.payees.move_to_end(e.credit_account_id)
                if len(debit.payees) > PAYEES_MAX:
                    debit.payees.popitem(last=False)
        if credit.tracked:
            credit.side_in.add(now_s, amount, e.debit_account_id if debit.tracked else None)
            credit.last_at = now_s
            credit.last_in_at = now_s
            if e.kind == DEPOSIT and THRESHOLD_BAND_LOW_MINOR <= amount < THRESHOLD_MINOR:
                credit.near.append(now_s)
                while credit.near and (credit.near[0] <= now_s - WINDOW_7D_S or len(credit.near) > NEAR_THRESHOLD_ITEMS_MAX):
                    credit.near.popleft()
