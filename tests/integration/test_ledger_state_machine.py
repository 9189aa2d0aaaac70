"""A hypothesis state machine: the ledger against a plain in-memory model of the money rules.

Every step runs the same command on the real Ledger (real store: SQLite file or PostgreSQL schema)
and on the model, and compares the outcome (success, or the error code). Invariants after every
step: per currency the posted balances sum to 0; no customer account's available balance is below
zero; every balance equals the model's. "restart" rebuilds the Application from the store.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings as hsettings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from application.commands import (
    CloseAccount,
    Deposit,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    ReverseTransfer,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
    ExpireHold,
)
from application.ledger import Ledger, utcnow

from domain.errors import DomainError
from domain.identity import settlement_public_id, transfer_key
from infrastructure.settings import Settings
from keel.bootstrap import build_ledger

CURRENCIES = ["USD", "EUR"]
OPENING_DEPOSIT = 1000


@dataclass
class MAccount:
    currency: str
    overdraft: int
    status: str = "open"
    posted: int = 0
    pdebits: int = 0
    pcredits: int = 0

    @property
    def available(self) -> int:
        return self.posted - self.pdebits + self.overdraft


@dataclass
class MTransfer:
    debit: uuid.UUID
    credit: uuid.UUID
    amount: int
    pending: bool
    status: str
    posted: int
    reversed: bool = False
    is_reversal: bool = False
    created_shift: timedelta = timedelta(0)


@dataclass
class Model:
    accounts: dict[uuid.UUID, MAccount] = field(default_factory=dict)
    settlement: dict[str, int] = field(default_factory=dict)
    transfers: dict[uuid.UUID, MTransfer] = field(default_factory=dict)


def check_debit(a: MAccount, amount: int) -> str | None:
    if a.status == "frozen":
        return "account_frozen"
    if a.status == "closed":
        return "account_closed"
    if a.available - amount < 0:
        return "insufficient_funds"
    return None


class LedgerMachine(RuleBasedStateMachine):
    settings_obj: Settings  # set by the test function

    accounts = Bundle("accounts")
    transfers = Bundle("transfers")

    @initialize()
    def setup(self) -> None:
        self.ledger: Ledger = build_ledger(self.settings_obj)
        self.tenant = f"sm-{uuid.uuid4().hex[:10]}"
        self.model = Model()
        self.time_shift = timedelta(0)
        self.ledger.clock = lambda: utcnow() + self.time_shift

    def teardown(self) -> None:
        if hasattr(self, "ledger"):
            self.ledger.close()

    def run(self, command: object) -> object:
        (outcome,) = self.ledger.execute_batch([command])  # type: ignore[list-item]
        return outcome

    def expect(self, outcome: object, error: str | None) -> bool:
        """Compares the real outcome with the model's prediction; True when it succeeded."""
        got = outcome.code if isinstance(outcome, DomainError) else None
        assert got == error, f"expected {error}, got {got}: {outcome!r}"
        return error is None

    @rule(target=accounts, currency=st.sampled_from(["USD", "USD", "USD", "EUR"]), overdraft=st.sampled_from([0, 0, 50]))
    def open_account(self, currency: str, overdraft: int) -> uuid.UUID:
        state = self.run(OpenAccount(tenant=self.tenant, currency=currency, overdraft_limit_minor=overdraft))
        assert not isinstance(state, DomainError)
        self.model.accounts[state.id] = MAccount(currency, overdraft)
        self.deposit(state.id, OPENING_DEPOSIT)
        return state.id

    @rule(account=accounts, amount=st.integers(1, 500))
    def deposit(self, account: uuid.UUID, amount: int) -> None:
        a = self.model.accounts[account]
        err = "account_closed" if a.status == "closed" else None
        if self.expect(self.run(Deposit(tenant=self.tenant, account_id=account, amount_minor=amount, currency=a.currency)), err):
            a.posted += amount
            self.model.settlement[a.currency] = self.model.settlement.get(a.currency, 0) - amount

    @rule(account=accounts, amount=st.integers(1, 500))
    def withdraw(self, account: uuid.UUID, amount: int) -> None:
        a = self.model.accounts[account]
        err = check_debit(a, amount)
        if self.expect(self.run(Withdraw(tenant=self.tenant, account_id=account, amount_minor=amount, currency=a.currency)), err):
            a.posted -= amount
            self.model.settlement[a.currency] = self.model.settlement.get(a.currency, 0) + amount

    @rule(target=transfers, debit=accounts, credit=accounts, amount=st.integers(1, 700), pending=st.booleans())
    def transfer(self, debit: uuid.UUID, credit: uuid.UUID, amount: int, pending: bool) -> object:
        d, c = self.model.accounts[debit], self.model.accounts[credit]
        if debit == credit:
            err: str | None = "same_account"
        elif d.currency != c.currency:
            err = "currency_mismatch"
        else:
            err = check_debit(d, amount) or ("account_closed" if c.status == "closed" else None)
        tid = uuid.uuid4()
        outcome = self.run(MakeTransfer(
            tenant=self.tenant, transfer_id=tid, debit_account_id=debit, credit_account_id=credit,
            amount_minor=amount, currency=d.currency, pending=pending, timeout_s=60 if pending else None,
        ))  # fmt: skip
        if self.expect(outcome, err):
            if pending:
                d.pdebits += amount
                c.pcredits += amount
            else:
                d.posted -= amount
                c.posted += amount
            self.model.transfers[tid] = MTransfer(
                debit, credit, amount, pending, "pending" if pending else "posted", 0 if pending else amount,
                created_shift=self.time_shift,
            )  # fmt: skip
            return tid
        return multiple()

    def _finish_hold(self, t: MTransfer, posted: int, status: str) -> None:
        d, c = self.model.accounts[t.debit], self.model.accounts[t.credit]
        d.pdebits -= t.amount
        c.pcredits -= t.amount
        d.posted -= posted
        c.posted += posted
        t.status, t.posted = status, posted

    def _due(self, t: MTransfer) -> bool:
        # A hold's deadline counts from its creation on the ledger's clock (which runs ahead by
        # `time_shift`); real time passing in a run is far below 60 s.
        return t.status == "pending" and self.time_shift - t.created_shift >= timedelta(seconds=60)

    @rule(transfer=transfers, part=st.one_of(st.none(), st.integers(1, 450)))
    def post(self, transfer: uuid.UUID, part: int | None) -> None:
        t = self.model.transfers.get(transfer)
        outcome = self.run(PostTransfer(tenant=self.tenant, transfer_id=transfer, amount_minor=part))
        if t is None:
            self.expect(outcome, "not_found")
            return
        if self._due(t):
            # the hold ran out: the command records the expiry and is rejected
            self.expect(outcome, "transfer_expired")
            self._finish_hold(t, 0, "expired")
            return
        if t.status == "expired":
            err: str | None = "transfer_expired"
        elif t.status != "pending":
            err = "transfer_not_pending"
        elif part is not None and part > t.amount:
            err = "exceeds_held_amount"
        else:
            err = None
        if self.expect(outcome, err):
            self._finish_hold(t, t.amount if part is None else part, "posted")

    @rule(transfer=transfers)
    def void(self, transfer: uuid.UUID) -> None:
        t = self.model.transfers.get(transfer)
        outcome = self.run(VoidTransfer(tenant=self.tenant, transfer_id=transfer))
        if t is None:
            self.expect(outcome, "not_found")
            return
        if self._due(t):
            self.expect(outcome, "transfer_expired")
            self._finish_hold(t, 0, "expired")
            return
        expected = {"pending": None, "expired": "transfer_expired"}.get(t.status, "transfer_not_pending")
        if self.expect(outcome, expected):
            self._finish_hold(t, 0, "voided")

    @rule(transfer=transfers)
    def expire(self, transfer: uuid.UUID) -> None:
        """Time passes beyond the hold's timeout; the expiry worker's command runs."""
        t = self.model.transfers.get(transfer)
        self.time_shift += timedelta(seconds=61)
        outcome = self.run(ExpireHold(transfer_key=transfer_key(self.tenant, transfer)))
        if t is None:
            self.expect(outcome, "not_found")
            return
        self.expect(outcome, None)
        if self._due(t):
            self._finish_hold(t, 0, "expired")

    @rule(transfer=transfers)
    def reverse(self, transfer: uuid.UUID) -> None:
        t = self.model.transfers.get(transfer)
        outcome = self.run(ReverseTransfer(tenant=self.tenant, transfer_id=transfer, reversal_id=uuid.uuid4()))
        if t is None:
            self.expect(outcome, "not_found")
            return
        if t.status != "posted" or t.posted == 0:
            err: str | None = "transfer_not_posted"
        elif t.reversed:
            err = "already_reversed"
        else:
            # money flows back: the original credit account is debited
            c, d = self.model.accounts[t.credit], self.model.accounts[t.debit]
            err = check_debit(c, t.posted) or ("account_closed" if d.status == "closed" else None)
        if self.expect(outcome, err):
            c, d = self.model.accounts[t.credit], self.model.accounts[t.debit]
            c.posted -= t.posted
            d.posted += t.posted
            t.reversed = True
            self.model.transfers[outcome.id] = MTransfer(t.credit, t.debit, t.posted, False, "posted", t.posted, is_reversal=True)  # type: ignore[attr-defined]

    @rule(account=accounts)
    def freeze(self, account: uuid.UUID) -> None:
        a = self.model.accounts[account]
        if self.expect(self.run(FreezeAccount(tenant=self.tenant, account_id=account)), "account_closed" if a.status == "closed" else None):
            a.status = "frozen"

    @rule(account=accounts)
    def unfreeze(self, account: uuid.UUID) -> None:
        a = self.model.accounts[account]
        if self.expect(self.run(UnfreezeAccount(tenant=self.tenant, account_id=account)), "account_closed" if a.status == "closed" else None):
            a.status = "open"

    @rule(account=accounts)
    def close(self, account: uuid.UUID) -> None:
        a = self.model.accounts[account]
        if a.status == "closed":
            err: str | None = None
        elif a.posted or a.pdebits or a.pcredits:
            err = "account_not_empty"
        else:
            err = None
        if self.expect(self.run(CloseAccount(tenant=self.tenant, account_id=account)), err):
            a.status = "closed"

    @rule()
    def restart(self) -> None:
        self.ledger.close()
        self.ledger = build_ledger(self.settings_obj)
        self.ledger.clock = lambda: utcnow() + self.time_shift

    @invariant()
    def balances_match_model_and_conserve(self) -> None:
        if not hasattr(self, "model"):
            return
        totals: dict[str, int] = {}
        for account_id, m in self.model.accounts.items():
            real = self.ledger.get_account(account_id, self.tenant)
            assert (real.posted_minor, real.pending_debits_minor, real.pending_credits_minor, real.status) == (
                m.posted, m.pdebits, m.pcredits, m.status,
            ), (account_id, real, m)  # fmt: skip
            assert real.available_minor >= 0
            totals[m.currency] = totals.get(m.currency, 0) + real.posted_minor
        for currency in CURRENCIES:
            if currency in self.model.settlement:
                s = self.ledger.get_account(settlement_public_id(currency), self.tenant)
                assert s.posted_minor == self.model.settlement[currency]
                totals[currency] = totals.get(currency, 0) + s.posted_minor
        assert all(v == 0 for v in totals.values()), totals


@pytest.mark.parametrize("examples", [30])
def test_ledger_state_machine(settings: Settings, examples: int) -> None:
    machine = type("Machine", (LedgerMachine,), {"settings_obj": settings})
    machine.TestCase.settings = hsettings(
        max_examples=examples, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )  # fmt: skip
    machine.TestCase().runTest()
