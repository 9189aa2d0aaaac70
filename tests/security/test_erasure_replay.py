"""Erasure that erases, through the API (issue #12, finding 6).

A probe erased a holder, then replayed the original `POST /v1/accounts` with its Idempotency-Key
and got the holder's name and email back from the stored response. Stored responses now keep the
holder sealed and reveal it when sent: after the erasure the replay says `{"erased": true}`, and
no stored row holds the plaintext at any time.
"""
from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from api.app import create_app
from infrastructure.keys import new_key
from infrastructure.settings import Settings
from keel.bootstrap import build
from tests.conftest import PG_DSN

HOLDER = {"name": "Zelda Unique-Name", "email": "zelda.unique@example.org"}


def _stored_rows(settings: Settings) -> list[bytes]:
    """Every stored idempotent response body, read from the database directly."""
    if settings.is_postgres:
        with psycopg.connect(PG_DSN) as conn:
            rows = conn.execute(f'SELECT answer FROM "{settings.database_schema}".keel_idempotency').fetchall()
    else:
        import sqlite3

        with sqlite3.connect(settings.sqlite_path) as conn:
            rows = conn.execute("SELECT answer FROM keel_idempotency").fetchall()
    return [bytes(r[0]) for r in rows]


def test_a_replay_after_erasure_shows_the_holder_erased(settings: Settings) -> None:
    container = build(settings)
    store = container.keys
    bank, bank_token = new_key("banking", "erase-t")
    admin, admin_token = new_key("admin", None)
    store.add(bank)
    store.add(admin)
    headers: dict[str, Any] = {"Authorization": f"Bearer {bank_token}", "Idempotency-Key": f"open-{uuid.uuid4()}"}
    body = {"currency": "EUR", "holder": HOLDER}
    with TestClient(create_app(container, on_shutdown=[container.close])) as client:
        first = client.post("/v1/accounts", json=body, headers=headers)
        assert first.status_code == 201 and first.json()["holder"] == HOLDER
        replay = client.post("/v1/accounts", json=body, headers=headers)
        assert replay.headers.get("idempotent-replayed") == "true" and replay.json()["holder"] == HOLDER
        assert all(HOLDER["name"].encode() not in b and b"zelda.unique" not in b for b in _stored_rows(settings))

        account_id = first.json()["id"]
        erased = client.delete(
            f"/v1/accounts/{account_id}/holder", params={"tenant": "erase-t"}, headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert erased.status_code == 200, erased.text
        after = client.post("/v1/accounts", json=body, headers=headers)
        assert after.status_code == 201 and after.headers.get("idempotent-replayed") == "true"
        assert after.json()["holder"] == {"erased": True}
        assert HOLDER["name"] not in after.text and "zelda.unique" not in after.text
        got = client.get(f"/v1/accounts/{account_id}", headers={"Authorization": f"Bearer {bank_token}"})
        assert got.json()["holder"] == {"erased": True}


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/accounts"])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(settings: Settings, path: str) -> None:
    """Finding 7: the fast path waited for 64 KiB of a body that declared 10 MB; both paths now
    answer 413 from Content-Length alone."""
    import socket
    import threading

    import uvicorn

    container = build(settings)
    key, token = new_key("banking", "big-t")
    container.keys.add(key)
    app = create_app(container, on_shutdown=[container.close])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        import httpx

        # A first request puts the key in the cache, so POST /v1/transfers takes the fast path.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{"
            )
            conn.sendall(head.encode())
            conn.settimeout(5)  # the answer must come without the rest of the body
            answer = conn.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert "payload_too_large" in answer
    finally:
        server.should_exit = True
        thread.join(10)
