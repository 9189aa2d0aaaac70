"""End to end through HTTP: a real `keel serve` (embedded SQLite, fraud worker in process) sees
ordinary customers and one takeover drain; the drain outranks every ordinary payment, and the
fraud routes honour roles and tenancy."""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.e2e.conftest import Api, start_sqlite_api

SCORED_WAIT_S = 60.0


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


def _assessment(client: httpx.Client, transfer_id: str) -> dict:
    deadline = time.monotonic() + SCORED_WAIT_S
    while True:
        r = client.get(f"/v1/fraud/assessments/{transfer_id}")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        assert time.monotonic() < deadline, "the transfer was not scored in time"
        time.sleep(0.1)


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
    assert set(drained["features"]) >= {"share_of_available", "new_counterparty", "velocity_1h"}

    # Tenancy and roles: the other tenant cannot see it; analysts can; auditors may not.
    assert api.client("bank_b").get(f"/v1/fraud/assessments/{drain}").status_code == 404
    assert api.client("analyst").get(f"/v1/fraud/assessments/{drain}").json()["score"] == drained["score"]
    assert api.client("auditor").get(f"/v1/fraud/assessments/{drain}").status_code == 403
    assert bank.get("/v1/fraud/alerts").status_code == 403
    assert api.client("analyst").get("/v1/fraud/assessments/not-a-uuid").json()["code"] == "validation_error"
    assert api.client("analyst").get(f"/v1/fraud/assessments/{uuid4()}").status_code == 404


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
    while not (alerts := _ok(analyst.get("/v1/fraud/alerts", params={"status": "open"}))["items"]):
        assert time.monotonic() < deadline, "no alert was opened"
        time.sleep(0.2)
    alert = alerts[0]
    assert alert["status"] == "open" and 0.0 <= alert["score"] <= 1.0 and alert["reasons"]
    bad = analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "maybe"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    assert bank.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "fraud"}).status_code == 403
    reviewed = _ok(analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "fraud", "note": "card testing"}))
    assert reviewed["status"] == "reviewed" and reviewed["label"] == "fraud"
    again = analyst.post(f"/v1/fraud/alerts/{alert['id']}/review", json={"label": "legit"})
    assert again.status_code == 409 and again.json()["code"] == "alert_already_reviewed"
    assert alert["id"] in {a["id"] for a in _ok(analyst.get("/v1/fraud/alerts", params={"status": "reviewed"}))["items"]}
    assert analyst.get("/v1/fraud/alerts", params={"status": "bogus"}).status_code in (400, 422)
    assert analyst.post(f"/v1/fraud/alerts/{uuid4()}/review", json={"label": "fraud"}).status_code == 404


def test_keel_simulate_drives_the_api_in_its_request_shapes(api: Api) -> None:
    from fraud.drive import drive_api
    from fraud.simulate import SimConfig, SimTransfer, simulate

    records = simulate(SimConfig(seed=31, customers=12, days=2, takeovers=2000.0))
    result = drive_api(records, api.server.base_url, api.tokens["bank_a"], rate_per_s=1000)
    assert result.refused == {} and result.transfers == sum(isinstance(r, SimTransfer) for r in records)
    last = next(r for r in reversed(records) if isinstance(r, SimTransfer))
    assert _ok(api.bank.get(f"/v1/transfers/{last.transfer_id}"))["amount"] == last.amount_minor
    assert 0.0 <= _assessment(api.bank, str(last.transfer_id))["score"] <= 1.0
