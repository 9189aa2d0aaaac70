"""A seeded simulator of ledger activity with injected, labelled fraud (PaySim/AMLSim-style).

It produces a time-ordered stream of `SimOpen` and `SimTransfer` records: customers with
salaries, bills, card-like payments at merchants, peer transfers and cash withdrawals, merchants
that pay out their takings, employers that run payroll, plus five labelled fraud patterns
(account takeover, mule rings, structuring, card testing, dormant reactivation) and legitimate
look-alikes of each (big purchases from new payees, payroll fan-out, merchant fan-in, bonuses,
small top-ups). The same stream can be turned into the ledger's own domain events (for training,
with simulated timestamps), written to a dataset file, or driven through the ledger or the API.

The simulator never decides a score: labels travel with the records and are joined to features
only by transfer id, after the features were computed from the events alone.
"""
from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import msgspec

from domain.account import CUSTOMER, SETTLEMENT, Account
from domain.identity import account_key, settlement_key, settlement_public_id, transfer_key
from domain.transfer import DEPOSIT, TRANSFER, WITHDRAWAL, Transfer

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
SIM_TENANT = "sim"  # the tenant simulated activity is recorded in (ledger_events, keel simulate --ledger)

LEGIT = ""
TAKEOVER = "takeover"
MULE_RING = "mule_ring"
STRUCTURING = "structuring"
CARD_TESTING = "card_testing"
DORMANT = "dormant_reactivation"
PATTERNS = (TAKEOVER, MULE_RING, STRUCTURING, CARD_TESTING, DORMANT)


class SimOpen(msgspec.Struct, frozen=True, tag="open"):
    at: datetime
    account_id: UUID
    role: str


class SimTransfer(msgspec.Struct, frozen=True, tag="transfer"):
    at: datetime
    transfer_id: UUID
    kind: str  # transfer | deposit | withdrawal (as the ledger records it)
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    label: int  # 1 = fraud
    pattern: str  # "" for legitimate activity


Record = SimOpen | SimTransfer


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    seed: int = 1
    customers: int = 600
    days: int = 28
    start: datetime = DEFAULT_START
    tenant: str = SIM_TENANT
    currency: str = "EUR"
    merchants: int = 40
    employers: int = 8
    # incidents per 1,000 customers per 28 days
    takeovers: float = 40.0
    mule_rings: float = 12.0
    structurers: float = 20.0
    card_tests: float = 20.0
    dormant_drains: float = 25.0


@dataclass
class _Acct:
    id: UUID
    role: str
    balance: int = 0
    friends: tuple[UUID, ...] = ()
    salary: int = 0
    employer: UUID | None = None


# An amount is an int, or a function of the debit account's balance, decided at apply time.
Amount = int | Callable[[int], int]


@dataclass(order=True)
class _Action:
    at: datetime
    seq: int
    kind: str = ""
    debit: UUID | None = None
    credit: UUID | None = None
    amount: Any = 0
    pattern: str = LEGIT
    opens: tuple[UUID, str] | None = None


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        if not 1 <= config.customers <= CUSTOMERS_MAX or not 1 <= config.days <= DAYS_MAX:
            raise ValueError(f"customers must be 1..{CUSTOMERS_MAX} and days 1..{DAYS_MAX}")
        self.c = config
        self.rng = random.Random(config.seed)
        self.settlement = settlement_public_id(config.currency)
        self.accounts: dict[UUID, _Acct] = {}
        self._queue: list[_Action] = []
        self._seq = 0
        self._ids = 0

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

    def _day_hour(self) -> float:
        # Waking hours, peaking in the afternoon.
        return min(23.9, max(6.0, self.rng.gauss(14.5, 3.5)))

    def _night_or_any(self, p_night: float) -> float:
        return self.rng.uniform(0.0, 5.5) if self.rng.random() < p_night else self.rng.uniform(0.0, 23.9)

    def _card_amount(self) -> int:
        return max(100, int(self.rng.lognormvariate(7.6, 0.9)))  # median ~20.00

    # ---- the population --------------------------------------------------------------------

    def run(self) -> list[Record]:
        c, rng = self.c, self.rng
        history_start = -rng.uniform(200, 400)
        merchants = [self._open("merchant", self._at(history_start - rng.uniform(0, 900), 10)) for _ in range(c.merchants)]
        employers = [self._open("employer", self._at(history_start - rng.uniform(0, 900), 9)) for _ in range(c.employers)]
        billers = [self._open("biller", self._at(history_start - rng.uniform(0, 900), 9)) for _ in range(6)]
        self.merchants = [m.id for m in merchants]
        customers: list[_Acct] = []
        for _ in range(c.customers):
            new = rng.random() < 0.06
            opened = self._at(rng.uniform(0, c.days), self._day_hour()) if new else self._at(-rng.uniform(30, 2000), 11)
            emp = rng.choice(employers)
            a = self._open(CUSTOMER, opened, salary=int(rng.lognormvariate(12.3, 0.45)), employer=emp.id)
            customers.append(a)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=a.id, amount=rng.randint(5_000, 300_000))
        for a in customers:
            a.friends = tuple(rng.sample([x.id for x in customers if x is not a], k=3))
        self.customers = customers
        for e in employers:
            self._push(self._at(history_start, 8), kind=DEPOSIT, credit=e.id, amount=50_000_000)
        self._routine(customers, merchants, employers, billers)
        self._inject(customers, merchants)
        return self._apply()

    def _routine(self, customers: list[_Acct], merchants: list[_Acct], employers: list[_Acct], billers: list[_Acct]) -> None:
        c, rng = self.c, self.rng
        payday = {e.id: rng.randint(1, 27) for e in employers}
        for day in range(c.days):
            for e in employers:
                if day % 28 == payday[e.id] % 28:
                    self._push(self._at(day, 7.5), kind=DEPOSIT, credit=e.id, amount=40_000_000)
            for a in customers:
                if day % 28 == payday[a.employer] % 28:  # type: ignore[index]
                    self._push(self._at(day, 8 + rng.random()), kind=TRANSFER, debit=a.employer, credit=a.id, amount=a.salary)
                if day % 28 == (payday[a.employer] + 2) % 28:  # type: ignore[index]
                    biller = billers[hash(a.id) % len(billers)]
                    self._push(self._at(day, self._day_hour()), kind=TRANSFER, debit=a.id, credit=biller.id,
                               amount=lambda b, s=a.salary: min(int(s * 0.35), max(0, b)))
                for _ in range(min(8, int(rng.expovariate(1 / 1.6)))):
                    m = merchants[min(len(merchants) - 1, int(rng.expovariate(1 / 8)))]
                    self._push(self._at(day, self._day_hour()), kind=TRANSFER, debit=a.id, credit=m.id, amount=self._card_amount())
                if rng.random() < 0.08:
                    self._push(self._at(day, self._day_hour()), kind=TRANSFER, debit=a.id, credit=rng.choice(a.friends),
                               amount=rng.randint(500, 20_000))
                if rng.random() < 0.01:  # a new friend: new payee, small amount
                    self._push(self._at(day, self._day_hour()), kind=TRANSFER, debit=a.id, credit=rng.choice(customers).id,
                               amount=rng.randint(500, 15_000))
                if rng.random() < 0.10:
                    self._push(self._at(day, self._day_hour()), kind=WITHDRAWAL, debit=a.id, amount=rng.choice((2_000, 5_000, 10_000, 20_000)))
                if rng.random() < 0.006:  # a big purchase: new payee, much of the balance, daytime
                    self._push(self._at(day, rng.uniform(9, 18)), kind=TRANSFER, debit=a.id, credit=rng.choice(merchants[-10:]).id,
                               amount=lambda b, f=rng.uniform(0.4, 0.95): int(b * f))
                if rng.random() < 0.004:  # a bonus or a cash deposit of any size
                    self._push(self._at(day, self._day_hour()), kind=DEPOSIT, credit=a.id, amount=rng.randint(50_000, 2_000_000))
                if rng.random() < 0.003:  # a legitimate sweep of most of the balance to a friend
                    self._push(self._at(day, self._day_hour()), kind=TRANSFER, debit=a.id, credit=rng.choice(a.friends),
                               amount=lambda b, f=rng.uniform(0.5, 0.9): int(b * f))
            for m in merchants:
                self._push(self._at(day, 23.5), kind=WITHDRAWAL, debit=m.id, amount=lambda b: int(b * 0.9))

    # ---- fraud ------------------------------------------------------------------------------

    def _count(self, per_1000: float) -> int:
        mean = per_1000 * self.c.customers / 1000 * self.c.days / 28
        return int(mean) + (1 if self.rng.random() < mean - int(mean) else 0)

    def _mule(self, at: datetime) -> _Acct:
        return self._open("mule", at - timedelta(days=self.rng.uniform(0.1, 6), hours=0))

    def _inject(self, customers: list[_Acct], merchants: list[_Acct]) -> None:
        c, rng = self.c, self.rng
        for _ in range(self._count(c.takeovers)):
            victim = rng.choice(customers)
            t = self._at(rng.uniform(1, c.days - 0.2), self._night_or_any(0.6))
            mule = self._mule(t)
            if rng.random() < 0.4:
                self._push(t - timedelta(minutes=rng.uniform(2, 30)), kind=TRANSFER, debit=victim.id, credit=mule.id,
                           amount=rng.randint(100, 1_000), pattern=TAKEOVER)
            self._push(t, kind=TRANSFER, debit=victim.id, credit=mule.id,
                       amount=lambda b, f=rng.uniform(0.85, 0.99): int(b * f), pattern=TAKEOVER)
            self._push(t + timedelta(minutes=rng.uniform(2, 40)), kind=WITHDRAWAL, debit=mule.id,
                       amount=lambda b, f=rng.uniform(0.95, 1.0): int(b * f), pattern=TAKEOVER)
        for _ in range(self._count(c.mule_rings)):
            t = self._at(rng.uniform(1, c.days - 1.5), rng.uniform(0, 23))
            hub = self._mule(t)
            for _ in range(rng.randint(5, 12)):
                sender = rng.choice(customers)
                self._push(t + timedelta(hours=rng.uniform(0, 10)), kind=TRANSFER, debit=sender.id, credit=hub.id,
                           amount=rng.randint(20_000, 300_000), pattern=MULE_RING)
            out_at = t + timedelta(hours=rng.uniform(10.5, 14))
            outs = rng.randint(3, 6)
            for i in range(outs):
                onward = self._mule(out_at)
                self._push(out_at + timedelta(minutes=10 * i), kind=TRANSFER, debit=hub.id, credit=onward.id,
                           amount=lambda b, n=outs - i: int(b / n), pattern=MULE_RING)
                self._push(out_at + timedelta(minutes=10 * i + rng.uniform(5, 90)), kind=WITHDRAWAL, debit=onward.id,
                           amount=lambda b: b, pattern=MULE_RING)
        for _ in range(self._count(c.structurers)):
            who = rng.choice(customers)
            t0 = rng.uniform(0, c.days - 4)
            for _ in range(rng.randint(3, 8)):
                self._push(self._at(t0 + rng.uniform(0, 3.5), self._day_hour()), kind=DEPOSIT, credit=who.id,
                           amount=rng.randint(int(REPORTING_THRESHOLD_MINOR * 0.88), REPORTING_THRESHOLD_MINOR - 1),
                           pattern=STRUCTURING)
        for _ in range(self._count(c.card_tests)):
            victim = rng.choice(customers)
            t = self._at(rng.uniform(0.5, c.days - 0.1), self._night_or_any(0.4))
            for i in range(rng.randint(8, 30)):
                self._push(t + timedelta(seconds=i * rng.uniform(3, 25)), kind=TRANSFER, debit=victim.id,
                           credit=rng.choice(merchants).id, amount=rng.randint(50, 300), pattern=CARD_TESTING)
        for _ in range(self._count(c.dormant_drains)):
            opened = self._at(-rng.uniform(300, 2000), 11)
            sleeper = self._open(CUSTOMER, opened)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=sleeper.id, amount=rng.randint(200_000, 3_000_000))
            t = self._at(rng.uniform(0.5, c.days - 0.2), self._night_or_any(0.5))
            for i in range(rng.randint(1, 3)):
                dest = self._mule(t)
                self._push(t + timedelta(minutes=15 * i), kind=TRANSFER, debit=sleeper.id, credit=dest.id,
                           amount=lambda b, f=rng.uniform(0.3, 0.6): int(b * f), pattern=DORMANT)
        for _ in range(self._count(c.dormant_drains)):  # look-alike: a sleeper wakes for a small, ordinary payment
            opened = self._at(-rng.uniform(300, 2000), 11)
            sleeper = self._open(CUSTOMER, opened)
            self._push(opened + timedelta(minutes=5), kind=DEPOSIT, credit=sleeper.id, amount=rng.randint(20_000, 500_000))
            self._push(self._at(rng.uniform(0.5, c.days - 0.2), self._day_hour()), kind=TRANSFER, debit=sleeper.id,
                       credit=rng.choice(merchants).id, amount=self._card_amount())

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
                continue  # a customer drew itself as a "new friend"
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


def labels(records: Iterable[Record]) -> dict[UUID, tuple[int, str]]:
    """(label, pattern) by *public* transfer id; the log keys a transfer by its storage key,
    `transfer_key(tenant, public id)` (see fraud.model.training_set)."""
    return {r.transfer_id: (r.label, r.pattern) for r in records if isinstance(r, SimTransfer)}


def ledger_events(records: Iterable[Record], tenant: str = SIM_TENANT, currency: str = "EUR") -> Iterator[Any]:
    """The domain events the ledger would record for `records`, stamped with simulated time.

    Only the events the feature extractor reads are produced (Account.Opened, Transfer.Initiated);
    the balance events of the accounts carry nothing those two do not.
    """
    settlement = settlement_key(tenant, currency)
    first = True
    for r in records:
        if first:
            first = False
            yield Account.Opened(
                originator_id=settlement, originator_version=1, timestamp=r.at, originator_topic="",
                tenant=tenant, public_id=settlement_public_id(currency), currency=currency, kind=SETTLEMENT, overdraft_limit_minor=0, holder=None, metadata={},
            )
        if isinstance(r, SimOpen):
            yield Account.Opened(
                originator_id=account_key(tenant, r.account_id), originator_version=1, timestamp=r.at, originator_topic="",
                tenant=tenant, public_id=r.account_id, currency=currency, kind=CUSTOMER, overdraft_limit_minor=0, holder=None, metadata={},
            )
        else:
            yield Transfer.Initiated(
                originator_id=transfer_key(tenant, r.transfer_id), originator_version=1, timestamp=r.at,
                originator_topic="", tenant=tenant, public_id=r.transfer_id, kind=r.kind,
                debit_account_id=account_key(tenant, r.debit_account_id), credit_account_id=account_key(tenant, r.credit_account_id),
                debit_public_id=r.debit_account_id, credit_public_id=r.credit_account_id,
                amount_minor=r.amount_minor, currency=currency, reference=None, metadata={}, pending=False,
                timeout_s=None, reverses_id=None, reverses_public_id=None,
            )


# ---- files ------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


def write_dataset(records: Iterable[Record], path: str) -> int:
    """Writes one JSON record per line; returns the number of records."""
    n = 0
    with open(path, "wb") as f:
        for r in records:
            f.write(_encoder.encode(r) + b"\n")
            n += 1
    return n


def read_dataset(path: str) -> list[Record]:
    with open(path, "rb") as f:
        return [_decoder.decode(line) for line in f if line.strip()]


def summary(records: list[Record]) -> dict[str, int]:
    out: dict[str, int] = {"accounts": 0, "transfers": 0, "fraud": 0}
    for r in records:
        if isinstance(r, SimOpen):
            out["accounts"] += 1
        else:
            out["transfers"] += 1
            if r.label:
                out["fraud"] += 1
                out[r.pattern] = out.get(r.pattern, 0) + 1
    return out
