"""One wire format (issue #14): one problem shape for every validation failure, ISO 4217
currencies, `pending` only while pending (plus `status`, `two_phase`), a second reverse is 409,
the same balance names on every route, and a store that is not migrated answers 503, never 500."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.currencies import ISO_4217_MINOR_UNITS
from infrastructure.keys import new_key
from infrastructure.settings import load_settings
from keel.bootstrap import build
from tests.conftest import fresh_sqlite_settings

TENANT = "acme"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    settings = fresh_sqlite_settings(tmp_path_factory.mktemp("wire"), rate_limit_per_s=0)
    container = build(settings)
    headers = {}
    for role in ("banking", "auditor"):
        key, token = new_key(role, TENANT if role == "banking" else None)
        container.keys.add(key)
        headers[role] = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(container)) as c:
        yield c, headers
    container.close()


def _account(c: TestClient, h: dict[str, str], currency: str = "EUR", deposit: int = 0) -> str:
    r = c.post("/v1/accounts", json={"currency": currency}, headers=h)
    assert r.status_code == 201, r.text
    if deposit:
        assert c.post("/v1/deposits", json={"account_id": r.json()["id"], "amount": deposit, "currency": currency},
                      headers=h).status_code == 201  # fmt: skip
    return r.json()["id"]


def _validation(r: Any) -> list[dict[str, str]]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (body["code"], body["title"]) == ("validation_error", "Validation error"), body
    assert body["errors"] and all(set(e) == {"field", "message"} for e in body["errors"]), body
    return body["errors"]


def test_every_validation_failure_has_one_shape_and_names_the_field_as_sent(client: Any) -> None:
    c, h = client
    a = _account(c, h["banking"])
    b = _account(c, h["banking"])
    move = {"debit_account_id": a, "credit_account_id": b, "currency": "EUR"}
    cases = [
        ("/v1/transfers", {**move, "amount": 2500.0}, "amount"),  # was a bare `detail` string
        ("/v1/transfers", {**move, "amount": 25.5}, "amount"),
        ("/v1/transfers", {**move, "amount": "2500"}, "amount"),
        ("/v1/deposits", {"account_id": a, "amount": 2500.0, "currency": "EUR"}, "amount"),
        ("/v1/accounts", {}, "currency"),  # was reported as `"key": "data"`
        ("/v1/accounts", {"currency": "EUR", "colour": "red"}, "colour"),
        ("/v1/accounts", {"currency": "EUR", "holder": {}}, "holder.name"),
        ("/v1/transfers/batch", {"transfers": [{**move, "amount": 1}, {**move, "amount": 1.5}]}, "transfers[1].amount"),
        (f"/v1/transfers/{uuid.uuid4()}/post", {"amount": 2.5}, "amount"),
    ]
    for path, body, field in cases:
        errors = _validation(c.post(path, json=body, headers=h["banking"]))
        assert errors[0]["field"] == field, (path, body, errors)
        assert "data" not in {e["field"] for e in errors}
    float_message = _validation(c.post("/v1/transfers", json={**move, "amount": 2500.0}, headers=h["banking"]))
    assert "float" in float_message[0]["message"]
    assert _validation(c.get("/v1/accounts?limit=100000", headers=h["banking"]))[0]["field"] == "limit"
    assert _validation(c.get("/v1/accounts/not-a-uuid", headers=h["banking"]))[0]["field"] == "account_id"


def test_currencies_are_iso_4217(client: Any) -> None:
    c, h = client
    for bad in ("XYZ", "ABC", "eur", "EURO", "XXX"):
        errors = _validation(c.post("/v1/accounts", json={"currency": bad}, headers=h["banking"]))
        assert errors[0]["field"] == "currency", errors
    assert "ISO 4217" in _validation(c.post("/v1/accounts", json={"currency": "XYZ"}, headers=h["banking"]))[0]["message"]
    for good in ("EUR", "JPY", "KWD", "CHF"):
        _account(c, h["banking"], good)
    assert ISO_4217_MINOR_UNITS["JPY"] == 0 and ISO_4217_MINOR_UNITS["KWD"] == 3 and ISO_4217_MINOR_UNITS["EUR"] == 2


def test_pending_means_pending_and_status_carries_the_lifecycle(client: Any) -> None:
    c, h = client
    a, b = _account(c, h["banking"], deposit=1_000), _account(c, h["banking"])
    move = {"debit_account_id": a, "credit_account_id": b, "currency": "EUR", "amount": 10}
    held = c.post("/v1/transfers", json={**move, "pending": True}, headers=h["banking"]).json()
    assert (held["status"], held["pending"], held["two_phase"]) == ("pending", True, True)
    posted = c.post(f"/v1/transfers/{held['id']}/post", headers=h["banking"]).json()
    assert (posted["status"], posted["pending"], posted["two_phase"]) == ("posted", False, True)
    voided_hold = c.post("/v1/transfers", json={**move, "pending": True}, headers=h["banking"]).json()
    voided = c.post(f"/v1/transfers/{voided_hold['id']}/void", headers=h["banking"]).json()
    assert (voided["status"], voided["pending"], voided["two_phase"]) == ("voided", False, True)
    plain = c.post("/v1/transfers", json=move, headers=h["banking"]).json()
    assert (plain["status"], plain["pending"], plain["two_phase"]) == ("posted", False, False)
    assert c.get(f"/v1/transfers/{held['id']}", headers=h["banking"]).json()["pending"] is False


def test_a_second_reverse_is_409_already_reversed(client: Any) -> None:
    c, h = client
    a, b = _account(c, h["banking"], deposit=1_000), _account(c, h["banking"])
    t = c.post("/v1/transfers", json={"debit_account_id": a, "credit_account_id": b, "currency": "EUR", "amount": 10},
               headers=h["banking"]).json()  # fmt: skip
    first = c.post(f"/v1/transfers/{t['id']}/reverse", headers=h["banking"])
    assert first.status_code == 201, first.text
    again = c.post(f"/v1/transfers/{t['id']}/reverse", headers=h["banking"])
    assert again.status_code == 409 and again.json()["code"] == "already_reversed", again.text
    assert again.json()["reversal_id"] == first.json()["id"]
    # With the same Idempotency-Key the stored 201 is replayed instead.
    keyed = {**h["banking"], "Idempotency-Key": "rev-1"}
    t2 = c.post("/v1/transfers", json={"debit_account_id": a, "credit_account_id": b, "currency": "EUR", "amount": 10},
                headers=h["banking"]).json()  # fmt: skip
    r1 = c.post(f"/v1/transfers/{t2['id']}/reverse", headers=keyed)
    r2 = c.post(f"/v1/transfers/{t2['id']}/reverse", headers=keyed)
    assert (r1.status_code, r2.status_code, r2.headers.get("Idempotent-Replayed")) == (201, 201, "true")


def test_balances_have_the_same_names_on_every_route(client: Any) -> None:
    c, h = client
    a = _account(c, h["banking"], deposit=700)
    live = c.get(f"/v1/accounts/{a}", headers=h["banking"]).json()
    at = c.get(f"/v1/audit/accounts/{a}/balance?version=2&tenant={TENANT}", headers=h["auditor"])
    assert at.status_code == 200, at.text
    names = {"posted", "pending_debits", "pending_credits", "available"}
    assert names <= set(live) and names <= set(at.json()), at.json()
    assert not any(k.endswith("_minor") for k in at.json())
    assert at.json()["posted"] == live["posted"] == 700


def _unmigrated_app_answers(settings: Any) -> None:
    container = build(settings)
    try:
        with TestClient(create_app(container)) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["code"] == "not_migrated", ready.text
            assert "not migrated" in ready.json()["detail"] and "keel migrate" in ready.json()["detail"]
            bad = c.get("/v1/accounts", headers={"Authorization": "Bearer keel_0123456789abcdef_nope"})
            assert bad.status_code == 503 and bad.json()["code"] == "not_migrated", bad.text
    finally:
        container.close()


def test_an_unmigrated_sqlite_store_is_not_ready_and_never_500(tmp_path: Any) -> None:
    _unmigrated_app_answers(load_settings({}, database_url=f"sqlite:///{tmp_path}/never-migrated.db"))


@pytest.mark.postgres
def test_an_unmigrated_postgres_store_is_not_ready_and_never_500(pg_session_schemas: list[str]) -> None:
    from tests.conftest import PG_DSN, TEST_HOLDER_KEK, require_postgres

    require_postgres()
    schema = f"keel_test_unmigrated_{uuid.uuid4().hex[:8]}"
    pg_session_schemas.append(schema)
    _unmigrated_app_answers(
        load_settings({}, database_url=PG_DSN, database_schema=schema, holder_kek=TEST_HOLDER_KEK)
    )
