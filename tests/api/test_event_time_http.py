"""Event time over HTTP (issue #15): `occurred_at` is accepted with an offset, bounded (422 with
the field named), shown beside the recording time, and a transfer with another occurred_at under
the same id is another request."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from litestar.testing import TestClient

from api.app import create_app
from infrastructure.keys import new_key
from keel.bootstrap import build
from tests.conftest import fresh_sqlite_settings


def test_occurred_at_over_http(tmp_path: Path) -> None:
    container = build(fresh_sqlite_settings(tmp_path))
    key, token = new_key("banking", "acme")
    container.keys.add(key)
    auth = {"Authorization": f"Bearer {token}"}
    now = datetime.now(tz=timezone.utc)
    opened = (now - timedelta(days=10)).isoformat()
    with TestClient(create_app(container, on_shutdown=[container.close])) as client:
        a = client.post("/v1/accounts", json={"currency": "EUR", "occurred_at": opened}, headers=auth).json()["id"]
        b = client.post("/v1/accounts", json={"currency": "EUR", "occurred_at": opened}, headers=auth).json()["id"]
        dep = client.post("/v1/deposits", json={"account_id": a, "amount": 1000, "currency": "EUR",
                                                "occurred_at": (now - timedelta(days=9)).isoformat()}, headers=auth)  # fmt: skip
        assert dep.status_code == 201, dep.text
        when = now - timedelta(days=8)
        body = {"id": str(uuid.uuid4()), "debit_account_id": a, "credit_account_id": b, "amount": 10, "currency": "EUR",
                "occurred_at": when.astimezone(timezone(timedelta(hours=2))).isoformat()}  # fmt: skip
        r = client.post("/v1/transfers", json=body, headers=auth)
        assert r.status_code == 201, r.text
        shown = r.json()
        assert datetime.fromisoformat(shown["occurred_at"]) == when
        assert shown["created_at"] > shown["occurred_at"]
        got = client.get(f"/v1/transfers/{body['id']}", headers=auth).json()
        assert got["occurred_at"] == shown["occurred_at"]

        for bad, code, why in (
            ((now + timedelta(hours=1)).isoformat(), "event_time_out_of_range", "in the future"),
            ((now - timedelta(days=11)).isoformat(), "event_time_out_of_range", "before the accounts were opened"),
            ((now - timedelta(days=8, hours=2)).isoformat(), "event_time_out_of_range", "far out of order"),
            ("2026-03-02T09:00:00", "validation_error", "no offset"),
            ("yesterday", "validation_error", "not a time"),
        ):
            r = client.post("/v1/transfers", json={**body, "id": str(uuid.uuid4()), "occurred_at": bad}, headers=auth)
            assert r.status_code == 422 and r.json()["code"] == code, (why, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "occurred_at" in r.text, why
        # The same id with another event time is another request: 409, never the original.
        r = client.post("/v1/transfers", json={**body, "occurred_at": (when + timedelta(seconds=1)).isoformat()}, headers=auth)
        assert r.status_code == 409 and r.json()["code"] == "exists_with_different_fields"
