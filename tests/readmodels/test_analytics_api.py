"""The analyst routes and the read-model history route through HTTP (Litestar TestClient,
real stores, the projection worker running), on SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import csv
import io
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.routes_analytics import csv_cell
from domain.identity import settlement_public_id
from infrastructure.readside import encode_cursor
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from infrastructure.projection_worker import ProjectionWorker
from tests.e2e.server import auth, make_token


# PostgreSQL has no holder key-encryption key of its own (the embedded store makes one).
PG_HOLDER_KEK = "hreadmodels:" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Container]]:
    # These tests send many requests with one key: no rate limit.
    settings = msgspec.structs.replace(
        settings, rate_limit_per_s=0, holder_kek=settings.holder_kek or (PG_HOLDER_KEK if settings.is_postgres else None)
    )
    container = build(settings)
    worker = ProjectionWorker(container.ledger, container.store.read_models, container.store.open_log_waiter)
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


def test_history_is_resolved_inside_the_callers_tenant(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    """A client's account id is a public id of its own tenant: another tenant's account answers
    exactly like a random id, and the same public id in two tenants is two accounts."""
    tc, tok, _ = client
    bank, bank_b, analyst = tok["bank"], tok["bank_b"], tok["analyst"]
    a = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=bank))["id"]
    dep = ok(tc.post("/v1/deposits", json={"account_id": a, "amount": 500, "currency": "EUR"}, headers=bank))
    mine = ok(tc.get(f"/v1/accounts/{a}/transactions", headers=bank))["items"]
    assert [(x["transfer_id"], x["account_id"], x["counterparty_id"], x["amount"]) for x in mine] == [
        (dep["id"], a, str(settlement_public_id("EUR")), 500)
    ]

    # Tenant B: `a` is not its account. Same status and the very same body as for a random id,
    # with any query; no id in it.
    for query in ({}, {"limit": 1}, {"cursor": encode_cursor(5)}):
        missing = tc.get(f"/v1/accounts/{uuid.uuid4()}/transactions", params=query, headers=bank_b)
        foreign = tc.get(f"/v1/accounts/{a}/transactions", params=query, headers=bank_b)
        problem(missing, 404, "not_found")
        assert (foreign.status_code, foreign.content, foreign.headers["content-type"]) == (
            missing.status_code, missing.content, missing.headers["content-type"]
        )
        assert a not in foreign.text

    # Tenant B opens an account with the same public id: its own account, its own history.
    assert ok(tc.post("/v1/accounts", json={"currency": "EUR", "id": a}, headers=bank_b))["id"] == a
    assert ok(tc.get(f"/v1/accounts/{a}/transactions", headers=bank_b))["items"] == []
    ok(tc.post("/v1/deposits", json={"account_id": a, "amount": 7, "currency": "EUR"}, headers=bank_b))
    assert [x["amount"] for x in ok(tc.get(f"/v1/accounts/{a}/transactions", headers=bank_b))["items"]] == [7]
    assert [x["amount"] for x in ok(tc.get(f"/v1/accounts/{a}/transactions", headers=bank))["items"]] == [500]

    # Analysts see both, each with its tenant; `tenant=` picks one.
    both = ok(tc.get("/v1/analytics/transactions", params={"account": a}, headers=analyst))["items"]
    assert sorted((t["tenant"], t["amount"], t["credit_account_id"]) for t in both) == [("tenant-a", 500, a), ("tenant-b", 7, a)]
    only_b = ok(tc.get("/v1/analytics/transactions", params={"account": a, "tenant": "tenant-b"}, headers=analyst))["items"]
    assert [(t["tenant"], t["amount"]) for t in only_b] == [("tenant-b", 7)]
    tenant_b = ok(tc.get("/v1/analytics/transactions", params={"tenant": "tenant-b"}, headers=analyst))["items"]
    assert [t["amount"] for t in tenant_b] == [7]
    accounts = ok(tc.get("/v1/analytics/balances", params={"currency": "EUR"}, headers=analyst))["accounts"]
    assert sorted((x["tenant"], x["posted"]) for x in accounts if x["id"] == a) == [("tenant-a", 500), ("tenant-b", 7)]
    top = ok(tc.get("/v1/analytics/top-accounts", params={"by": "inflow"}, headers=analyst))["items"]
    assert sorted((x["tenant"], x["inflow"]) for x in top if x["account_id"] == a) == [("tenant-a", 500), ("tenant-b", 7)]
    for bad in ("", "-x", "a" * 65, "a b", "t\x00"):
        problem(tc.get("/v1/analytics/transactions", params={"account": a, "tenant": bad}, headers=analyst), 422, "validation_error")


# Out of every signed 64-bit range, not a number, or empty: never a 500 (a probe once got 500s
# from cursors of 10^30 and -2^70: an OverflowError in the database driver).
HUGE = ["9999999999999999999", str(10**30), str(-(2**70))]
NOT_NUMBERS = [*HUGE, "abc", ""]
ROUTE_PARAMS = {
    "/v1/analytics/balances": ("cursor", "limit"),
    "/v1/analytics/volumes": ("from", "to"),
    "/v1/analytics/transactions": ("cursor", "limit", "min_amount", "max_amount", "from", "to"),
    "/v1/analytics/top-accounts": ("from", "to", "limit"),
}


def test_numbers_and_cursors_out_of_range_are_422(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    tc, tok, _ = client
    a = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=tok["bank"]))["id"]
    ok(tc.post("/v1/deposits", json={"account_id": a, "amount": 5, "currency": "EUR"}, headers=tok["bank"]))
    routes = [(f"/v1/accounts/{a}/transactions", "bank", ("cursor", "limit")),
              (f"/v1/accounts/{uuid.uuid4()}/transactions", "bank", ("cursor", "limit")),
              *((path, "analyst", params) for path, params in ROUTE_PARAMS.items())]  # fmt: skip
    for path, who, params in routes:
        for param in params:
            values = list(NOT_NUMBERS)
            if param == "cursor":
                # Well-formed cursors carrying an integer out of range (and a non-canonical key).
                values += [encode_cursor(int(v)) for v in HUGE] + [encode_cursor(2**63), encode_cursor(-(2**63) - 1)]
                values += [encode_cursor("x\x00"), encode_cursor(True), encode_cursor(1.5)]
            for value in values:
                r = tc.get(path, params={param: value}, headers=tok[who])
                assert r.status_code == 422, (path, param, value, r.status_code, r.text)
                assert r.json()["code"] == "validation_error", (path, param, value, r.text)
                assert r.headers["content-type"].startswith("application/problem+json"), (path, param, value)
    # ... and the CSV export alike.
    for param in ROUTE_PARAMS["/v1/analytics/transactions"]:
        for value in NOT_NUMBERS:
            r = tc.get("/v1/analytics/transactions", params={param: value}, headers={**tok["analyst"], "Accept": "text/csv"})
            problem(r, 422, "validation_error")
    # The ends of the range are fine.
    for cursor in (encode_cursor(2**63 - 1), encode_cursor(-(2**63))):
        ok(tc.get(f"/v1/accounts/{a}/transactions", params={"cursor": cursor}, headers=tok["bank"]))
        ok(tc.get("/v1/analytics/transactions", params={"cursor": cursor}, headers=tok["analyst"]))
    ok(tc.get("/v1/analytics/transactions", params={"min_amount": 2**63 - 1, "max_amount": 2**63 - 1}, headers=tok["analyst"]))
    problem(tc.get("/v1/analytics/transactions", params={"max_amount": 2**63}, headers=tok["analyst"]), 422, "validation_error")


FORMULAS = ['=HYPERLINK("http://x","click")', "+1+1", "-2+3", "@SUM(A1:A2)", "\tTAB", "\rCR"]
# Harmless as cells; the last two would start a new row with a formula cell if a line break
# inside a cell were not quoted.
HARMLESS = ["plain", "a=b", " =spaced", "'quoted", "x\r=1+1", "y\n@SUM(A1)"]


def test_csv_export_neutralises_formula_cells(client: tuple[TestClient, dict[str, dict[str, str]], Container]) -> None:
    """OWASP CSV injection: a text cell that starts with = + - @ tab or CR is prefixed with '."""
    tc, tok, _ = client
    bank = tok["bank"]
    a = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=bank))["id"]
    b = ok(tc.post("/v1/accounts", json={"currency": "EUR"}, headers=bank))["id"]
    ok(tc.post("/v1/deposits", json={"account_id": a, "amount": 10_000, "currency": "EUR"}, headers=bank))
    references = [*FORMULAS, *HARMLESS]
    for i, reference in enumerate(references):
        ok(tc.post("/v1/transfers", json={"debit_account_id": a, "credit_account_id": b, "amount": i + 1,
                                          "currency": "EUR", "reference": reference}, headers=bank))  # fmt: skip
    assert len(ok(tc.get(f"/v1/accounts/{b}/transactions", headers=bank))["items"]) == len(references)  # projected

    r = tc.get("/v1/analytics/transactions", params={"account": b}, headers={**tok["analyst"], "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert len(rows) == len(references)
    shown = {int(row["amount"]): row["reference"] for row in rows}
    for i, reference in enumerate(references):
        assert shown[i + 1] == ("'" + reference if reference in FORMULAS else reference), (reference, shown[i + 1])
    for row in csv.reader(io.StringIO(r.text, newline="")):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (cell, row)
    # Numbers stay numbers; ids are the public ones.
    assert all(row["amount"].isdigit() and row["position"].isdigit() for row in rows)
    assert {row["credit_account_id"] for row in rows} == {b} and {row["tenant"] for row in rows} == {"tenant-a"}
    # JSON keeps the reference as it was sent.
    items = ok(tc.get("/v1/analytics/transactions", params={"account": b}, headers=tok["analyst"]))["items"]
    assert sorted(t["reference"] for t in items) == sorted(references)


def test_csv_cell() -> None:
    assert [csv_cell(v) for v in (None, 0, -5, 2**63 - 1, "", "x", "-5", "=1", "@a", "+", "\t", "\r\n")] == [
        "", 0, -5, 2**63 - 1, "", "x", "'-5", "'=1", "'@a", "'+", "'\t", "'\r\n"
    ]
