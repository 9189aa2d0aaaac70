"""Hostile input through the real HTTP stack: each is a clean 4xx problem, never a 500 or a hang.

Oversized bodies, deeply nested JSON, huge and odd numbers, unicode in references, header
injection in Idempotency-Key, and rate-limit exhaustion. A refused request leaves no trace.
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Api, start_sqlite_api
from keel_tools.procs import ServerProcess

FORBIDDEN_TEXT = ("Traceback", "SELECT", "INSERT", "psycopg", "sqlite3", 'File "')


def clean_4xx(r: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == r.status_code and body["code"] and body["detail"]
    assert not any(t in r.text for t in FORBIDDEN_TEXT), r.text[:500]
    return body


def _pair(c: httpx.Client, funded: int = 1_000) -> tuple[str, str]:
    a = c.post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
    b = c.post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
    assert c.post("/v1/deposits", json={"account_id": a, "amount": funded, "currency": "EUR"}).status_code == 201
    return a, b


def _transfer(a: str, b: str, **fields: Any) -> dict[str, Any]:
    return {"debit_account_id": a, "credit_account_id": b, "amount": 10, "currency": "EUR", **fields}


def _posted(c: httpx.Client, account_id: str) -> int:
    return c.get(f"/v1/accounts/{account_id}").json()["posted"]


# ---- sizes -----------------------------------------------------------------------------------


def test_oversized_bodies_are_413(security_api: Api) -> None:
    c = security_api.bank
    a, b = _pair(c)
    big = _transfer(a, b, reference="x", metadata={"pad": "y" * (65 * 1024)})
    clean_4xx(c.post("/v1/transfers", json=big), 413)
    clean_4xx(c.post("/v1/accounts", content=b"{" + b" " * (70 * 1024) + b"}", headers={"content-type": "application/json"}), 413)
    # The batch route takes 1 MiB, not more.
    items = [_transfer(a, b, metadata={"pad": "z" * 1100}) for _ in range(1000)]
    clean_4xx(c.post("/v1/transfers/batch", json={"transfers": items}), 413)
    assert _posted(c, a) == 1_000


def test_too_many_batch_items_and_long_fields_are_422(security_api: Api) -> None:
    c = security_api.bank
    a, b = _pair(c)
    clean_4xx(c.post("/v1/transfers/batch", json={"transfers": [_transfer(a, b)] * 1001}), 422)
    clean_4xx(c.post("/v1/transfers", json=_transfer(a, b, reference="r" * 129)), 422)
    clean_4xx(c.post("/v1/accounts", json={"currency": "EUR", "metadata": {"k": "v" * 5000}}), 422)
    assert _posted(c, a) == 1_000


# ---- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [64, 1_000, 20_000])
def test_deeply_nested_json_is_rejected_cleanly(security_api: Api, depth: int) -> None:
    c = security_api.bank
    a, b = _pair(c)
    nested_obj = '{"a":' * depth + "1" + "}" * depth
    nested_arr = "[" * depth + "]" * depth
    for nested in (nested_obj, nested_arr):
        raw = json.dumps(_transfer(a, b, metadata={})).replace('"metadata": {}', f'"metadata": {{"deep": {nested}}}')
        r = c.post("/v1/transfers", content=raw.encode(), headers={"content-type": "application/json"})
        if len(raw) > 64 * 1024:
            clean_4xx(r, 413)
        elif r.status_code != 201:  # shallow enough and small enough may be stored as given
            clean_4xx(r, 422)
    raw = "[" * depth + "]" * depth
    clean_4xx(c.post("/v1/transfers", content=raw.encode(), headers={"content-type": "application/json"}), 413, 422)


@pytest.mark.parametrize(
    "amount",
    ["9223372036854775808", "1" + "0" * 400, "-1", "0", "1e3", "1.5", "2500.0", "1e309", "NaN", "Infinity", '"25"', "true", "null", "[]"],
)
def test_odd_numbers_are_422(security_api: Api, amount: str) -> None:
    c = security_api.bank
    a, b = _pair(c)
    raw = json.dumps(_transfer(a, b, amount=0)).replace('"amount": 0', f'"amount": {amount}')
    body = clean_4xx(c.post("/v1/transfers", content=raw.encode(), headers={"content-type": "application/json"}), 422)
    assert body["code"] == "validation_error"
    assert _posted(c, a) == 1_000


def test_max_amount_is_taken_and_overflow_is_refused(security_api: Api) -> None:
    c = security_api.client("bank_b")  # its own settlement account, untouched by other tests
    a = c.post("/v1/accounts", json={"currency": "USD"}).json()["id"]
    first = c.post("/v1/deposits", json={"account_id": a, "amount": 2**63 - 1, "currency": "USD"})
    assert first.status_code == 201, first.text
    again = c.post("/v1/deposits", json={"account_id": a, "amount": 1, "currency": "USD"})
    assert clean_4xx(again, 422)["code"] == "balance_overflow"
    assert c.get(f"/v1/accounts/{a}").json()["posted"] == 2**63 - 1


def test_deep_metadata_is_refused(security_api: Api) -> None:
    c = security_api.bank
    deep: dict[str, Any] = {}  # one level
    for _ in range(16):
        deep = {"a": deep}  # 17 levels: one more than METADATA_DEPTH_MAX
    assert clean_4xx(c.post("/v1/accounts", json={"currency": "EUR", "metadata": deep}), 422)["code"] == "validation_error"
    assert c.post("/v1/accounts", json={"currency": "EUR", "metadata": deep["a"]}).status_code == 201


def test_malformed_json_and_wrong_content_are_422(security_api: Api) -> None:
    c = security_api.bank
    for raw in (b"{", b"\xff\xfe\x00", b'{"currency": "EUR",}', b"\x00" * 10, "{\"currency\": \"\ud800\"}".encode("utf-8", "surrogatepass")):
        clean_4xx(c.post("/v1/accounts", content=raw, headers={"content-type": "application/json"}), 400, 422)


# ---- unicode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    ["Zahlung für Müller", "💸" * 128, "שלום‮evil", "zero​width", "tab\tand\nnewline", "<script>alert(1)</script>", "'; DROP TABLE x;--", "\x00nul"],
)
def test_unicode_references_round_trip_or_are_refused_cleanly(security_api: Api, reference: str) -> None:
    c = security_api.bank
    a, b = _pair(c)
    r = c.post("/v1/transfers", json=_transfer(a, b, reference=reference))
    if r.status_code == 201:
        assert r.json()["reference"] == reference
        assert c.get(f"/v1/transfers/{r.json()['id']}").json()["reference"] == reference
        assert _posted(c, a) == 990
    else:
        clean_4xx(r, 422)
        assert _posted(c, a) == 1_000


def test_reference_of_129_characters_is_refused(security_api: Api) -> None:
    c = security_api.bank
    a, b = _pair(c)
    clean_4xx(c.post("/v1/transfers", json=_transfer(a, b, reference="💸" * 129)), 422)


# ---- Idempotency-Key -------------------------------------------------------------------------


def _raw_post(api: Api, path: str, body: bytes, extra_header_lines: bytes) -> bytes:
    """A request written byte by byte, to send header values no HTTP client would."""
    token = api.tokens["bank_a"]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode() + extra_header_lines + b"\r\n"
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=10) as s:
        s.sendall(head + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "key_line",
    [
        b"Idempotency-Key: abc\r\nX-Injected: 1\r\n",  # a second header, which is fine HTTP
        b"Idempotency-Key: abc\nX-Injected: 2\r\n",  # bare LF
        b"Idempotency-Key: abc\rX-Injected: 3\r\n",  # bare CR
        b"Idempotency-Key: ab\x00c\r\n",
        b"Idempotency-Key: caf\xc3\xa9\r\n",
        b"Idempotency-Key: " + b"k" * 256 + b"\r\n",
        b"Idempotency-Key: \r\n",
    ],
)
def test_idempotency_key_injection_is_a_clean_4xx(security_api: Api, key_line: bytes) -> None:
    c = security_api.bank
    a, b = _pair(c)
    raw = _raw_post(security_api, "/v1/transfers", json.dumps(_transfer(a, b)).encode(), key_line)
    status_line, _, rest = raw.partition(b"\r\n")
    status = int(status_line.split()[1])
    headers, _, _ = rest.partition(b"\r\n\r\n")
    assert b"x-injected" not in headers.lower()
    if key_line.startswith(b"Idempotency-Key: abc\r\n"):
        assert status == 201  # "abc" is a valid key; X-Injected is just another request header
        assert _posted(c, a) == 990
        return
    assert 400 <= status < 500, raw[:500]
    assert b"Traceback" not in raw
    assert _posted(c, a) == 1_000


def test_idempotency_key_replay_and_reuse(security_api: Api) -> None:
    c = security_api.bank
    a, b = _pair(c)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = c.post("/v1/transfers", json=_transfer(a, b), headers=key)
    again = c.post("/v1/transfers", json=_transfer(a, b), headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    clean_4xx(c.post("/v1/transfers", json=_transfer(a, b, amount=11), headers=key), 422)
    assert _posted(c, a) == 990


# ---- rate limit ------------------------------------------------------------------------------

RATE_PER_S = 5


@pytest.fixture(scope="module")
def limited_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("ratelimited")
    running = start_sqlite_api(tmp)
    running.server.stop()  # restart the same database with a low limit
    running.server = ServerProcess({"KEEL_RATE_LIMIT_PER_S": str(RATE_PER_S)}, cwd=tmp, log_path=tmp / "serve-limited.log")
    try:
        yield running
    finally:
        running.close()


def test_rate_limit_exhaustion_is_429_per_key(limited_api: Api) -> None:
    c = limited_api.bank
    statuses = []
    for _ in range(RATE_PER_S * 6):
        r = c.get("/v1/accounts")
        statuses.append(r.status_code)
        if r.status_code == 429:
            body = clean_4xx(r, 429)
            assert body["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
            break
    assert 429 in statuses, statuses
    # Another key is not affected, and the limited one recovers.
    assert limited_api.client("bank_b").get("/v1/accounts").status_code == 200
    time.sleep(1.5)
    assert c.get("/v1/accounts").status_code == 200
