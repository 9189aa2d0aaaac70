"""A hostile tenant, as a hypothesis state machine, on both stores (SPEC §9, issue #12).

Tenant A banks normally. Tenant B acts with every id it could have: A's account and transfer ids
(as if leaked), ids any public rule derives (settlement accounts, reversals), random ids and its
own — through every write route, batches (atomic or not), post/void/reverse and
freeze/unfreeze/close, and the reads. After every step:
- A's balances, statuses and its settlement account equal a model built only from the answers A
  itself got (so nothing B did moved A's money or changed A's accounts);
- every answer B got about an id of A's equals, status and body, the answer to the same request
  with a random id in its place (so B learns nothing about A's objects, not even that they exist);
- per currency, the posted balances of every account of both tenants sum to zero.
"""
from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from litestar.testing import TestClient

from api.app import create_app
from domain.identity import is_system_id, reversal_public_id, settlement_public_id
from infrastructure.keys import new_key
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from tests.conftest import fresh_pg_settings, fresh_sqlite_settings

CURRENCIES = ("EUR", "USD")
A, B = "tenant-a", "tenant-b"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Acct:
    currency: str
    posted: int = 0
    pending_debits: int = 0
    pending_credits: int = 0
    status: str = "open"


@dataclass
class Xfer:
    debit: str
    credit: str
    amount: int
    pending: bool
    status: str
    posted: int = 0
    reversed: bool = False


@dataclass
class Model:
    """What one tenant knows from its own answers."""

    accounts: dict[str, Acct] = field(default_factory=dict)
    transfers: dict[str, Xfer] = field(default_factory=dict)
    settlement: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # currency -> posted

    def apply_transfer(self, body: dict[str, Any]) -> None:
        """A created transfer (201) as the ledger answered it: its legs on our accounts."""
        t = Xfer(body["debit_account_id"], body["credit_account_id"], body["amount"], body["pending"], body["status"])
        self.transfers[body["id"]] = t
        amount = body["amount"]
        for side, sign in ((t.debit, -1), (t.credit, +1)):
            a = self.accounts.get(side)
            if a is None:  # the settlement account
                self.settlement[body["currency"]] += sign * amount
            elif t.pending:
                if sign < 0:
                    a.pending_debits += amount
                else:
                    a.pending_credits += amount
            else:
                a.posted += sign * amount
        if not t.pending:
            t.posted = amount

    def settle(self, tid: str, posted: int, status: str) -> None:
        t = self.transfers[tid]
        d, c = self.accounts[t.debit], self.accounts[t.credit]
        d.pending_debits -= t.amount
        c.pending_credits -= t.amount
        d.posted -= posted
        c.posted += posted
        t.status, t.posted = status, posted


class _Client:
    def __init__(self, client: TestClient[Any], token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path, headers=self.headers)

    def post(self, path: str, body: Any | None = None) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers)


def _normalise(response: httpx.Response, *ids: str) -> tuple[int, str]:
    text = response.text
    for i in ids:
        text = text.replace(i, "<ID>")
    if response.status_code < 300:  # a created object's own data (ids, times, versions) differs
        text = _UUID.sub("<UUID>", text)
        text = re.sub(r'"(created_at|occurred_at)":"[^"]*"', r'"\1":"<T>"', text)
    return response.status_code, text


class HostileTenant(RuleBasedStateMachine):
    client: TestClient[Any]
    container: Container

    def __init__(self) -> None:
        super().__init__()
        # Fresh tenants for every example (the store is shared by the examples of one run).
        suffix = uuid.uuid4().hex[:8]
        self.tenant_a, self.tenant_b = f"{A}-{suffix}", f"{B}-{suffix}"
        tokens = []
        for tenant in (self.tenant_a, self.tenant_b):
            key, token = new_key("banking", tenant)
            self.container.keys.add(key)
            tokens.append(token)
        self.client_a, self.client_b = _Client(self.client, tokens[0]), _Client(self.client, tokens[1])
        self.a = Model()
        self.b = Model()
        self.b_owned: set[str] = set()  # public ids B has itself created (they are B's in B's tenant)
        self.b_funded: set[str] = set()

    # ---- pools of ids ------------------------------------------------------------------------

    def _a_ids(self) -> list[str]:
        derived = [str(reversal_public_id(uuid.UUID(t))) for t in self.a.transfers]
        return [i for i in [*self.a.accounts, *self.a.transfers, *derived] if i not in self.b_owned]

    def _b_compare(self, template: Any, path_fmt: str, target: str, *, body: bool = True) -> httpx.Response:
        """Sends B's request naming A's `target`, then the same with a random id of the same
        shape (a system id for a system id): the same answer."""
        random_id = str(reversal_public_id(uuid.uuid4()) if is_system_id(uuid.UUID(target)) else uuid.uuid4())

        def fill(value: Any, by: str) -> Any:
            if isinstance(value, dict):
                return {k: fill(v, by) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v, by) for v in value]
            return by if value == "<TARGET>" else value

        path = path_fmt.replace("<TARGET>", target)
        real = self.client_b.post(path, fill(template, target)) if body else self.client_b.get(path)
        path_r = path_fmt.replace("<TARGET>", random_id)
        rand = self.client_b.post(path_r, fill(template, random_id)) if body else self.client_b.get(path_r)
        assert real.status_code < 500, real.text
        assert _normalise(real, target) == _normalise(rand, random_id), (path_fmt, template, real.text, rand.text)
        return real

    # ---- tenant A banks ------------------------------------------------------------------------

    @rule(currency=st.sampled_from(CURRENCIES), overdraft=st.sampled_from([0, 0, 500]))
    def a_open(self, currency: str, overdraft: int) -> None:
        r = self.client_a.post("/v1/accounts", {"currency": currency, "overdraft_limit": overdraft})
        assert r.status_code == 201, r.text
        self.a.accounts[r.json()["id"]] = Acct(currency)

    @precondition(lambda self: self.a.accounts)
    @rule(data=st.data(), amount=st.integers(1, 5_000), withdraw=st.booleans())
    def a_deposit_or_withdraw(self, data: st.DataObject, amount: int, withdraw: bool) -> None:
        acct = data.draw(st.sampled_from(sorted(self.a.accounts)))
        cur = self.a.accounts[acct].currency
        r = self.client_a.post("/v1/withdrawals" if withdraw else "/v1/deposits", {"account_id": acct, "amount": amount, "currency": cur})
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            self.a.apply_transfer(r.json())

    @precondition(lambda self: len(self.a.accounts) >= 2)
    @rule(data=st.data(), amount=st.integers(1, 3_000), pending=st.booleans())
    def a_transfer(self, data: st.DataObject, amount: int, pending: bool) -> None:
        debit, credit = data.draw(st.lists(st.sampled_from(sorted(self.a.accounts)), min_size=2, max_size=2, unique=True))
        cur = self.a.accounts[debit].currency
        r = self.client_a.post("/v1/transfers", {"debit_account_id": debit, "credit_account_id": credit, "amount": amount,
                                                 "currency": cur, "pending": pending, "id": str(uuid.uuid4())})  # fmt: skip
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            self.a.apply_transfer(r.json())

    @precondition(lambda self: any(t.status == "pending" for t in self.a.transfers.values()))
    @rule(data=st.data(), void=st.booleans())
    def a_finish_hold(self, data: st.DataObject, void: bool) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, x in self.a.transfers.items() if x.status == "pending")))
        r = self.client_a.post(f"/v1/transfers/{tid}/{'void' if void else 'post'}", {})
        assert r.status_code == 200, r.text
        self.a.settle(tid, 0 if void else self.a.transfers[tid].amount, "voided" if void else "posted")

    @precondition(lambda self: any(t.status == "posted" and not t.reversed and t.posted for t in self.a.transfers.values()))
    @rule(data=st.data())
    def a_reverse(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, x in self.a.transfers.items() if x.status == "posted" and not x.reversed and x.posted)))
        r = self.client_a.post(f"/v1/transfers/{tid}/reverse")
        assert r.status_code in (201, 422), r.text  # 422: the credited account cannot give it back
        if r.status_code == 201:
            self.a.transfers[tid].reversed = True
            self.a.apply_transfer(r.json())

    @precondition(lambda self: self.a.accounts)
    @rule(data=st.data(), action=st.sampled_from(["freeze", "unfreeze"]))
    def a_status(self, data: st.DataObject, action: str) -> None:
        acct = data.draw(st.sampled_from(sorted(self.a.accounts)))
        r = self.client_a.post(f"/v1/accounts/{acct}/{action}")
        assert r.status_code in (200, 422), r.text
        if r.status_code == 200:
            self.a.accounts[acct].status = r.json()["status"]

    # ---- tenant B attacks ------------------------------------------------------------------------

    def _b_own_account(self, currency: str) -> str:
        """A funded account of B's in `currency`."""
        for i, a in self.b.accounts.items():
            if a.currency == currency and i in self.b_funded:
                return i
        r = self.client_b.post("/v1/accounts", {"currency": currency})
        assert r.status_code == 201, r.text
        self.b.accounts[r.json()["id"]] = Acct(currency)
        self.b_owned.add(r.json()["id"])
        r = self.client_b.post("/v1/deposits", {"account_id": r.json()["id"], "amount": 10_000, "currency": currency})
        assert r.status_code == 201, r.text
        self.b.apply_transfer(r.json())
        self.b_funded.add(r.json()["credit_account_id"])
        return r.json()["credit_account_id"]

    @precondition(lambda self: self._a_ids())
    @rule(data=st.data())
    def b_reads(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self._a_ids()))
        for path in ("/v1/accounts/<TARGET>", "/v1/transfers/<TARGET>", "/v1/accounts/<TARGET>/transactions",
                     "/v1/fraud/assessments/<TARGET>"):  # fmt: skip
            self._b_compare(None, path, target, body=False)

    @precondition(lambda self: self._a_ids())
    @rule(data=st.data(), action=st.sampled_from(["freeze", "unfreeze", "close", "post", "void", "reverse"]))
    def b_acts_on_a(self, data: st.DataObject, action: str) -> None:
        target = data.draw(st.sampled_from(self._a_ids()))
        path = f"/v1/accounts/<TARGET>/{action}" if action in ("freeze", "unfreeze", "close") else f"/v1/transfers/<TARGET>/{action}"
        self._b_compare({}, path, target)

    @precondition(lambda self: self._a_ids())
    @rule(data=st.data(), currency=st.sampled_from(CURRENCIES), route=st.sampled_from(["deposits", "withdrawals"]))
    def b_moves_a_account(self, data: st.DataObject, currency: str, route: str) -> None:
        target = data.draw(st.sampled_from(self._a_ids()))
        self._b_compare({"account_id": "<TARGET>", "amount": 7, "currency": currency}, f"/v1/{route}", target)

    @precondition(lambda self: self._a_ids())
    @rule(data=st.data(), currency=st.sampled_from(CURRENCIES), debit_side=st.booleans(), atomic=st.sampled_from([None, True, False]))
    def b_transfers_with_a_account(self, data: st.DataObject, currency: str, debit_side: bool, atomic: bool | None) -> None:
        target = data.draw(st.sampled_from(self._a_ids()))
        mine = self._b_own_account(currency)
        debit, credit = ("<TARGET>", mine) if debit_side else (mine, "<TARGET>")
        item = {"debit_account_id": debit, "credit_account_id": credit, "amount": 5, "currency": currency}
        if atomic is None:
            self._b_compare(item, "/v1/transfers", target)
        else:
            self._b_compare({"atomic": atomic, "transfers": [item]}, "/v1/transfers/batch", target)

    @precondition(lambda self: self._a_ids())
    @rule(data=st.data(), currency=st.sampled_from(CURRENCIES))
    def b_creates_with_a_id(self, data: st.DataObject, currency: str) -> None:
        """B uses an id of A's for a new object of its own: allowed (ids are per tenant), and the
        answer is the same as for any fresh id."""
        target = data.draw(st.sampled_from(self._a_ids()))
        if is_system_id(uuid.UUID(target)):
            # No client may create an object with a system id, whoever has one: 422 either way.
            self._b_compare({"id": "<TARGET>", "currency": currency}, "/v1/accounts", target)
            return
        kind = data.draw(st.sampled_from(["account", "transfer", "deposit"]))
        if kind == "account":
            r = self._b_compare({"id": "<TARGET>", "currency": currency}, "/v1/accounts", target)
            if r.status_code == 201:
                self.b.accounts[target] = Acct(currency)
        else:
            mine = self._b_own_account(currency)
            if kind == "deposit":
                r = self._b_compare({"id": "<TARGET>", "account_id": mine, "amount": 3, "currency": currency}, "/v1/deposits", target)
            else:
                other = self._b_second_account(currency, mine)
                r = self._b_compare({"id": "<TARGET>", "debit_account_id": mine, "credit_account_id": other, "amount": 3,
                                     "currency": currency}, "/v1/transfers", target)  # fmt: skip
            if r.status_code == 201:
                self.b.apply_transfer(r.json())
        assert r.status_code == 201, r.text
        self.b_owned.add(target)
        # the random twin created an object of B's too: keep the money model of B exact
        self._resync_b()

    def _b_second_account(self, currency: str, first: str) -> str:
        for i, a in self.b.accounts.items():
            if a.currency == currency and i != first:
                return i
        r = self.client_b.post("/v1/accounts", {"currency": currency})
        assert r.status_code == 201
        self.b.accounts[r.json()["id"]] = Acct(currency)
        self.b_owned.add(r.json()["id"])
        return r.json()["id"]

    def _resync_b(self) -> None:
        for i in list(self.b.accounts):
            r = self.client_b.get(f"/v1/accounts/{i}")
            if r.status_code == 200:
                self.b.accounts[i].posted = r.json()["posted"]

    @rule(currency=st.sampled_from(CURRENCIES))
    def b_touches_the_settlement_ids(self, currency: str) -> None:
        """The settlement id is public and the same in every tenant: for B it names B's own."""
        sid = str(settlement_public_id(currency))
        for action in ("freeze", "close"):
            r = self.client_b.post(f"/v1/accounts/{sid}/{action}")
            assert r.status_code in (404, 422), r.text
        mine = self._b_own_account(currency)
        r = self.client_b.post("/v1/transfers", {"debit_account_id": sid, "credit_account_id": mine, "amount": 11, "currency": currency})
        assert r.status_code in (201, 404), r.text  # B's settlement exists once B deposited
        if r.status_code == 201:
            self.b.apply_transfer(r.json())
        r = self.client_b.post("/v1/accounts", {"id": sid, "currency": currency})
        assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
        # B's settlement account holds exactly B's own money movements, nothing of A's.
        self._resync_b()
        r = self.client_b.get(f"/v1/accounts/{sid}")
        own = sum(a.posted for a in self.b.accounts.values() if a.currency == currency)
        if r.status_code == 404:  # B never moved money in this currency: no settlement account yet
            assert own == 0, (r.text, own)
        else:
            assert r.status_code == 200 and r.json()["posted"] == -own, (r.text, own)

    # ---- invariants ------------------------------------------------------------------------------

    @invariant()
    def a_sees_exactly_its_own_history(self) -> None:
        for acct, model in self.a.accounts.items():
            r = self.client_a.get(f"/v1/accounts/{acct}")
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["posted"], got["pending_debits"], got["pending_credits"], got["status"]) == (
                model.posted, model.pending_debits, model.pending_credits, model.status
            ), (acct, got, model)
        for currency, posted in self.a.settlement.items():
            r = self.client_a.get(f"/v1/accounts/{settlement_public_id(currency)}")
            assert r.status_code == 200 and r.json()["posted"] == posted, r.text

    @invariant()
    def every_currency_sums_to_zero(self) -> None:
        # Read from the ledger itself (not the models): every account either tenant has (the ones
        # B opened through the random twins of its requests hold nothing and are left out).
        ledger = self.container.ledger
        for currency in CURRENCIES:
            total = 0
            for tenant, model in ((self.tenant_a, self.a), (self.tenant_b, self.b)):
                for acct, a in model.accounts.items():
                    if a.currency == currency:
                        total += ledger.get_account(uuid.UUID(acct), tenant).posted_minor
                try:
                    total += ledger.get_account(settlement_public_id(currency), tenant).posted_minor
                except Exception:  # noqa: BLE001 - no settlement account yet in this currency
                    pass
            assert total == 0, (currency, total)


def _run(settings_: Settings) -> None:
    container = build(settings_)
    app = create_app(container, on_shutdown=[container.close])
    with TestClient(app) as client:
        HostileTenant.client = client
        HostileTenant.container = container
        case = HostileTenant.TestCase
        case.settings = settings(max_examples=6, stateful_step_count=25, deadline=None,
                                 suppress_health_check=list(HealthCheck))  # fmt: skip
        case().runTest()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Any, pg_session_schemas: list[str]) -> Iterator[Settings]:
    if request.param == "postgres":
        yield fresh_pg_settings(pg_session_schemas, rate_limit_per_s=0)
    else:
        yield fresh_sqlite_settings(tmp_path, rate_limit_per_s=0)


@pytest.mark.slow
def test_a_hostile_tenant_can_neither_reach_nor_learn_about_another(store_settings: Settings) -> None:
    _run(store_settings)
