"""Two `keel serve` processes on one PostgreSQL schema: no double spend, nothing lost, no 5xx."""
from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


from domain.identity import settlement_public_id
from tests.e2e.conftest import Api, start_pg_api
from tests.e2e.server import auth

pytestmark = pytest.mark.postgres

ACCOUNTS = 10
CLIENTS = 32
TRANSFERS_PER_CLIENT = 20
OPENING_BALANCE = 1_000
TENANT = "two-proc"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, pg_session_schemas: list[str]) -> Iterator[tuple[Api, Api]]:
    first = start_pg_api(tmp_path_factory.mktemp("p1"), pg_session_schemas)
    second = None
    try:
        second = start_pg_api(tmp_path_factory.mktemp("p2"), pg_session_schemas, settings=first.settings)
        yield first, second
    finally:
        first.close()
        if second is not None:
            second.close()


def _clients(pair: tuple[Api, Api], token: str) -> list[httpx.Client]:
    return [httpx.Client(base_url=api.server.base_url, headers=auth(token), timeout=60) for api in pair]


def test_32_clients_through_two_processes(pair: tuple[Api, Api]) -> None:
    from tests.e2e.server import make_token

    token = make_token(pair[0].settings, "banking", TENANT)
    servers = _clients(pair, token)
    accounts = []
    for _ in range(ACCOUNTS):
        r = servers[0].post("/v1/accounts", json={"currency": "EUR"})
        assert r.status_code == 201, r.text
        accounts.append(r.json()["id"])
        r = servers[1].post("/v1/deposits", json={"account_id": accounts[-1], "amount": OPENING_BALANCE, "currency": "EUR"})
        assert r.status_code == 201, r.text

    def client(n: int) -> list[tuple[int, dict, httpx.Response]]:
        rng = random.Random(n)
        out = []
        for i in range(TRANSFERS_PER_CLIENT):
            debit, credit = rng.sample(accounts, 2)
            body = {
                "id": str(uuid.uuid4()),
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": rng.randint(1, 300),
                "currency": "EUR",
            }
            headers = {"Idempotency-Key": f"c{n}-{i}-{uuid.uuid4().hex[:6]}"} if i % 2 else {}
            out.append((n, body, servers[(n + i) % 2].post("/v1/transfers", json=body, headers=headers)))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for chunk in pool.map(client, range(CLIENTS)) for r in chunk]

    statuses = Counter(r.status_code for _, _, r in results)
    assert not any(s >= 500 for s in statuses), (statuses, [r.text for _, _, r in results if r.status_code >= 500][:3])
    assert set(statuses) <= {201, 422}, statuses
    for _, _, r in results:
        if r.status_code == 422:
            assert r.json()["code"] == "insufficient_funds", r.text
    committed = [body for _, body, r in results if r.status_code == 201]
    assert committed, "no transfer succeeded"

    # Every 2xx transfer is stored (readable through either process) ...
    for i, body in enumerate(committed):
        r = servers[i % 2].get(f"/v1/transfers/{body['id']}")
        assert r.status_code == 200 and r.json()["amount"] == body["amount"], r.text
    # ... and counted exactly once: each balance is the opening balance plus exactly the 2xx
    # transfers (none applied twice, no rejected one applied).
    expected = {a: OPENING_BALANCE for a in accounts}
    for body in committed:
        expected[body["debit_account_id"]] -= body["amount"]
        expected[body["credit_account_id"]] += body["amount"]
    actual = {a: servers[0].get(f"/v1/accounts/{a}").json() for a in accounts}
    assert {a: s["posted"] for a, s in actual.items()} == expected
    assert all(s["available"] >= 0 for s in actual.values())
    # Conservation: customer accounts and the settlement account sum to zero.
    settlement = servers[1].get(f"/v1/accounts/{settlement_public_id('EUR')}").json()
    assert sum(expected.values()) + settlement["posted"] == 0
    for c in servers:
        c.close()


def test_same_idempotency_key_on_both_processes_applies_once(pair: tuple[Api, Api]) -> None:
    from tests.e2e.server import make_token

    token = make_token(pair[0].settings, "banking", TENANT + "-idem")
    servers = _clients(pair, token)
    a = servers[0].post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
    b = servers[0].post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
    assert servers[0].post("/v1/deposits", json={"account_id": a, "amount": 10_000, "currency": "EUR"}).status_code == 201
    rounds = 20
    in_flight = 0
    for n in range(rounds):
        key = {"Idempotency-Key": f"race-{n}-{uuid.uuid4().hex[:8]}"}
        body = {"debit_account_id": a, "credit_account_id": b, "amount": 7, "currency": "EUR"}
        barrier = threading.Barrier(2)

        def send(server: httpx.Client) -> httpx.Response:
            barrier.wait()
            return server.post("/v1/transfers", json=body, headers=key)

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(send, servers))
        fresh = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
        assert len(fresh) == 1, [(r.status_code, r.headers, r.text) for r in responses]
        (other,) = [r for r in responses if r is not fresh[0]]
        # the other process saw the claim: it replays the stored response, or says "in flight"
        if other.status_code == 201:
            assert other.headers["idempotent-replayed"] == "true" and other.content == fresh[0].content
        else:
            assert other.status_code == 409 and other.json()["code"] == "idempotency_key_in_flight", other.text
            in_flight += 1
            retry = servers[0].post("/v1/transfers", json=body, headers=key)
            assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
            assert retry.content == fresh[0].content
    assert servers[1].get(f"/v1/accounts/{b}").json()["posted"] == 7 * rounds
    for c in servers:
        c.close()


def test_logs_have_no_tracebacks(pair: tuple[Api, Api]) -> None:
    for api in pair:
        assert "Traceback" not in api.server.log(), api.server.log()

