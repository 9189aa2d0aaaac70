"""The real-time routes through a real `keel serve` (SQLite: every worker in the process; PostgreSQL:
`keel worker feed` and `keel worker webhooks` beside it): pages, SSE with Last-Event-ID and its
limits, webhooks signed (checked by an implementation of our own, not the server's), retried, disabled
by 410; SSRF refusals; OAuth tokens and the JWT attacks."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import Api, start_pg_api, start_sqlite_api
from tests.e2e.server import auth
from tests.realtime.conftest import start_receiver

ROOT = Path(__file__).resolve().parents[2]
ENV = {"KEEL_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "KEEL_SSE_STREAMS_PER_KEY": "2"}
WAIT_S = 20


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_session_schemas: list[str]) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp(f"rt-{request.param}")
    if request.param == "sqlite":
        api = start_sqlite_api(tmp, **ENV)
    else:
        keys = tmp / "jwt-keys"
        subprocess.run([sys.executable, "-m", "keel.cli", "keys", "rotate-jwt-key", "--file", str(keys)], check=True,
                       capture_output=True)  # fmt: skip
        env = {**ENV, "KEEL_JWT_KEYS_FILE": str(keys)}
        api = start_pg_api(tmp, pg_session_schemas, **env)
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        worker_env.update(KEEL_DATABASE_URL=api.settings.database_url, KEEL_DATABASE_SCHEMA=api.settings.database_schema,
                          KEEL_LOG_LEVEL="WARNING", **env)  # fmt: skip
        for name in ("feed", "webhooks"):
            api.workers.append(subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", name], cwd=ROOT, env=worker_env))
    try:
        yield api
    finally:
        api.close()


def _accounts(c: httpx.Client, n: int = 2, funded: int = 10_000) -> list[str]:
    ids = []
    for _ in range(n):
        aid = c.post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
        if funded:
            assert c.post("/v1/deposits", json={"account_id": aid, "amount": funded, "currency": "EUR"}).status_code == 201
        ids.append(aid)
    return ids


def _transfer(c: httpx.Client, a: str, b: str, amount: int = 1) -> str:
    r = c.post("/v1/transfers", json={"debit_account_id": a, "credit_account_id": b, "amount": amount, "currency": "EUR"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _all_events(c: httpx.Client, types: str | None = None) -> list[dict]:
    out, after = [], None
    while True:
        params = {"limit": 500, **({"after": after} if after else {}), **({"types": types} if types else {})}
        page = c.get("/v1/events", params=params).json()
        out += page["events"]
        after = page["next_cursor"]
        if not page["has_more"]:
            return out


def _wait(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- the feed over HTTP --------------------------------------------------------------------------


def test_events_pages_filters_and_tenancy(rt: Api) -> None:
    a, b = rt.bank, rt.client("bank_b")
    x, y = _accounts(a)
    tid = _transfer(a, x, y)
    own = _wait(lambda: [e for e in _all_events(a) if e["data"].get("id") == tid and e["type"] == "transfer.posted"], "feed")
    assert own[0]["data"]["amount"] == 1 and own[0]["data"]["debit_account_id"] == x
    posted = _all_events(a, "transfer.posted")
    assert posted and all(e["type"] == "transfer.posted" for e in posted)
    text = json.dumps(_all_events(b))
    assert tid not in text and x not in text and y not in text, "another tenant's events"
    for bad in ({"after": "nope"}, {"after": base64.urlsafe_b64encode(b'["f1",-1]').decode()}, {"types": "transfer.bogus"},
                {"limit": 0}, {"limit": 100000}):  # fmt: skip
        r = a.get("/v1/events", params=bad)
        assert r.status_code in (400, 422) and r.headers["content-type"].startswith("application/problem+json"), (bad, r.text)
    for role in ("auditor", "analyst", "admin"):
        assert rt.client(role).get("/v1/events").status_code == 403
    assert httpx.get(rt.server.base_url + "/v1/events").status_code == 401


def _sse(c: httpx.Client, n: int, headers: dict[str, str] | None = None, params: dict | None = None) -> list[tuple[str, dict]]:
    got: list[tuple[str, dict]] = []
    for _ in range(50):  # the server notices the previous stream's disconnect a moment later: 429 until then
        with c.stream("GET", "/v1/events/stream", headers=headers or {}, params=params or {}, timeout=WAIT_S) as r:
            if r.status_code != 429:
                return _read_sse(r, n, got)
        time.sleep(0.1)
    raise AssertionError("the stream stayed refused")


def _read_sse(r: httpx.Response, n: int, got: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    event_id = None
    for line in r.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            got.append((event_id, json.loads(line[6:])))
            if len(got) == n:
                return got
    return got


def test_sse_resumes_with_last_event_id_and_is_bounded(rt: Api) -> None:
    a = rt.bank
    x, y = _accounts(a)
    ids = [_transfer(a, x, y) for _ in range(3)]
    params = {"types": "transfer.posted"}
    first = _sse(a, 3, params=params)
    assert [e["data"]["id"] for _, e in first][-3:] == ids or [e["data"]["id"] for _, e in first] == [
        e["data"]["id"] for e in _all_events(a, "transfer.posted")][:3]  # fmt: skip
    deadline = time.monotonic() + 10  # the feed worker follows the log: wait until it holds all three
    everything = _all_events(a, "transfer.posted")
    while [e["data"]["id"] for e in everything[-3:]] != ids and time.monotonic() < deadline:
        time.sleep(0.05)
        everything = _all_events(a, "transfer.posted")
    cursor = everything[-3]["cursor"]
    resumed = _sse(a, 2, headers={"Last-Event-ID": cursor}, params=params)
    assert [e["data"]["id"] for _, e in resumed] == ids[1:]
    assert [i for i, _ in resumed] == [e["cursor"] for _, e in resumed]
    # live: an event committed while the stream is open arrives
    import threading

    later: list[str] = []
    threading.Timer(0.5, lambda: later.append(_transfer(a, x, y))).start()
    live = _sse(a, 3, headers={"Last-Event-ID": cursor}, params=params)
    assert [e["data"]["id"] for _, e in live][-1] == later[0]
    # bounded: two streams per key here (KEEL_SSE_STREAMS_PER_KEY=2), the third is 429
    time.sleep(1)  # the streams above have ended on the server too
    with a.stream("GET", "/v1/events/stream"), a.stream("GET", "/v1/events/stream"):
        r = a.get("/v1/events/stream")
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert a.get("/v1/events/stream", headers={"Last-Event-ID": "garbage"}).status_code == 422
    _wait(lambda: _sse(a, 1, params=params), "a stream to open again once the others closed")


# ---- webhooks ---------------------------------------------------------------------------------------


def _independent_check(secret: str, header: str, body: bytes) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def test_webhook_delivers_signed_in_order_retries_and_410_disables(rt: Api) -> None:
    a = rt.bank
    rcv = start_receiver()
    try:
        rcv.script = [500, 503]  # the first two tries fail, then it answers 200
        r = a.post("/v1/webhooks", json={"url": rcv.url, "types": ["transfer.posted"], "description": "t"})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["secret"].startswith("whsec_") and hook["types"] == ["transfer.posted"]
        assert "secret" not in a.get(f"/v1/webhooks/{hook['id']}").json()
        x, y = _accounts(a)
        ids = [_transfer(a, x, y) for _ in range(5)]
        _wait(lambda: len(rcv.bodies()) >= 5, "5 deliveries", 40)
        got = rcv.received[:5]
        assert [json.loads(g.body)["data"]["id"] for g in got] == ids, "in order, after the retries"
        for g in got:
            assert _independent_check(hook["secret"], g.headers["keel-signature"], g.body)
            assert g.headers["keel-webhook-id"] == hook["id"] and g.headers["keel-event-id"] == json.loads(g.body)["id"]
        state = _wait(lambda: (s := a.get(f"/v1/webhooks/{hook['id']}").json())["delivered"] >= 5 and s, "tracking")
        assert state["status"] == "active" and state["attempts"] == 0 and state["last_error"] == "receiver answered 503"
        # another tenant sees none of it
        assert rt.client("bank_b").get(f"/v1/webhooks/{hook['id']}").status_code == 404
        assert hook["id"] not in rt.client("bank_b").get("/v1/webhooks").text
        # a failure is visible with its error; 410 disables
        rcv.script = [410]
        _transfer(a, x, y)
        final = _wait(lambda: (s := a.get(f"/v1/webhooks/{hook['id']}").json())["status"] == "disabled" and s, "disable")
        assert "410" in final["last_error"]
        assert a.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
        assert a.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    finally:
        rcv.server.shutdown()


@pytest.mark.parametrize("url", [
    "https://127.0.0.2/x", "https://10.0.0.1/x", "https://169.254.169.254/latest/meta-data", "https://localhost/x",
    "https://[::1]/x", "https://192.168.1.10/x", "http://example.com/x", "https://user:pw@example.com/x", "ftp://x/y",
    "https://[::ffff:127.0.0.1]/x",
])  # fmt: skip
def test_ssrf_refusals(rt: Api, url: str) -> None:
    r = rt.bank.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 422 and r.json()["code"] == "validation_error" and "url" in r.text, r.text


# ---- OAuth 2.0 -------------------------------------------------------------------------------------


def _client(rt: Api, tenant: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(KEEL_DATABASE_URL=rt.settings.database_url, KEEL_DATABASE_SCHEMA=rt.settings.database_schema)
    if rt.settings.holder_kek:
        env["KEEL_HOLDER_KEK"] = rt.settings.holder_kek
    out = subprocess.run([sys.executable, "-m", "keel.cli", "clients", "create", "--role", "banking", "--tenant", tenant],
                         env=env, cwd=rt.server.log_path.parent, capture_output=True, text=True, check=True).stdout  # fmt: skip
    fields = dict(line.split("=", 1) for line in out.strip().splitlines())
    return fields["client_id"], fields["client_secret"]


def test_oauth_client_credentials_and_jwt_attacks(rt: Api) -> None:
    base = rt.server.base_url
    tenant = f"oauth-{uuid.uuid4().hex[:6]}"
    cid, secret = _client(rt, tenant)
    r = httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
    tok = r.json()
    assert tok["token_type"] == "Bearer" and 0 < tok["expires_in"] <= 900
    claims = pyjwt.decode(tok["access_token"], options={"verify_signature": False})
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "tenant", "role"} <= claims.keys() and claims["tenant"] == tenant
    # form-field authentication works too; the token opens the tenant's routes and no other role's
    r2 = httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret})
    assert r2.status_code == 200
    c = httpx.Client(base_url=base, headers=auth(tok["access_token"]), timeout=30)
    x, y = _accounts(c)
    _transfer(c, x, y)
    assert c.get(f"/v1/accounts/{x}").json()["posted"] == 9_999
    assert rt.bank.get(f"/v1/accounts/{x}").status_code == 404, "the token's tenant, not another"
    assert c.get("/v1/audit/verify").status_code == 403
    # RFC 6749 §5.2 errors
    assert httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, "wrong")).json()["error"] == "invalid_client"
    assert httpx.post(base + "/oauth/token", data={"grant_type": "password"}, auth=(cid, secret)).json()["error"] == "unsupported_grant_type"
    assert httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials", "scope": "admin"}, auth=(cid, secret)).json()["error"] == "invalid_scope"
    assert httpx.post(base + "/oauth/token", json={"grant_type": "client_credentials"}).json()["error"] == "invalid_request"
    jwks = httpx.get(base + "/.well-known/jwks.json").json()["keys"]
    assert jwks and jwks[0]["kid"] == pyjwt.get_unverified_header(tok["access_token"])["kid"] and jwks[0]["crv"] == "Ed25519"

    # attacks: each one is 401
    public_raw = base64.urlsafe_b64decode(jwks[0]["x"] + "==")
    h, _, s = tok["access_token"].split(".")
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    now = int(time.time())
    good = {**claims, "iat": now, "nbf": now, "exp": now + 600}
    forged = Ed25519PrivateKey.generate()
    attacks = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': jwks[0]['kid']})}.{b64(good)}.",
        "HS256 keyed with the public key": pyjwt.encode(good, public_raw, algorithm="HS256", headers={"kid": jwks[0]["kid"]}),
        "tampered payload": f"{h}.{b64({**claims, 'tenant': 'someone-else'})}.{s}",
        "signed by another key": pyjwt.encode(good, forged, algorithm="EdDSA", headers={"kid": jwks[0]["kid"]}),
        "garbage": "a.b.c",
    }
    key_file = _key_file(rt)
    if key_file is not None:  # tokens signed with the real key but wrong in their claims
        kid, raw = Path(key_file).read_text().split()[0].split(":")
        real = Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw))
        sign = lambda d: pyjwt.encode(d, real, algorithm="EdDSA", headers={"kid": kid})
        assert c.get("/v1/accounts", headers=auth(sign(good))).status_code == 200, "the control: a good token"
        attacks |= {
            "expired": sign({**good, "iat": now - 3600, "nbf": now - 3600, "exp": now - 1800}),
            "not yet valid": sign({**good, "nbf": now + 3600}),
            "wrong audience": sign({**good, "aud": "another-api"}),
            "wrong issuer": sign({**good, "iss": "someone"}),
            "no exp": sign({k: v for k, v in good.items() if k != "exp"}),
        }
    for name, token in attacks.items():
        r = httpx.get(base + "/v1/accounts", headers=auth(token))
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


def _key_file(rt: Api) -> str | None:
    """The server's signing keys: the embedded store's var/jwt-keys, or the file the PostgreSQL run made."""
    for path in (Path(rt.server.log_path.parent) / "var" / "jwt-keys", Path(rt.server.log_path.parent) / "jwt-keys"):
        if path.exists():
            return str(path)
    return None
