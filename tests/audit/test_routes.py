"""The audit and erasure routes in-process (Litestar TestClient, real store): roles, pages,
point in time, verification, checkpoints, erasure, and the access log that records them."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from infrastructure.keys import new_key
from keel.bootstrap import Container, build
from tests.audit.conftest import make_settings


@pytest.fixture
def client(store_kind: str, tmp_path: Any, pg_session_schemas: list) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Container]]:
    container = build(make_settings(store_kind, tmp_path, pg_session_schemas))
    headers = {}
    for role, tenant in (("banking", "t1"), ("auditor", None), ("admin", None)):
        key, token = new_key(role, tenant)
        container.keys.add(key)
        headers[role] = {"Authorization": f"Bearer {token}", "key_id": key.key_id}
    with TestClient(create_app(container, on_shutdown=[container.close])) as c:
        yield c, {r: {"Authorization": h["Authorization"]} for r, h in headers.items()}, container


def test_audit_routes_end_to_end(client: tuple[TestClient, dict, Container]) -> None:
    c, h, container = client
    r = c.post("/v1/accounts", json={"currency": "USD", "holder": {"name": "Bob Holder", "email": "bob@example.com"}}, headers=h["banking"])
    assert r.status_code == 201, r.text
    acc = r.json()
    assert acc["holder"] == {"name": "Bob Holder", "email": "bob@example.com"}
    reported = {}
    for amount in (100, 250, 40):
        assert c.post("/v1/deposits", json={"account_id": acc["id"], "amount": amount, "currency": "USD"}, headers=h["banking"]).status_code == 201
        got = c.get(f"/v1/accounts/{acc['id']}", headers=h["banking"]).json()
        reported[got["version"]] = got["posted"]

    # roles: banking and admin keys may not read the audit trail; no key is 401
    assert c.get("/v1/audit/events", headers=h["banking"]).status_code == 403
    assert c.get("/v1/audit/verify").status_code == 401

    page = c.get("/v1/audit/events", params={"after": 0, "limit": 2}, headers=h["auditor"]).json()
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["position"]
    rest = c.get("/v1/audit/events", params={"after": page["next_after"], "limit": 1000}, headers=h["auditor"]).json()
    entries = page["items"] + rest["items"]
    assert rest["items"][0]["prev_hash"] == page["items"][-1]["hash"]
    assert "Bob" not in str(entries) and "bob@" not in str(entries)
    assert {e["event_type"] for e in entries} >= {"Account.Opened", "Transfer.Initiated", "Account.Credited"}

    for version, posted in reported.items():
        b = c.get(f"/v1/audit/accounts/{acc['id']}/balance", params={"version": version}, headers=h["auditor"]).json()
        assert b["posted"] == posted and "posted_minor" not in b
        by_time = c.get(f"/v1/audit/accounts/{acc['id']}/balance", params={"at": b["as_of"]}, headers=h["auditor"]).json()
        assert (by_time["version"], by_time["posted"]) == (version, posted)
    for bad in ({}, {"at": "nope"}, {"version": 0}, {"at": "2026-01-01T00:00:00Z", "version": 1}):
        r = c.get(f"/v1/audit/accounts/{acc['id']}/balance", params=bad, headers=h["auditor"])
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), (bad, r.text)
    assert c.get(f"/v1/audit/accounts/{uuid.uuid4()}/balance", params={"version": 1}, headers=h["auditor"]).status_code == 404
    assert c.get("/v1/audit/accounts/not-a-uuid/events", headers=h["auditor"]).status_code == 422
    history = c.get(f"/v1/audit/accounts/{acc['id']}/events", headers=h["auditor"]).json()["items"]
    assert [e["version"] for e in history] == [1, 2, 3, 4]
    assert history[0]["payload"]["holder"]["encrypted"] is True

    cp_none = c.get("/v1/audit/checkpoints", headers=h["auditor"]).json()
    assert cp_none["items"] == []
    container.audit.checkpoint()
    cps = c.get("/v1/audit/checkpoints", headers=h["auditor"]).json()["items"]
    key = c.get("/v1/audit/public-key", headers=h["auditor"]).json()
    assert key["algorithm"] == "Ed25519" and cps[0]["key_id"] == key["key_id"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["public_key_hex"])).verify(
        bytes.fromhex(cps[0]["signature"]), cps[0]["message"].encode()
    )
    v = c.get("/v1/audit/verify", headers=h["auditor"]).json()
    assert v["ok"] and v["events_checked"] == len(entries) and v["checkpoints_checked"] == 1

    # erasure: admin only; afterwards erased everywhere, balances intact, chain still verifies
    assert c.delete(f"/v1/accounts/{acc['id']}/holder", headers=h["banking"]).status_code == 403
    r = c.delete(f"/v1/accounts/{acc['id']}/holder", headers=h["admin"])
    assert r.status_code == 200 and r.json()["holder"] == {"erased": True} and r.json()["posted"] == 390
    assert c.delete(f"/v1/accounts/{uuid.uuid4()}/holder", headers=h["admin"]).status_code == 404
    after = c.get(f"/v1/accounts/{acc['id']}", headers=h["banking"]).json()
    assert after["holder"] == {"erased": True} and after["posted"] == 390
    history = c.get(f"/v1/audit/accounts/{acc['id']}/events", headers=h["auditor"]).json()["items"]
    assert history[0]["payload"]["holder"] == {"erased": True} and history[-1]["event_type"] == "Account.HolderErased"
    assert c.get("/v1/audit/verify", headers=h["auditor"]).json()["ok"]

    # the access log holds every write and audit read, with who and the outcome
    deadline = time.monotonic() + 5
    while True:
        log = c.get("/v1/audit/access-log", params={"limit": 1000}, headers=h["auditor"]).json()["items"]
        routes = {(e["role"], e["route"], e["outcome"]) for e in log}
        if ("admin", "DELETE /v1/accounts/{account_id}/holder", "200") in routes or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ("banking", "POST /v1/accounts", "201") in routes
    assert ("banking", "GET /v1/audit/events", "403") in routes
    assert ("-", "GET /v1/audit/verify", "401") in routes
    assert ("auditor", "GET /v1/audit/verify", "200") in routes
    assert ("admin", "DELETE /v1/accounts/{account_id}/holder", "200") in routes
    assert not any(e["route"].startswith("GET /v1/accounts") for e in log)  # plain banking reads are not audit reads
