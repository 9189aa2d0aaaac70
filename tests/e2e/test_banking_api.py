"""End to end through HTTP: `keel serve` runs as a subprocess (SQLite default and PostgreSQL).

Each test opens its own accounts, so tests share one server per module without interfering.
"""
from __future__ import annotations

import concurrent.futures
import re
import time
import uuid
from typing import Any

import httpx
import pytest


from domain.identity import settlement_public_id
from tests.e2e.conftest import Api

FORBIDDEN_TEXT = ("Traceback", "SELECT", "INSERT", "psycopg", "sqlite3", "File \"")


# ---- helpers ---------------------------------------------------------------------------------


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert not any(t in r.text for t in FORBIDDEN_TEXT), r.text
    return body


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def open_account(c: httpx.Client, currency: str = "EUR", **fields: Any) -> dict[str, Any]:
    return ok(c.post("/v1/accounts", json={"currency": currency, **fields}), 201)


def deposit(c: httpx.Client, account_id: str, amount: int, currency: str = "EUR") -> dict[str, Any]:
    return ok(c.post("/v1/deposits", json={"account_id": account_id, "amount": amount, "currency": currency}), 201)


def transfer(c: httpx.Client, debit: str, credit: str, amount: int, **fields: Any) -> httpx.Response:
    body = {"debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": "EUR", **fields}
    return c.post("/v1/transfers", json=body)


def balance(c: httpx.Client, account_id: str) -> dict[str, Any]:
    return ok(c.get(f"/v1/accounts/{account_id}"))


def funded_pair(c: httpx.Client, amount: int = 10_000) -> tuple[str, str]:
    a, b = open_account(c)["id"], open_account(c)["id"]
    deposit(c, a, amount)
    return a, b


# ---- the money flow --------------------------------------------------------------------------


def test_money_flow_and_conservation(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 10_000)
    t = ok(transfer(c, a, b, 2_500, reference="rent", metadata={"k": "v"}), 201)
    assert t["status"] == "posted" and t["amount"] == 2_500 and t["kind"] == "transfer"
    w = ok(c.post("/v1/withdrawals", json={"account_id": b, "amount": 1_000, "currency": "EUR"}), 201)
    assert w["kind"] == "withdrawal"
    assert balance(c, a)["posted"] == 7_500
    bb = balance(c, b)
    assert (bb["posted"], bb["available"], bb["pending_debits"], bb["pending_credits"]) == (1_500, 1_500, 0, 0)
    assert ok(c.get(f"/v1/transfers/{t['id']}")) == t

    # Double entry: customer balances plus the settlement account sum to zero for the tenant.
    tenant = ok(c.get(f"/v1/accounts/{a}")) and _tenant_of(api)
    settlement = balance(c, str(settlement_public_id("EUR")))
    listed = _all_accounts(c)
    assert {a, b} <= {x["id"] for x in listed}
    assert settlement["kind"] == "settlement"
    assert sum(x["posted"] for x in listed) + settlement["posted"] == 0

    history = ok(c.get(f"/v1/accounts/{a}/transactions"))["items"]
    assert [(h["type"], h["amount"]) for h in history] == [("debited", 2_500), ("credited", 10_000)]


def _tenant_of(api: Api) -> str:
    from infrastructure.keys import parse_token
    from keel.bootstrap import build

    key_id, _ = parse_token(api.tokens["bank_a"])  # type: ignore[misc]
    container = build(api.settings, start_writer=False)
    try:
        return container.keys.get(key_id).tenant  # type: ignore[union-attr,return-value]
    finally:
        container.ledger.close()


def _all_accounts(c: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = ok(c.get("/v1/accounts", params=params))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def test_transactions_newest_first_with_cursor(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 1_000)
    for amount in (1, 2, 3, 4):
        ok(transfer(c, a, b, amount), 201)
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = ok(c.get(f"/v1/accounts/{a}/transactions", params=params))
        assert len(page["items"]) <= 2
        seen += [(x["type"], x["amount"]) for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [("debited", 4), ("debited", 3), ("debited", 2), ("debited", 1), ("credited", 1_000)]


def test_list_pagination_has_no_duplicates(api: Api) -> None:
    c = api.client("bank_b")
    mine = {open_account(c)["id"] for _ in range(5)}
    listed = [x["id"] for x in _all_accounts(c)]
    assert len(listed) == len(set(listed))
    assert mine <= set(listed)
    problem(c.get("/v1/accounts", params={"cursor": "abc"}), 422, "validation_error")
    problem(c.get("/v1/accounts", params={"limit": 0}), 422, "validation_error")
    problem(c.get("/v1/accounts", params={"limit": 100_000}), 422, "validation_error")


# ---- every error code ------------------------------------------------------------------------


def test_domain_error_codes(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 5_000)
    missing = str(uuid.uuid4())

    problem(c.get(f"/v1/accounts/{missing}"), 404, "not_found")
    problem(c.get(f"/v1/transfers/{missing}"), 404, "not_found")
    problem(transfer(c, a, missing, 1), 404, "not_found")
    body = problem(transfer(c, a, b, 5_001), 422, "insufficient_funds")
    assert body["available"] == 5_000
    problem(transfer(c, a, a, 1), 422, "same_account")
    usd = open_account(c, "USD")["id"]
    problem(transfer(c, a, usd, 1), 422, "currency_mismatch")

    # exists_with_different_fields: the same transfer id with another amount
    tid = str(uuid.uuid4())
    first = ok(transfer(c, a, b, 100, id=tid), 201)
    assert ok(transfer(c, a, b, 100, id=tid), 200) == first  # the original result
    problem(transfer(c, a, b, 101, id=tid), 409, "exists_with_different_fields")
    assert balance(c, a)["posted"] == 4_900  # moved once

    # frozen: no debits (credits still fine); unfreeze restores
    ok(c.post(f"/v1/accounts/{a}/freeze"))
    assert balance(c, a)["status"] == "frozen"
    problem(transfer(c, a, b, 1), 422, "account_frozen")
    ok(transfer(c, b, a, 1), 201)
    ok(c.post(f"/v1/accounts/{a}/unfreeze"))
    ok(transfer(c, a, b, 1), 201)

    # close: only when empty; a closed account takes nothing
    problem(c.post(f"/v1/accounts/{a}/close"), 422, "account_not_empty")
    empty = open_account(c)["id"]
    assert ok(c.post(f"/v1/accounts/{empty}/close"))["status"] == "closed"
    problem(c.post("/v1/deposits", json={"account_id": empty, "amount": 1, "currency": "EUR"}), 422, "account_closed")

    settlement = str(settlement_public_id("EUR"))
    problem(c.post(f"/v1/accounts/{settlement}/freeze"), 422, "settlement_account_restricted")

    # balance_overflow: the settlement account (already negative from the deposits above)
    # would leave the 64-bit range
    big = open_account(c)["id"]
    problem(c.post("/v1/deposits", json={"account_id": big, "amount": 2**63 - 1, "currency": "EUR"}), 422, "balance_overflow")


def test_two_phase_post_void_and_expiry(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 10_000)
    hold = ok(transfer(c, a, b, 3_000, pending=True), 201)
    assert hold["status"] == "pending"
    aa = balance(c, a)
    assert (aa["posted"], aa["pending_debits"], aa["available"]) == (10_000, 3_000, 7_000)
    assert balance(c, b)["pending_credits"] == 3_000

    problem(c.post(f"/v1/transfers/{hold['id']}/post", json={"amount": 3_001}), 422, "exceeds_held_amount")
    problem(c.post(f"/v1/transfers/{hold['id']}/reverse"), 409, "transfer_not_posted")
    posted = ok(c.post(f"/v1/transfers/{hold['id']}/post", json={"amount": 2_000}))
    assert (posted["status"], posted["posted_amount"]) == ("posted", 2_000)
    aa, bb = balance(c, a), balance(c, b)
    assert (aa["posted"], aa["pending_debits"], bb["posted"], bb["pending_credits"]) == (8_000, 0, 2_000, 0)
    problem(c.post(f"/v1/transfers/{hold['id']}/post"), 409, "transfer_not_pending")
    problem(c.post(f"/v1/transfers/{hold['id']}/void"), 409, "transfer_not_pending")

    other = ok(transfer(c, a, b, 500, pending=True), 201)
    assert ok(c.post(f"/v1/transfers/{other['id']}/void"))["status"] == "voided"
    assert balance(c, a)["available"] == 8_000

    full = ok(transfer(c, a, b, 700, pending=True), 201)
    assert ok(c.post(f"/v1/transfers/{full['id']}/post", content=b""))["posted_amount"] == 700

    # reverse: a new compensating transfer; reversing again is 409 already_reversed naming the reversal
    rev = ok(c.post(f"/v1/transfers/{hold['id']}/reverse"), 201)
    assert rev["kind"] == "reversal" and rev["reverses_id"] == hold["id"] and rev["amount"] == 2_000
    assert problem(c.post(f"/v1/transfers/{hold['id']}/reverse"), 409, "already_reversed")["reversal_id"] == rev["id"]
    assert ok(c.get(f"/v1/transfers/{hold['id']}"))["reversed_by_id"] == rev["id"]

    short = ok(transfer(c, a, b, 100, pending=True, timeout_seconds=1), 201)
    time.sleep(1.2)
    late = c.post(f"/v1/transfers/{short['id']}/post")
    # Expired either by this request (transfer_expired) or, first, by the expiry worker; then the
    # domain answers transfer_not_pending with status "expired".
    if late.json()["code"] == "transfer_not_pending":
        assert problem(late, 409, "transfer_not_pending")["status"] == 409 and "expired" in late.text
    else:
        problem(late, 409, "transfer_expired")
    assert ok(c.get(f"/v1/transfers/{short['id']}"))["status"] == "expired"


def test_batches_atomic_and_not(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 1_000)
    item = {"debit_account_id": a, "credit_account_id": b, "currency": "EUR"}

    body = problem(
        c.post("/v1/transfers/batch", json={"atomic": True, "transfers": [{**item, "amount": 600}, {**item, "amount": 600}]}),
        422,
        "insufficient_funds",
    )
    assert body["index"] == 1
    assert balance(c, a)["posted"] == 1_000  # all or nothing

    res = ok(c.post("/v1/transfers/batch", json={"atomic": True, "transfers": [{**item, "amount": 100}] * 3}), 201)
    assert [r["ok"] for r in res["results"]] == [True] * 3
    assert balance(c, a)["posted"] == 700

    res = ok(
        c.post(
            "/v1/transfers/batch",
            json={"transfers": [{**item, "amount": 500}, {**item, "amount": 500}, {**item, "amount": 200}]},
        )
    )
    assert [r["ok"] for r in res["results"]] == [True, False, True]
    assert res["results"][1]["error"]["code"] == "insufficient_funds"
    assert res["results"][1]["error"]["available"] == 200 and res["results"][1]["error"]["status"] == 422
    assert balance(c, a)["posted"] == 0 and balance(c, b)["posted"] == 1_000

    problem(c.post("/v1/transfers/batch", json={"transfers": []}), 422, "validation_error")
    too_many = {"transfers": [{**item, "amount": 1}] * 1001}
    problem(c.post("/v1/transfers/batch", json=too_many), 422, "validation_error")
    problem(c.post("/v1/transfers/batch", content=b" " * (1024 * 1024 + 1)), 413, "payload_too_large")
    full = ok(c.post("/v1/transfers/batch", json={"transfers": [{**item, "amount": 1}] * 1000}))
    assert len(full["results"]) == 1000 and not any(r["ok"] for r in full["results"])


@pytest.mark.parametrize(
    "amount",
    [2.5, 25.0, "25", -5, 0, 2**63, True, None, [1], {"v": 1}],
    ids=["float", "float-int", "string", "negative", "zero", "too-big", "bool", "null", "list", "object"],
)
def test_bad_amounts_are_422(api: Api, amount: Any) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"debit_account_id": a, "credit_account_id": b, "amount": amount, "currency": "EUR"}
    problem(api.bank.post("/v1/transfers", json=body), 422, "validation_error")
    problem(api.bank.post("/v1/deposits", json={"account_id": a, "amount": amount, "currency": "EUR"}), 422, "validation_error")


def test_bad_input_is_4xx_never_500(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 100)
    good = {"debit_account_id": a, "credit_account_id": b, "amount": 1, "currency": "EUR"}
    cases: list[tuple[str, Any]] = [
        ("currency", "eur"),
        ("currency", "EURO"),
        ("debit_account_id", "not-a-uuid"),
        ("reference", "x" * 129),
        ("metadata", "not an object"),
        ("timeout_seconds", 0),
        ("unknown_field", 1),
    ]
    for key, value in cases:
        problem(c.post("/v1/transfers", json={**good, key: value}), 422, "validation_error")
    problem(c.post("/v1/transfers", json={**good, "metadata": {"blob": "x" * 5000}}), 422, "validation_error")
    problem(c.post("/v1/accounts", json={"currency": "EUR", "metadata": {"blob": "x" * 5000}}), 422, "validation_error")
    problem(c.post("/v1/accounts", json={"currency": "EUR", "overdraft_limit": -1}), 422, "validation_error")
    problem(c.post("/v1/accounts", json={"currency": "EUR", "holder": {"name": "A", "ssn": "1"}}), 422, "validation_error")
    problem(c.post("/v1/transfers", content=b"{not json"), 422, "validation_error")
    problem(c.post("/v1/transfers", content=b"[]"), 422, "validation_error")
    problem(c.get("/v1/accounts/not-a-uuid"), 422, "validation_error")
    problem(c.post("/v1/transfers/not-a-uuid/post"), 422, "validation_error")
    problem(c.post("/v1/accounts", content=b"{" + b'"a":' * 1 + b'"' + b"x" * 70_000 + b'"}'), 413, "payload_too_large")
    problem(c.get("/v1/nowhere"), 404, "not_found")
    problem(c.delete(f"/v1/accounts/{a}"), 405, "method_not_allowed")
    assert balance(c, a)["posted"] == 100  # nothing was written by any of it


# ---- keys, roles, tenancy --------------------------------------------------------------------

BANKING_ROUTES = [
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{id}"),
    ("GET", "/v1/accounts/{id}/transactions"),
    ("POST", "/v1/accounts/{id}/freeze"),
    ("POST", "/v1/accounts/{id}/unfreeze"),
    ("POST", "/v1/accounts/{id}/close"),
    ("POST", "/v1/deposits"),
    ("POST", "/v1/withdrawals"),
    ("POST", "/v1/transfers"),
    ("POST", "/v1/transfers/batch"),
    ("GET", "/v1/transfers/{id}"),
    ("POST", "/v1/transfers/{id}/post"),
    ("POST", "/v1/transfers/{id}/void"),
    ("POST", "/v1/transfers/{id}/reverse"),
]


def test_every_role_against_banking_routes(api: Api) -> None:
    some_id = str(uuid.uuid4())
    for method, path in BANKING_ROUTES:
        url = path.replace("{id}", some_id)
        for who in ("auditor", "analyst", "admin"):
            problem(api.client(who).request(method, url, json={}), 403, "forbidden")
        problem(api.client("anonymous").request(method, url, json={}), 401, "unauthorized")
        for header in ("Bearer nope", "Bearer keel_0123456789abcdef_wrong", "Basic abc", api.tokens["bank_a"]):
            r = api.client("anonymous").request(method, url, json={}, headers={"Authorization": header})
            problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    # the banking key passes the guard on every route (whatever the handler then says)
    for method, path in BANKING_ROUTES:
        r = api.bank.request(method, path.replace("{id}", some_id), json={})
        assert r.status_code not in (401, 403, 500), (method, path, r.text)


def test_every_v1_route_needs_a_key(api: Api) -> None:
    """Generic over the OpenAPI document, so routers added later are covered too."""
    anon = api.client("anonymous")
    spec = ok(anon.get("/schema/openapi.json"))
    checked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        for method in operations:
            if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            problem(anon.request(method.upper(), url, json={}), 401, "unauthorized")
            checked += 1
    assert checked >= len(BANKING_ROUTES)


def test_every_v1_route_has_roles_and_refuses_the_others(api: Api) -> None:
    """Generic over the app's routes (so later routers are covered): each /v1 route carries a
    `require_roles` guard, and every role outside it gets 403 from the running server."""
    from litestar.routes import HTTPRoute

    from api.app import create_app
    from infrastructure.keys import ROLES
    from keel.bootstrap import build

    container = build(api.settings, start_writer=False)
    try:
        app = create_app(container)
    finally:
        container.ledger.close()
    role_client = {"banking": "bank_a", "auditor": "auditor", "analyst": "analyst", "admin": "admin"}
    checked = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/v1/"):
            continue
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        for handler in route.route_handlers:
            methods = set(handler.http_methods) - {"OPTIONS", "HEAD"}  # Litestar's automatic handlers
            if not methods:
                continue
            # Litestar wraps each guard in an AsyncCallable (.func is ours)
            roles = set().union(*(getattr(getattr(g, "func", g), "roles", set()) for g in handler.resolve_guards()))
            assert roles, f"{route.path} has no require_roles guard"
            for method in methods:
                for role in set(ROLES) - roles:
                    r = api.client(role_client[role]).request(method, url, json={})
                    problem(r, 403, "forbidden")
                    checked += 1
    assert checked >= 3 * len(BANKING_ROUTES)


def test_ops_routes_need_no_key(api: Api) -> None:
    anon = api.client("anonymous")
    assert ok(anon.get("/healthz")) == {"status": "ok"}
    assert ok(anon.get("/readyz")) == {"status": "ready"}

    def committed() -> float:
        for line in anon.get("/metrics").text.splitlines():
            if line.startswith("keel_transfers_committed_total "):
                return float(line.split()[1])
        raise AssertionError("keel_transfers_committed_total missing")

    account = open_account(api.bank)["id"]
    before = committed()
    deposit(api.bank, account, 5)
    assert committed() == before + 1
    metrics = anon.get("/metrics")
    assert metrics.status_code == 200
    assert 'keel_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/deposits",status="2xx"}' in metrics.text
    assert "keel_group_commit_batch_commands_bucket" in metrics.text
    assert "keel_ledger_conflict_retries_total" in metrics.text
    # the fraud consumer (in-process on SQLite, `keel worker fraud` on PostgreSQL) reports its position
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = dict(l.split(" ", 1) for l in anon.get("/metrics").text.splitlines() if l.startswith("keel_fraud_") and " " in l)
        if float(lines.get("keel_fraud_position", "0")) > 0:
            break
        time.sleep(0.2)
    if api.settings.is_postgres:
        assert "keel_fraud_lag_events" in lines
    else:
        assert float(lines["keel_fraud_position"]) > 0
        assert "keel_fraud_scoring_seconds_count" in lines


def test_openapi_documents_every_route(api: Api) -> None:
    spec = ok(api.client("anonymous").get("/schema/openapi.json"))
    for method, path in BANKING_ROUTES:
        templated = path.replace("{id}", "{account_id}" if "accounts" in path else "{transfer_id}")
        op = spec["paths"][templated][method.lower()]
        assert op.get("summary") and op.get("description"), (method, path)
        examples = [ex for r in op["responses"].values() for c in r.get("content", {}).values() for ex in c.get("examples", {})]
        assert examples, (method, path)
        if method == "POST" and "requestBody" in op:
            assert any(c.get("examples") or c["schema"].get("examples") for c in op["requestBody"]["content"].values())
    assert spec["paths"]["/v1/transfers"]["post"]["description"]
    assert "bearer" in spec["components"]["securitySchemes"]


def test_revoked_and_cli_created_keys(api: Api, tmp_path: Any) -> None:
    import subprocess
    import sys

    env = {"KEEL_DATABASE_URL": api.settings.database_url, "KEEL_DATABASE_SCHEMA": api.settings.database_schema}
    import os

    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}, **env}
    out = subprocess.run(
        [sys.executable, "-m", "keel.cli", "keys", "create", "--role", "banking", "--tenant", "cli-tenant"],
        env=full_env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = out.stdout.strip()
    assert token.startswith("keel_") and token not in out.stderr
    c = httpx.Client(base_url=api.server.base_url, headers={"Authorization": f"Bearer {token}"})
    ok(c.post("/v1/accounts", json={"currency": "EUR"}), 201)
    # a key never used by the server (no cache entry) is refused as soon as it is revoked
    other = subprocess.run(
        [sys.executable, "-m", "keel.cli", "keys", "create", "--role", "banking", "--tenant", "cli-tenant"],
        env=full_env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    key_id = other.split("_")[1]
    subprocess.run([sys.executable, "-m", "keel.cli", "keys", "revoke", key_id], env=full_env, check=True, timeout=60)
    problem(httpx.get(api.server.base_url + "/v1/accounts", headers={"Authorization": f"Bearer {other}"}), 401, "unauthorized")
    bad = subprocess.run(
        [sys.executable, "-m", "keel.cli", "keys", "create", "--role", "banking"],
        env=full_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "tenant" in bad.stderr


def test_tenant_isolation(api: Api) -> None:
    a_client, b_client = api.client("bank_a"), api.client("bank_b")
    a, a2 = funded_pair(a_client, 1_000)
    t = ok(transfer(a_client, a, a2, 10, pending=True), 201)
    b_acc = open_account(b_client)["id"]
    deposit(b_client, b_acc, 50)
    missing = str(uuid.uuid4())

    def same_as_missing(r: httpx.Response, r_missing: httpx.Response) -> None:
        body, body_missing = problem(r, 404, "not_found"), problem(r_missing, 404, "not_found")
        assert body["detail"] == body_missing["detail"]

    same_as_missing(b_client.get(f"/v1/accounts/{a}"), b_client.get(f"/v1/accounts/{missing}"))
    same_as_missing(b_client.get(f"/v1/transfers/{t['id']}"), b_client.get(f"/v1/transfers/{missing}"))
    problem(b_client.get(f"/v1/accounts/{a}/transactions"), 404, "not_found")
    for action in ("post", "void", "reverse"):
        problem(b_client.post(f"/v1/transfers/{t['id']}/{action}"), 404, "not_found")
    for action in ("freeze", "unfreeze", "close"):
        problem(b_client.post(f"/v1/accounts/{a}/{action}"), 404, "not_found")
    problem(transfer(b_client, a, b_acc, 1), 404, "not_found")  # debit another tenant's account
    problem(transfer(b_client, b_acc, a, 1), 404, "not_found")  # credit another tenant's account
    problem(b_client.post("/v1/withdrawals", json={"account_id": a, "amount": 1, "currency": "EUR"}), 404, "not_found")
    assert a not in {x["id"] for x in _all_accounts(b_client)}
    # The same id in tenant B is B's own, new account: no collision, no hint that A has one.
    mine = b_client.post("/v1/accounts", json={"id": a, "currency": "USD"})
    assert mine.status_code == 201 and mine.json()["id"] == a and mine.json()["posted"] == 0
    assert a in {x["id"] for x in _all_accounts(b_client)}
    assert balance(a_client, a)["posted"] == 1_000 and balance(a_client, a)["status"] == "open"
    assert balance(a_client, a)["currency"] == "EUR"
    assert balance(b_client, b_acc)["posted"] == 50


# ---- idempotency -----------------------------------------------------------------------------


def test_idempotency_replay_reuse_and_errors(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 1_000)
    key = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}
    body = {"debit_account_id": a, "credit_account_id": b, "amount": 300, "currency": "EUR"}
    first = c.post("/v1/transfers", json=body, headers=key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = c.post("/v1/transfers", json=dict(reversed(list(body.items()))), headers=key)  # key order is not a change
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    problem(c.post("/v1/transfers", json={**body, "amount": 301}, headers=key), 422, "idempotency_key_reused")
    problem(c.post("/v1/deposits", json={"account_id": a, "amount": 1, "currency": "EUR"}, headers=key), 422, "idempotency_key_reused")
    assert balance(c, a)["posted"] == 700

    # an error is stored and replayed too (the client learns the same answer)
    err_key = {"Idempotency-Key": f"big-{uuid.uuid4()}"}
    big = {**body, "amount": 10_000}
    problem(c.post("/v1/transfers", json=big, headers=err_key), 422, "insufficient_funds")
    replay = c.post("/v1/transfers", json=big, headers=err_key)
    problem(replay, 422, "insufficient_funds")
    assert replay.headers["idempotent-replayed"] == "true"

    # keys are scoped to the API key: another key may use the same string
    b_acc = open_account(api.client("bank_b"))["id"]
    other = api.client("bank_b").post("/v1/deposits", json={"account_id": b_acc, "amount": 5, "currency": "EUR"}, headers=key)
    assert other.status_code == 201 and "idempotent-replayed" not in other.headers

    # accounts opened under a key: the same account again
    acc_key = {"Idempotency-Key": f"acc-{uuid.uuid4()}"}
    x = ok(c.post("/v1/accounts", json={"currency": "EUR"}, headers=acc_key), 201)
    y = c.post("/v1/accounts", json={"currency": "EUR"}, headers=acc_key)
    assert y.json()["id"] == x["id"] and y.headers["idempotent-replayed"] == "true"

    spaced = c.post("/v1/deposits", json={"account_id": a, "amount": 1, "currency": "EUR"}, headers={"Idempotency-Key": "a b"})
    assert spaced.status_code == 201  # printable ASCII includes the space
    for bad in ("x" * 256, "tab\tchar", "ünï"):
        r = httpx.post(
            api.server.base_url + "/v1/transfers",
            json=body,
            headers={"Authorization": c.headers["Authorization"], "Idempotency-Key": bad.encode()},  # type: ignore[dict-item]
        )
        problem(r, 422, "validation_error")


def test_concurrent_duplicates_apply_once(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 1_000)
    key = {"Idempotency-Key": f"dup-{uuid.uuid4()}"}
    body = {"debit_account_id": a, "credit_account_id": b, "amount": 10, "currency": "EUR"}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: c.post("/v1/transfers", json=body, headers=key), range(16)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, [r.text for r in responses]
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    for r in responses:
        if r.status_code == 409:
            problem(r, 409, "idempotency_key_in_flight")
    assert balance(c, a)["posted"] == 990


def test_transfer_id_reuse_across_kinds(api: Api) -> None:
    c = api.bank
    a, b = funded_pair(c, 1_000)
    tid = str(uuid.uuid4())
    d = ok(c.post("/v1/deposits", json={"account_id": a, "amount": 10, "currency": "EUR", "id": tid}), 201)
    assert ok(c.post("/v1/deposits", json={"account_id": a, "amount": 10, "currency": "EUR", "id": tid}), 200) == d
    problem(transfer(c, a, b, 10, id=tid), 409, "exists_with_different_fields")
    # Accounts and transfers have id spaces of their own: an account may carry a transfer's id.
    assert ok(c.post("/v1/accounts", json={"currency": "EUR", "id": tid}), 201)["id"] == tid
    assert balance(c, tid)["posted"] == 0 and ok(c.get(f"/v1/transfers/{tid}"), 200)["kind"] == "deposit"
    assert balance(c, a)["posted"] == 1_010
