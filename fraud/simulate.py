"""A seeded simulator of ledger activity with injected, labelled fraud (PaySim/AMLSim-style).

It produces a time-ordered stream of `SimOpen` and `SimTransfer` records: customers with
salaries, rent, bills, card payments, savings sweeps, peer transfers and cash withdrawals;
merchants, landlords and employers; and five labelled fraud patterns (account takeover, mule
rings, structuring, card testing, dormant reactivation). It is built to be hard to score: every
pattern has legitimate look-alikes with overlapping amounts and timing (whole-balance savings
sweeps at night, moving the whole balance to a new account, a new landlord's first rent, young
businesses with many payers that cash out nightly, shops that deposit cash just under the
threshold, bursts of tiny legitimate payments, night-shift customers), and the attackers vary
(with or without a small test payment first, one drain or several, young, reused or recruited
mules). Every generating parameter is a field of `SimConfig`; docs/fraud.md lists them.

The records and what they turn into (the ledger's own domain events, with simulated timestamps,
for training and evaluation; dataset files) are fraud/dataset.py; fraud/drive.py drives them
through the ledger or the API.

The simulator never decides a score: labels travel with the records and are joined to features
only by transfer id, after the features were computed from the events alone.
"""
from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import msgspec

from domain.account import CUSTOMER
from domain.identity import settlement_public_id
from domain.transfer import DEPOSIT, TRANSFER, WITHDRAWAL
from fraud.dataset import SIM_TENANT, Record, SimOpen, SimTransfer

# Amounts just under this are "structuring" (the classic 10,000.00 cash reporting threshold).
REPORTING_THRESHOLD_MINOR = 1_000_000
CUSTOMERS_MAX = 100_000
DAYS_MAX = 366
DEFAULT_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
# The default training period (what ships as the default model) and the held-out evaluation seed.
DEFAULT_TRAIN_SEED = 7
DEFAULT_EVAL_SEED = 1007
DEFAULT_CUSTOMERS = 600
DEFAULT_DAYS = 28
SIM_NAMESPACE = UUID("3d7f1b52-0c7e-4b0a-9f7e-2a6f1f0d8c11")

LEGIT = ""
TAKEOVER = "takeover"
MULE_RING = "mule_ring"
STRUCTURING = "structuring"
CARD_TESTING = "card_testing"
DORMANT = "dormant_reactivation"
PATTERNS = (TAKEOVER, MULE_RING, STRUCTURING, CARD_TESTING, DORMANT)


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every generating parameter. Rates are incidents per 1,000 customers per 28 days; shares
    are fractions of the balance at the moment the money moves."""

    seed: int = 1
    customers: int = DEFAULT_CUSTOMERS
    days: int = DEFAULT_DAYS
    start: datetime = DEFAULT_START
    # Ordinary activity (no fraud) before `start`, so accounts have some history when fraud begins.
    warmup_days: int = 14
    tenant: str = SIM_TENANT
    currency: str = "EUR"
    # the population
    merchants: int = 40
    employers: int = 8
    billers: int = 6
    landlords: int = 20
    renters: float = 0.4  # share of customers paying monthly rent to a landlord
    savers: float = 0.3  # share of customers with their own savings account
    sweep_all: float = 0.3  # of savers: sweep 90-100 % of the balance, not 10-40 %
    sweep_at_night: float = 0.5  # of sweeps: run automatically at 01:00-04:00
    night_shift: float = 0.1  # share of customers whose day is shifted by 10 hours
    # legitimate look-alikes
    moves: float = 12.0  # the whole balance to a new account of one's own (half) or wired out
    new_landlords: float = 15.0  # a first rent with deposit: 40-100 % of the balance to a payee never paid
    big_purchase_daily: float = 0.004  # per customer per day: 40-95 % of the balance to a merchant
    young_businesses: float = 8.0  # opened during the period, paid by many, cash out nightly
    cash_businesses: float = 15.0  # deposit 2,000-15,000 cash every 1-3 days
    tiny_burst_daily: float = 0.01  # per customer per day: 3-7 payments of 0.50-4.99 within 30 min
    # fraud
    takeovers: float = 40.0
    takeover_test: float = 0.5  # a small test payment (1.00-20.00) first, 2-60 min before
    takeover_night: float = 0.5  # at 00:00-05:30 rather than any hour
    takeover_chunks: float = 0.25  # the drain in 2-3 payments over 10-60 min
    mule_young: float = 0.55  # a mule opened 0.1-10 days before; otherwise
    mule_reused: float = 0.2  # a mule used before; otherwise a recruited customer's own (old) account
    mule_rings: float = 12.0
    structurers: float = 20.0
    card_tests: float = 20.0
    card_test_cash_out: float = 0.5  # the burst is followed by a large purchase
    dormant_drains: float = 25.0


@dataclass
class _Acct:
    id: UUID
    role: str
    balance: int = 0
    friends: tuple[UUID, ...] = ()
    salary: int = 0
    employer: UUID | None = None
    shift_h: float = 0.0
    landlord: UUID | None = None
    savings: UUID | None = None


@dataclass(order=True)
class _Action:
    at: datetime
    seq: int
    kind: str = ""
    debit: UUID | None = None
    credit: UUID | None = None
    amount: Any = 0  # an int, or a function of the debit account's balance at apply time
    pattern: str = LEGIT
    opens: tuple[UUID, str] | None = None


def _share(low: float, high: float, rng: random.Random) -> Callable[[int], int]:
    f = rng.uniform(low, high)
    return lambda b: int(b * f)


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        if not 1 <= config.customers <= CUSTOMERS_MAX or not 1 <= config.days <= DAYS_MAX:
            raise ValueError(f"customers must be 1..{CUSTOMERS_MAX} and days 1..{DAYS_MAX}")
        if not 0 <= config.warmup_days <= DAYS_MAX:
            raise ValueError(f"warmup_days must be 0..{DAYS_MAX}")
        self.c = config
        self.rng = random.Random(config.seed)
        self.settlement = settlement_public_id(config.currency)
        self.accounts: dict[UUID, _Acct] = {}
        self._queue: list[_Action] = []
        self._seq = 0
        self._ids = 0
        self.mules: list[UUID] = []

    # ---- helpers ---------------------------------------------------------------------------

    def _uuid(self) -> UUID:
        self._ids += 1
        return uuid.uuid5(SIM_NAMESPACE, f"{self.c.seed}:{self._ids}")

    def _at(self, day: float, hour: float) -> datetime:
        return self.c.start + timedelta(days=day, hours=hour)

    def _push(self, at: datetime, **kw: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Action(at=at, seq=self._seq, **kw))

    def _open(self, role: str, at: datetime, **kw: Any) -> _Acct:
        a = _Acct(id=self._uuid(), role=role, **kw)
        self.accounts[a.id] = a
        self._push(at, opens=(a.id, role))
        return a

    def _hour(self, a: _Acct | None = None) -> float:
        # Waking hours, peaking in the afternoon; a night-shift customer's day is shifted.
        h = min(23.9, max(6.0, self.rng.gauss(14.5, 3.5)))
        return (h + (a.shift_h if a is not None else 0.0)) % 24

    def _night_or_any(self, p_night: float) -> float:
        return self.rng.uniform(0.0, 5.5) if self.rng.random() < p_night else self.rng.uniform(0.0, 23.9)

    def _card_amount(self) -> int:
        return max(100, int(self.rng.lognormvariate(7.6, 0.9)))  # median ~20.00

    def _count(self, per_1000: float) -> int:
        mean = per_1000 * self.c.customers / 1000 * self.c.days / 28
        return int(mean) + (1 if self.rng.random() < mean - int(mean) else 0)

    def _fraud_day(self, margin: float = 0.2) -> float:
        return self.rng.uniform(0.5, max(0.6, self.c.days - margin))

    # ---- the population --------------------------------------------------------------------

    def run(self) -> list[Record]:
        c, rng = self.c, self.rng
        first_day = -c.warmup_days
        history_start = first_day - rng.uniform(200, 400)
        old = lambda: self._at(history_start - rng.uniform(0, 900), 10)  # noqa: E731
        merchants = [self._open("merchant", old()) for _ in range(c.merchants)]
        employers = [self._open("employer", old()) for _ in range(c.employers)]
        billers = [self._open("biller", old()) for _ in range(c.billers)]
        landlords = [self._open("landlord", old()) for _ in range(c.landlords)]
        self.merchants = merchants
        self.landlords = landlords
        customers: list[_Acct] = []
        for _ in range(c.customers):
            new = rng.random() < 0.06
            shift = 10.0 if rng.random() < c.night_shift else 0.0
            opened = (self._at(rng.uniform(first_day, c.days), 11) if new
                      else self._at(first_day - rng.uniform(30, 2000), 11))
            a = self._open(CUSTOMER, opened, salary=int(rng.lognormvariate(12.3, 0.45)), employer=rng.choice(employers).id,
                           shift_h=shift)
            if landlords and rng.random() < c.renters:
                a.landlord = rng.choice(landlords).id
            if rng.random() < c.savers:
                a.savings = self._open("savings", opened + timedelta(minutes=2)).id
            customers.append(a)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=a.id, amount=rng.randint(5_000, 300_000))
        for a in customers:
            a.friends = tuple(rng.sample([x.id for x in customers if x is not a], k=min(3, len(customers) - 1)))
        self.customers = customers
        for e in employers + landlords:
            self._push(self._at(history_start, 8), kind=DEPOSIT, credit=e.id, amount=50_000_000)
        self._routine(customers, employers, billers, first_day)
        self._look_alikes(customers, first_day)
        self._inject(customers)
        return self._apply()

    def _routine(self, customers: list[_Acct], employers: list[_Acct], billers: list[_Acct], first_day: int) -> None:
        c, rng = self.c, self.rng
        merchants = self.merchants
        payday = {e.id: rng.randint(1, 27) for e in employers}
        sweep = {a.id: (rng.random() < c.sweep_all, rng.random() < c.sweep_at_night, rng.random() < 0.5, rng.uniform(1.0, 4.0))
                 for a in customers if a.savings}
        for day in range(first_day, c.days):
            for e in employers:
                if day % 28 == payday[e.id] % 28:
                    self._push(self._at(day, 7.5), kind=DEPOSIT, credit=e.id, amount=40_000_000)
            for a in customers:
                pd = payday[a.employer]  # type: ignore[index]
                if day % 28 == pd % 28:
                    self._push(self._at(day, 8 + rng.random()), kind=TRANSFER, debit=a.employer, credit=a.id, amount=a.salary)
                if day % 28 == (pd + 1) % 28 and a.landlord:
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=a.landlord,
                               amount=lambda b, s=int(a.salary * rng.uniform(0.25, 0.45)): min(s, b))
                if day % 28 == (pd + 2) % 28:
                    biller = billers[hash(a.id) % len(billers)]
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=biller.id,
                               amount=lambda b, s=int(a.salary * 0.15): min(s, max(0, b)))
                if a.savings:
                    everything, at_night, weekly, hour = sweep[a.id]
                    if (weekly and day % 7 == pd % 7) or day % 28 == (pd + 3) % 28:
                        at = self._at(day, hour if at_night else self._hour(a))
                        self._push(at, kind=TRANSFER, debit=a.id, credit=a.savings,
                                   amount=_share(0.9, 1.0, rng) if everything else _share(0.1, 0.4, rng))
                for _ in range(min(8, int(rng.expovariate(1 / 1.6)))):
                    m = merchants[min(len(merchants) - 1, int(rng.expovariate(1 / 8)))]
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=m.id, amount=self._card_amount())
                if rng.random() < 0.08:
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=rng.choice(a.friends),
                               amount=rng.randint(500, 20_000))
                if rng.random() < 0.01:  # a new acquaintance: a payee never paid, small amount
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=rng.choice(customers).id,
                               amount=rng.randint(500, 15_000))
                if rng.random() < 0.10:
                    self._push(self._at(day, self._hour(a)), kind=WITHDRAWAL, debit=a.id,
                               amount=rng.choice((2_000, 5_000, 10_000, 20_000)))
                if rng.random() < c.big_purchase_daily:  # a car, a sofa: much of the balance to a merchant
                    self._push(self._at(day, rng.uniform(9, 20)), kind=TRANSFER, debit=a.id, credit=rng.choice(merchants[-15:]).id,
                               amount=_share(0.4, 0.95, rng))
                if rng.random() < 0.004:  # a bonus or a cash deposit of any size
                    self._push(self._at(day, self._hour(a)), kind=DEPOSIT, credit=a.id, amount=rng.randint(50_000, 2_000_000))
                if rng.random() < 0.003:  # sending most of the balance to a friend
                    self._push(self._at(day, self._hour(a)), kind=TRANSFER, debit=a.id, credit=rng.choice(a.friends),
                               amount=_share(0.5, 0.95, rng))
                if rng.random() < c.tiny_burst_daily:  # parking, transit, an app store: tiny payments in a row
                    t = self._at(day, self._hour(a))
                    shops = rng.sample(merchants, 2)
                    for i in range(rng.randint(3, 7)):
                        self._push(t + timedelta(minutes=i * rng.uniform(1, 6)), kind=TRANSFER, debit=a.id,
                                   credit=rng.choice(shops).id, amount=rng.randint(50, 499))
            for m in merchants:
                self._push(self._at(day, 23.5), kind=WITHDRAWAL, debit=m.id, amount=lambda b: int(b * 0.9))

    def _look_alikes(self, customers: list[_Acct], first_day: int) -> None:
        """Legitimate activity that looks like each fraud pattern."""
        c, rng = self.c, self.rng
        for _ in range(self._count(c.moves)):
            who = rng.choice(customers)
            t = self._at(rng.uniform(first_day + 1, c.days - 0.1), self._hour(who) if rng.random() < 0.85 else rng.uniform(0, 6))
            if rng.random() < 0.5:  # a new account of one's own (a joint account, a new bank here)
                own = self._open(CUSTOMER, t - timedelta(days=rng.uniform(0.05, 10)))
                self._push(t, kind=TRANSFER, debit=who.id, credit=own.id, amount=_share(0.9, 1.0, rng))
            else:  # moving banks: everything wired out
                self._push(t, kind=WITHDRAWAL, debit=who.id, amount=_share(0.9, 1.0, rng))
        for _ in range(self._count(c.new_landlords)):
            who = rng.choice(customers)
            landlord = rng.choice([x for x in self.landlords if x.id != who.landlord] or self.landlords)
            t = self._at(rng.uniform(first_day + 1, c.days - 0.1), self._hour(who))
            self._push(t, kind=TRANSFER, debit=who.id, credit=landlord.id, amount=_share(0.4, 1.0, rng))
        for _ in range(self._count(c.young_businesses)):
            opened = self._at(rng.uniform(first_day, c.days - 2), 10)
            shop = self._open("merchant", opened)
            days_open = (c.start + timedelta(days=c.days) - opened).days
            for d in range(days_open):
                for _ in range(rng.randint(2, 10)):
                    payer = rng.choice(customers)
                    self._push(opened + timedelta(days=d, hours=rng.uniform(1, 12)), kind=TRANSFER, debit=payer.id,
                               credit=shop.id, amount=rng.randint(1_000, 60_000))
                self._push(opened + timedelta(days=d, hours=rng.uniform(12.5, 14)), kind=WITHDRAWAL, debit=shop.id,
                           amount=_share(0.85, 1.0, rng))
        for _ in range(self._count(c.cash_businesses)):
            shop = rng.choice(customers)
            t = rng.uniform(first_day, 0)
            while t < c.days:
                self._push(self._at(t, self._hour(shop)), kind=DEPOSIT, credit=shop.id, amount=rng.randint(200_000, 1_500_000))
                t += rng.uniform(1, 3)
        for _ in range(self._count(c.dormant_drains)):  # a sleeper wakes for an ordinary payment, or to close up
            opened = self._at(first_day - rng.uniform(300, 2000), 11)
            sleeper = self._open(CUSTOMER, opened)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=sleeper.id, amount=rng.randint(20_000, 3_000_000))
            t = self._at(rng.uniform(0.5, c.days - 0.2), self._hour())
            if rng.random() < 0.5:
                self._push(t, kind=TRANSFER, debit=sleeper.id, credit=rng.choice(self.merchants).id, amount=self._card_amount())
            else:
                self._push(t, kind=WITHDRAWAL, debit=sleeper.id, amount=_share(0.3, 1.0, rng))

    # ---- fraud ------------------------------------------------------------------------------

    def _mule(self, at: datetime, victim: _Acct, customers: list[_Acct]) -> UUID:
        c, rng = self.c, self.rng
        r = rng.random()
        if r < c.mule_young or not self.mules:
            mule = self._open("mule", at - timedelta(days=rng.uniform(0.1, 10))).id
            self.mules.append(mule)
            return mule
        if r < c.mule_young + c.mule_reused:
            return rng.choice(self.mules)
        recruited = rng.choice([x for x in customers if x is not victim])  # an ordinary, old account
        return recruited.id

    def _young(self, at: datetime) -> UUID:
        mule = self._open("mule", at - timedelta(days=self.rng.uniform(0.1, 20))).id
        self.mules.append(mule)
        return mule

    def _inject(self, customers: list[_Acct]) -> None:
        c, rng = self.c, self.rng
        merchants = self.merchants
        for _ in range(self._count(c.takeovers)):
            victim = rng.choice(customers)
            t = self._at(self._fraud_day(), self._night_or_any(c.takeover_night))
            mule = self._mule(t, victim, customers)
            if rng.random() < c.takeover_test:
                to = mule if rng.random() < 0.7 else rng.choice(merchants).id
                self._push(t - timedelta(minutes=rng.uniform(2, 60)), kind=TRANSFER, debit=victim.id, credit=to,
                           amount=rng.randint(100, 2_000), pattern=TAKEOVER)
            if rng.random() < c.takeover_chunks:
                chunks = rng.randint(2, 3)
                for i in range(chunks):
                    last = i == chunks - 1
                    self._push(t + timedelta(minutes=i * rng.uniform(10, 30)), kind=TRANSFER, debit=victim.id, credit=mule,
                               amount=_share(0.85, 1.0, rng) if last else _share(0.3, 0.6, rng), pattern=TAKEOVER)
                t += timedelta(minutes=chunks * 30)
            else:
                self._push(t, kind=TRANSFER, debit=victim.id, credit=mule, amount=_share(0.7, 1.0, rng), pattern=TAKEOVER)
            out_at = t + timedelta(minutes=rng.uniform(2, 120))
            if rng.random() < 0.85:
                self._push(out_at, kind=WITHDRAWAL, debit=mule, amount=_share(0.6, 1.0, rng), pattern=TAKEOVER)
            else:  # layered: forwarded to another young account, which cashes out
                onward = self._young(out_at)
                self._push(out_at, kind=TRANSFER, debit=mule, credit=onward, amount=_share(0.8, 1.0, rng), pattern=TAKEOVER)
                self._push(out_at + timedelta(minutes=rng.uniform(5, 90)), kind=WITHDRAWAL, debit=onward,
                           amount=_share(0.9, 1.0, rng), pattern=TAKEOVER)
        for _ in range(self._count(c.mule_rings)):
            t = self._at(self._fraud_day(1.5), rng.uniform(0, 23))
            hub = self._young(t)
            for _ in range(rng.randint(5, 12)):
                sender = rng.choice(customers)
                cap = rng.randint(20_000, 300_000)
                self._push(t + timedelta(hours=rng.uniform(0, 10)), kind=TRANSFER, debit=sender.id, credit=hub,
                           amount=lambda b, cap=cap: min(cap, int(b * 0.9)), pattern=MULE_RING)
            out_at = t + timedelta(hours=rng.uniform(10.5, 14))
            outs = rng.randint(2, 6)
            for i in range(outs):
                onward = self._young(out_at)
                self._push(out_at + timedelta(minutes=10 * i), kind=TRANSFER, debit=hub, credit=onward,
                           amount=lambda b, n=outs - i: int(b / n), pattern=MULE_RING)
                self._push(out_at + timedelta(minutes=10 * i + rng.uniform(5, 90)), kind=WITHDRAWAL, debit=onward,
                           amount=_share(0.9, 1.0, rng), pattern=MULE_RING)
        for _ in range(self._count(c.structurers)):
            who = rng.choice(customers)
            t0 = rng.uniform(0, max(0.1, c.days - 4))
            for _ in range(rng.randint(3, 8)):
                self._push(self._at(t0 + rng.uniform(0, 3.5), self._hour(who)), kind=DEPOSIT, credit=who.id,
                           amount=rng.randint(int(REPORTING_THRESHOLD_MINOR * 0.85), REPORTING_THRESHOLD_MINOR - 1),
                           pattern=STRUCTURING)
        for _ in range(self._count(c.card_tests)):
            victim = rng.choice(customers)
            t = self._at(self._fraud_day(0.1), self._night_or_any(0.4))
            n = rng.randint(5, 30)
            for i in range(n):
                self._push(t + timedelta(seconds=i * rng.uniform(3, 90)), kind=TRANSFER, debit=victim.id,
                           credit=rng.choice(merchants).id, amount=rng.randint(50, 300), pattern=CARD_TESTING)
            if rng.random() < c.card_test_cash_out:
                self._push(t + timedelta(seconds=n * 90 + rng.uniform(60, 1800)), kind=TRANSFER, debit=victim.id,
                           credit=rng.choice(merchants).id, amount=lambda b, cap=rng.randint(20_000, 200_000): min(cap, int(b * 0.8)),
                           pattern=CARD_TESTING)
        for _ in range(self._count(c.dormant_drains)):
            opened = self._at(-c.warmup_days - rng.uniform(300, 2000), 11)
            sleeper = self._open(CUSTOMER, opened)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=sleeper.id, amount=rng.randint(200_000, 3_000_000))
            t = self._at(self._fraud_day(), self._night_or_any(0.5))
            for i in range(rng.randint(1, 3)):
                dest = self._mule(t, sleeper, customers)
                self._push(t + timedelta(minutes=15 * i), kind=TRANSFER, debit=sleeper.id, credit=dest,
                           amount=_share(0.3, 1.0, rng), pattern=DORMANT)

    # ---- applying the schedule with the ledger's balance rule -----------------------------

    def _apply(self) -> list[Record]:
        out: list[Record] = []
        opened: set[UUID] = set()
        end = self._at(self.c.days, 0)
        while self._queue:
            act = heapq.heappop(self._queue)
            if act.at >= end:
                continue
            if act.opens is not None:
                opened.add(act.opens[0])
                out.append(SimOpen(at=act.at, account_id=act.opens[0], role=act.opens[1]))
                continue
            debit = self.settlement if act.kind == DEPOSIT else act.debit
            credit = self.settlement if act.kind == WITHDRAWAL else act.credit
            assert debit is not None and credit is not None
            if debit == credit:
                continue  # a customer drew itself as a payee
            if (debit != self.settlement and debit not in opened) or (credit != self.settlement and credit not in opened):
                continue
            balance = self.accounts[debit].balance if debit != self.settlement else 1 << 62
            amount = act.amount(balance) if callable(act.amount) else act.amount
            if amount <= 0 or amount > balance:
                continue  # the ledger would refuse it (insufficient funds); a real client gives up
            if debit != self.settlement:
                self.accounts[debit].balance -= amount
            if credit != self.settlement:
                self.accounts[credit].balance += amount
            out.append(SimTransfer(
                at=act.at, transfer_id=self._uuid(), kind=act.kind, debit_account_id=debit, credit_account_id=credit,
                amount_minor=amount, label=1 if act.pattern else 0, pattern=act.pattern,
            ))
        return out


def simulate(config: SimConfig) -> list[Record]:
    """The time-ordered record stream for `config` (same config, same stream, byte for byte)."""
    return Simulator(config).run()
