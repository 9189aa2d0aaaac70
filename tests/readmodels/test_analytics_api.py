"""The analyst routes and the read-model history route through HTTP (Litestar TestClient,
real stores, the projection worker running), on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from litestar.testing import TestClient

from api.app import create_app
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from keel.projections import ProjectionWorker
from tests.e2e.server import auth, make_token


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Container]]:
    container = build(settings)
    worker = ProjectionWorker(container)
    tokens = {
        "bank": auth(make_token(settings, "banking", "tenant-a")),
        "bank_b": auth(make_token(settings, "banking", "tenant-b")),
        "analyst": auth(make_token(settings, "analyst")),
    }
    app = create_app(container, on_startup=[worker.start], on_shutdown=[worker.stop])
    with TestClient(app) as tc:
        yield tc, tokens, container
    container.close()


def ok(r: Any) -> Any:
    assert r.status_code in (200, 201), r.text
    return r.json()


def problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text


def test_history_and_analytics_over_http(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    tc, tok, _ = client
    bank, analyst = tok["bank"], tok["analyst"]
    a = ok(tc.post("/v1/accounts", json={"currency": "EUR", "holder": {"name": "Ada Lovelace", "email": "ada@example.com"}}, headers=bank))["id"]
    b = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=bank))["id"]
    ok(tc.post("/v1/deposits", json={"account_id": a, "amount": 10_000, "currency": "EUR"}, headers=bank))
    amounts = [100 * (i + 1) for i in range(12)]
    for amount in amounts:
        t = ok(tc.post("/v1/transfers", json={"debit_account_id": a, "credit_account_id": b, "amount": amount,
                                               "currency": "EUR", "reference": f"r{amount}"}, headers=bank))  # fmt: skip
        # Read-your-writes: the history already holds the transfer just acknowledged.
        latest = ok(tc.get(f"/v1/accounts/{b}/transactions?limit=1", headers=bank))["items"][0]
        assert (latest["transfer_id"], latest["type"], latest["amount"]) == (t["id"], "credited", amount)

    # Newest first, pages neither overlap nor skip.
    seen, cursor = [], None
    while True:
        page = ok(tc.get(f"/v1/accounts/{a}/transactions", params={"limit": 5, **({"cursor": cursor} if cursor else {})}, headers=bank))
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [x["amount"] for x in seen] == [*reversed(amounts), 10_000]
    assert [x["direction"] for x in seen] == ["debit"] * 12 + ["credit"]
    assert seen[0]["counterparty_id"] == b and seen[0]["reference"] == "r1200"

    # Tenancy and roles: another tenant's account is 404; analysts use analytics only.
    problem(tc.get(f"/v1/accounts/{a}/transactions", headers=tok["bank_b"]), 404, "not_found")
    problem(tc.get("/v1/accounts/00000000-0000-0000-0000-000000000001/transactions", headers=bank), 404, "not_found")
    problem(tc.get(f"/v1/accounts/{a}/transactions", headers=analyst), 403, "forbidden")
    problem(tc.get("/v1/analytics/balances", headers=bank), 403, "forbidden")
    problem(tc.get("/v1/analytics/balances"), 401, "unauthorized")

    bodies = []
    bal = ok(tc.get("/v1/analytics/balances", params={"currency": "EUR"}, headers=analyst))
    bodies.append(bal)
    by_id = {x["id"]: x for x in bal["accounts"]}
    assert by_id[a]["posted"] == 10_000 - sum(amounts) and by_id[b]["posted"] == sum(amounts)
    assert sum(t["posted"] for t in bal["totals"]) == 0

    vol = ok(tc.get("/v1/analytics/volumes", params={"currency": "EUR", "interval": "hour"}, headers=analyst))
    bodies.append(vol)
    assert sum(v["amount"] for v in vol["items"]) == 10_000 + sum(amounts)
    assert sum(v["count"] for v in vol["items"]) == 13

    # Time filters: a window around now holds everything; one in the future holds nothing.
    now = datetime.now(tz=timezone.utc)
    around = {"from": (now - timedelta(hours=2)).isoformat(), "to": (now + timedelta(hours=2)).isoformat()}
    later = {"from": (now + timedelta(days=2)).isoformat(), "to": (now + timedelta(days=3)).isoformat()}
    for interval in ("hour", "day"):
        window = ok(tc.get("/v1/analytics/volumes", params={"interval": interval, **around}, headers=analyst))
        assert sum(v["amount"] for v in window["items"]) == 10_000 + sum(amounts)
        assert ok(tc.get("/v1/analytics/volumes", params={"interval": interval, **later}, headers=analyst))["items"] == []
    assert len(ok(tc.get("/v1/analytics/transactions", params={"limit": 100, **around}, headers=analyst))["items"]) == 13
    assert ok(tc.get("/v1/analytics/transactions", params=later, headers=analyst))["items"] == []
    assert ok(tc.get("/v1/analytics/top-accounts", params={"by": "outflow", **later}, headers=analyst))["items"] == []
    out_top = ok(tc.get("/v1/analytics/top-accounts", params={"by": "outflow", **around}, headers=analyst))["items"]
    assert out_top[0]["outflow"] == max(sum(amounts), 10_000)

    txs = ok(tc.get("/v1/analytics/transactions", params={"account": b, "min_amount": 500, "limit": 3}, headers=analyst))
    bodies.append(txs)
    assert [t["amount"] for t in txs["items"]] == [500, 600, 700] and txs["next_cursor"]
    more = ok(tc.get("/v1/analytics/transactions", params={"account": b, "min_amount": 500, "limit": 3, "cursor": txs["next_cursor"]}, headers=analyst))
    assert [t["amount"] for t in more["items"]] == [800, 900, 1000]

    r = tc.get("/v1/analytics/transactions", params={"max_amount": 300}, headers={**analyst, "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(int(x["amount"]) for x in rows) == [100, 200, 300]
    bodies.append(r.text)

    top = ok(tc.get("/v1/analytics/top-accounts", params={"by": "inflow", "limit": 2}, headers=analyst))
    bodies.append(top)
    assert top["items"][0]["inflow"] == max(10_000, sum(amounts))

    proj = ok(tc.get("/v1/analytics/projections", headers=analyst))
    assert proj["projections"][0]["name"] == "views" and proj["projections"][0]["position"] <= proj["head"]

    # Analysts never see holder personal data.
    assert "Ada" not in str(bodies) and "example.com" not in str(bodies)

    metrics = tc.get("/metrics").text
    assert 'keel_projection_lag_events{projection="views"}' in metrics and "keel_event_log_head" in metrics


BAD_FILTERS = [
    "/v1/analytics/volumes?interval=week",
    "/v1/analytics/volumes?from=yesterday",
    "/v1/analytics/volumes?from=2026-01-01T00:00:00",
    "/v1/analytics/volumes?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    "/v1/analytics/transactions?limit=0",
    "/v1/analytics/transactions?limit=1000000",
    "/v1/analytics/transactions?min_amount=-1",
    "/v1/analytics/transactions?min_amount=1.5",
    "/v1/analytics/transactions?min_amount=9&max_amount=1",
    "/v1/analytics/transactions?cursor=bm90LWEtY3Vyc29y",
    "/v1/analytics/transactions?account=not-a-uuid",
    "/v1/analytics/balances?currency=eur",
    "/v1/analytics/balances?cursor=%00",
    "/v1/analytics/top-accounts?by=sideways",
    "/v1/analytics/top-accounts?limit=101",
]


def test_bad_filters_are_validation_errors(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    tc, tok, _ = client
    for path in BAD_FILTERS:
        r = tc.get(path, headers=tok["analyst"])
        assert r.status_code in (400, 422), (path, r.text)
        assert r.json()["code"] == "validation_error", (path, r.text)


NASTY = ["¹", "\x00", "é" * 10, "=", "%%", "-1", "9" * 30, "djE", "WyJ2MSJd", "WyJ2MiIsMV0", "WyJ2MSIsMSwyXQ"]


def test_odd_cursors_and_ids_are_4xx(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    tc, tok, _ = client
    a = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=tok["bank"]))["id"]
    for value in NASTY:
        for path, who in (
            (f"/v1/accounts/{a}/transactions", "bank"),
            ("/v1/analytics/transactions", "analyst"),
            ("/v1/analytics/balances", "analyst"),
        ):
            r = tc.get(path, params={"cursor": value}, headers=tok[who])
            assert 400 <= r.status_code < 500, (path, value, r.text)
        r = tc.get(f"/v1/accounts/{quote(value, safe='')}/transactions", headers=tok["bank"])
        assert 400 <= r.status_code < 500, (value, r.text)
