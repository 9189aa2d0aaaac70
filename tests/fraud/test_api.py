"""End to end through HTTP: a real `keel serve` (embedded SQLite, fraud worker in process) sees
ordinary customers and one takeover drain; the drain outranks every ordinary payment, and the
fraud routes honour roles and tenancy (a banking key's ids are resolved inside its tenant; an
analyst names a transfer by tenant and public id, by storage key, or by an unambiguous public id).
On PostgreSQL, with no fraud worker running at first, a transfer is "pending" (202) until scored."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest

from domain.identity import transfer_key
from tests.e2e.conftest import Api, start_pg_api, start_sqlite_api

SCORED_WAIT_S = 60.0
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, small_model_dir: Path) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("fraud-api")
    # The server's default model directory is ./var/fraud; give it the small test model so it
    # does not train the full default one (that works too, but takes ~10 s).
    shutil.copytree(small_model_dir, tmp / "var" / "fraud")
    running = start_sqlite_api(tmp)
    try:
        yield running
    finally:
        running.close()


def _ok(r: httpx.Response) -> dict:
    assert r.status_code in (200, 201), r.text
    return r.json()


def _assessment(client: httpx.Client, transfer_id: str, **params: str) -> dict:
    """Polls until scored: 202 `pending` (with Retry-After) until then, never 404."""
    deadline = time.monotonic() + SCORED_WAIT_S
    while True:
        r = client.get(f"/v1/fraud/assessments/{transfer_id}", params=params)
        if r.status_code == 200:
            body = r.json()
            assert body["status"] == "scored", body
            return body
        assert r.status_code == 202 and r.json()["status"] == "pending" and r.headers["retry-after"], r.text
        assert time.monotonic() < deadline, "the transfer was not scored in time"
        time.sleep(0.1)


def _masked(r: httpx.Response) -> tuple[int, str, str]:
    return r.status_code, r.headers.get("content-type", ""), UUID_RE.sub("<id>", r.text)


def test_takeover_drain_through_the_api_outranks_every_ordinary_payment(api: Api) -> None:
    bank = api.bank
    account = lambda: _ok(bank.post("/v1/accounts", json={"currency": "EUR"}))["id"]  # noqa: E731
    merchants = [account() for _ in range(4)]
    customers = [account() for _ in range(12)]
    ordinary = []
    for i, cid in enumerate(customers):
        _ok(bank.post("/v1/deposits", json={"account_id": cid, "amount": 250_000 + 1_000 * i, "currency": "EUR", "reference": "salary"}))
        for k in range(3):
            ordinary.append(_ok(bank.post("/v1/transfers", json={
                "debit_account_id": cid, "credit_account_id": merchants[(i + k) % 4], "amount": 1_500 + 700 * k + 13 * i,
                "currency": "EUR"}))["id"])
        ordinary.append(_ok(bank.post("/v1/transfers", json={
            "debit_account_id": cid, "credit_account_id": customers[(i + 1) % len(customers)], "amount": 2_000 + 100 * i,
            "currency": "EUR"}))["id"])
    victim = customers[5]
    mule = account()
    available = _ok(bank.get(f"/v1/accounts/{victim}"))["available"]
    drain = _ok(bank.post("/v1/transfers", json={"debit_account_id": victim, "credit_account_id": mule,
                                                 "amount": available * 96 // 100, "currency": "EUR"}))["id"]

    drained = _assessment(bank, drain)
    scores = [_assessment(bank, t)["score"] for t in ordinary]
    assert drained["score"] > max(scores), (drained, max(scores))
    assert drained["level"] in ("elevated", "high") and drained["reasons"] and drained["model_version"].startswith("m-")
    assert set(drained["features"]) >= {"share_of_available", "new_payee", "velocity_1h"}
    # Shown as the tenant knows it: its public id; the storage key is not part of a banking answer.
    tenant = drained["tenant"]
    assert drained["transfer_id"] == drain and tenant.startswith("tenant-a-") and "key" not in drained
    key = str(transfer_key(tenant, UUID(drain)))
    assert key not in bank.get(f"/v1/fraud/assessments/{drain}").text

    # Tenancy: the other tenant's answer is the answer for an id nobody uses, byte for byte (ids masked).
    other = api.client("bank_b")
    assert _masked(other.get(f"/v1/fraud/assessments/{drain}")) == _masked(other.get(f"/v1/fraud/assessments/{uuid4()}"))
    assert other.get(f"/v1/fraud/assessments/{drain}").status_code == 404
    assert other.get(f"/v1/fraud/assessments/{drain}").json()["code"] == "not_found"
    # A banking key's ids live in its own tenant: naming another one finds nothing, whatever the id.
    assert bank.get(f"/v1/fraud/assessments/{drain}", params={"tenant": tenant}).json()["score"] == drained["score"]
    for who, t in (("bank_a", "tenant-b-x"), ("bank_b", tenant)):
        r = api.client(who).get(f"/v1/fraud/assessments/{drain}", params={"tenant": t})
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        assert _masked(r) == _masked(api.client(who).get(f"/v1/fraud/assessments/{uuid4()}", params={"tenant": t}))

    # Analysts: by public id (one tenant uses it), by tenant + public id, by storage key; all the same.
    analyst = api.client("analyst")
    seen = [_ok(analyst.get(f"/v1/fraud/assessments/{drain}")),
            _ok(analyst.get(f"/v1/fraud/assessments/{drain}", params={"tenant": tenant})),
            _ok(analyst.get(f"/v1/fraud/assessments/{key}"))]
    for body in seen:
        assert (body["transfer_id"], body["tenant"], body["key"], body["score"]) == (drain, tenant, key, drained["score"])
    assert analyst.get(f"/v1/fraud/assessments/{drain}", params={"tenant": "someone-else"}).status_code == 404
    assert analyst.get(f"/v1/fraud/assessments/{key}", params={"tenant": tenant}).status_code == 404  # a key is no public id
    for bad in ("", "a b", "x" * 65, "-leading-dash"):
        r = analyst.get(f"/v1/fraud/assessments/{drain}", params={"tenant": bad})
        assert r.status_code == 422 and r.json()["code"] == "validation_error", (bad, r.text)

    # Roles.
    assert api.client("auditor").get(f"/v1/fraud/assessments/{drain}").status_code == 403
    assert bank.get("/v1/fraud/alerts").status_code == 403
    assert analyst.get("/v1/fraud/assessments/not-a-uuid").json()["code"] == "validation_error"
    missing = analyst.get(f"/v1/fraud/assessments/{uuid4()}")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_a_public_id_used_by_two_tenants_needs_a_tenant_for_analysts(api: Api) -> None:
    shared = str(uuid4())  # clients choose their transfer ids: two tenants may choose the same
    tenants = {}
    for who in ("bank_a", "bank_b"):
        c = api.client(who)
        acct = _ok(c.post("/v1/accounts", json={"currency": "EUR"}))["id"]
        t = _ok(c.post("/v1/deposits", json={"id": shared, "account_id": acct, "amount": 1_000 + len(tenants), "currency": "EUR"}))
        assert t["id"] == shared
        body = _assessment(c, shared)
        assert body["transfer_id"] == shared
        tenants[who] = body["tenant"]
    assert tenants["bank_a"] != tenants["bank_b"]
    analyst = api.client("analyst")
    r = analyst.get(f"/v1/fraud/assessments/{shared}")
    assert r.status_code == 422 and r.json()["code"] == "validation_error" and r.json()["field"] == "tenant", r.text
    assert "tenant" in r.json()["detail"]
    for who, tenant in tenants.items():
        body = _ok(analyst.get(f"/v1/fraud/assessments/{shared}", params={"tenant": tenant}))
        assert body["tenant"] == tenant and body["key"] == str(transfer_key(tenant, UUID(shared)))
        assert _ok(analyst.get(f"/v1/fraud/assessments/{body['key']}"))["tenant"] == tenant
        assert _ok(api.client(who).get(f"/v1/fraud/assessments/{shared}"))["tenant"] == tenant


def test_alerts_are_listed_and_reviewed_once(api: Api) -> None:
    bank, analyst = api.bank, api.client("analyst")
    victim = _ok(bank.post("/v1/accounts", json={"currency": "EUR"}))["id"]
    _ok(bank.post("/v1/deposits", json={"account_id": victim, "amount": 3_000_000, "currency": "EUR"}))
    # Card testing: a burst of tiny payments from one account to fresh payees, then a drain.
    payees = [_ok(bank.post("/v1/accounts", json={"currency": "EUR"}))["id"] for _ in range(3)]
    last = None
    for i in range(12):
        last = _ok(bank.post("/v1/transfers", json={"debit_account_id": victim, "credit_account_id": payees[i % 3],
                                                    "amount": 100 + i, "currency": "EUR"}))["id"]
    assert last is not None
    _assessment(bank, last)
    deadline = time.monotonic() + SCORED_WAIT_S
    while not (alerts := _ok(analyst.get("/v1/fraud/alerts", params={"status": "open", "limit": 500}))["items"]):
        assert time.monotonic() < deadline, "no alert was opened"
        time.sleep(0.2)
    alert = alerts[0]
    assert alert["status"] == "open" and 0.0 <= alert["score"] <= 1.0 and alert["reasons"]
    # The alert shows the transfer as its tenant knows it (public id, tenant), and its storage key.
    assert alert["key"] == str(transfer_key(alert["tenant"], UUID(alert["transfer_id"])))
    assessed = _ok(analyst.get(f"/v1/fraud/assessments/{alert['key']}"))
    assert (assessed["transfer_id"], assessed["tenant"], assessed["score"]) == (alert["transfer_id"], alert["tenant"], alert["score"])
    bad = analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "maybe"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    assert bank.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "fraud"}).status_code == 403
    reviewed = _ok(analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "fraud", "note": "card testing"}))
    assert reviewed["status"] == "reviewed" and reviewed["label"] == "fraud"
    assert (reviewed["transfer_id"], reviewed["tenant"], reviewed["key"]) == (alert["transfer_id"], alert["tenant"], alert["key"])
    again = analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "legit"})
    assert again.status_code == 409 and again.json()["code"] == "alert_already_reviewed"
    assert alert["id"] in {a["id"] for a in _ok(analyst.get("/v1/fraud/alerts", params={"status": "reviewed"}))["items"]}
    assert analyst.get("/v1/fraud/alerts", params={"status": "bogus"}).status_code == 422
    assert analyst.post(f"/v1/fraud/alerts/{uuid4()}/review", json={"label": "fraud"}).status_code == 404


def test_alert_pages_and_every_out_of_range_number_is_a_422(api: Api) -> None:
    analyst = api.client("analyst")
    everything = _ok(analyst.get("/v1/fraud/alerts", params={"limit": 500}))  # the documented maximum
    assert everything["next_cursor"] is None or len(everything["items"]) == 500
    paged, cursor = [], None
    while True:
        page = _ok(analyst.get("/v1/fraud/alerts", params={"limit": 1, **({"cursor": cursor} if cursor else {})}))
        assert len(page["items"]) <= 1
        paged += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [a["id"] for a in paged] == [a["id"] for a in everything["items"]]
    assert _ok(analyst.get("/v1/fraud/alerts", params={"cursor": str(2**63 - 1)})) == {"items": [], "next_cursor": None}
    bad = [{"limit": v} for v in ("0", "501", "-1", str(10**30), "1.5", "abc", "")]
    bad += [{"cursor": v} for v in ("-1", "abc", "1e3", "1" * 20, str(2**63), "\u0661", " 1")]
    for params in bad:
        r = analyst.get("/v1/fraud/alerts", params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
        assert r.json()["code"] == "validation_error" and r.headers["content-type"].startswith("application/problem+json")


def test_the_openapi_document_matches_the_routes(api: Api) -> None:
    doc = httpx.get(api.server.base_url + "/schema/openapi.json").json()
    get_assessment = doc["paths"]["/v1/fraud/assessments/{transfer_id}"]["get"]
    params = {p["name"]: p for p in get_assessment["parameters"]}
    assert params["tenant"]["in"] == "query" and not params["tenant"].get("required", False)
    assert "storage key" in params["tenant"]["description"] and "tenant" in get_assessment["description"]
    assert {"200", "202", "404", "422"} <= set(get_assessment["responses"])
    assert "pending" in get_assessment["description"]
    alerts = doc["paths"]["/v1/fraud/alerts"]["get"]
    limit = next(p for p in alerts["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 500)


def test_keel_simulate_drives_the_api_in_its_request_shapes(api: Api) -> None:
    from fraud.dataset import SimTransfer
    from fraud.drive import drive_api
    from fraud.simulate import SimConfig, simulate

    records = simulate(SimConfig(seed=31, customers=12, days=2, takeovers=2000.0))
    result = drive_api(records, api.server.base_url, api.tokens["bank_a"], rate_per_s=1000)
    assert result.refused == {} and result.transfers == sum(isinstance(r, SimTransfer) for r in records)
    last = next(r for r in reversed(records) if isinstance(r, SimTransfer))
    assert _ok(api.bank.get(f"/v1/transfers/{last.transfer_id}"))["amount"] == last.amount_minor
    assessed = _assessment(api.bank, str(last.transfer_id))
    assert 0.0 <= assessed["score"] <= 1.0 and assessed["transfer_id"] == str(last.transfer_id)


@pytest.mark.postgres
def test_pending_until_the_fraud_worker_scores_it_on_postgres(
    tmp_path: Path, pg_session_schemas: list[str], model_dir: Path
) -> None:
    """On PostgreSQL the fraud consumer is its own worker (SPEC §10); until it runs, a transfer is
    pending (202) for the tenant that owns it and for analysts, and still 404 for any other tenant."""
    api = start_pg_api(tmp_path, pg_session_schemas)  # no fraud worker yet
    worker = None
    try:
        bank, other, analyst = api.bank, api.client("bank_b"), api.client("analyst")
        acct = _ok(bank.post("/v1/accounts", json={"currency": "EUR"}))["id"]
        tid = _ok(bank.post("/v1/deposits", json={"account_id": acct, "amount": 5_000, "currency": "EUR"}))["id"]
        r = bank.get(f"/v1/fraud/assessments/{tid}")
        assert r.status_code == 202 and r.headers["retry-after"] == "1", r.text
        pending = r.json()
        assert pending["status"] == "pending" and pending["transfer_id"] == tid and "key" not in pending
        tenant = pending["tenant"]
        key = str(transfer_key(tenant, UUID(tid)))
        # Another tenant learns nothing: exactly the answer for an id nobody uses.
        assert _masked(other.get(f"/v1/fraud/assessments/{tid}")) == _masked(other.get(f"/v1/fraud/assessments/{uuid4()}"))
        assert other.get(f"/v1/fraud/assessments/{tid}").status_code == 404
        for params, path_id in (({"tenant": tenant}, tid), ({}, key)):
            r = analyst.get(f"/v1/fraud/assessments/{path_id}", params=params)
            assert r.status_code == 202 and r.json()["key"] == key and r.json()["tenant"] == tenant, r.text
        # No such transfer is a 404 for everyone.
        for c in (bank, analyst):
            r = c.get(f"/v1/fraud/assessments/{uuid4()}")
            assert r.status_code == 404 and r.json()["code"] == "not_found"

        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env.update(KEEL_DATABASE_URL=api.settings.database_url, KEEL_DATABASE_SCHEMA=api.settings.database_schema,
                   KEEL_FRAUD_MODEL_DIR=str(model_dir), KEEL_LOG_LEVEL="WARNING")
        if api.settings.holder_kek:  # as the server's (the e2e fixture gives PostgreSQL servers one)
            env["KEEL_HOLDER_KEK"] = api.settings.holder_kek
        worker = subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "fraud"], env=env)  # noqa: S603
        scored = _assessment(bank, tid)
        assert scored["transfer_id"] == tid and scored["tenant"] == tenant
        assert _ok(analyst.get(f"/v1/fraud/assessments/{tid}"))["key"] == key  # now by public id alone, too
        assert _masked(other.get(f"/v1/fraud/assessments/{tid}")) == _masked(other.get(f"/v1/fraud/assessments/{uuid4()}"))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(15)
        api.close()
