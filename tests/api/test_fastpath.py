"""api.fastpath must answer POST /v1/transfers exactly as the Litestar route does.

Each case is sent twice on fresh accounts — fast path on, then off (the Litestar handler, the
reference) — and the answers are compared: status, content type, extra headers, and the body
with the ids and timestamps that differ between the two runs put in their place.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from application.commands import Deposit, OpenAccount
from infrastructure.keys import new_key
from infrastructure.settings import Settings
from keel.bootstrap import Container, build

TENANT = "fast"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+(\+00:00|Z)")


class Env:
    def __init__(self, client: TestClient, container: Container, tokens: dict[str, str]) -> None:
        self.client = client
        self.container = container
        self.tokens = tokens
        self.fast = client.app.asgi_handler  # type: ignore[attr-defined]

    def accounts(self, funded: int) -> tuple[str, str]:
        a = self.container.writer.execute(OpenAccount(tenant=TENANT, currency="USD"))
        b = self.container.writer.execute(OpenAccount(tenant=TENANT, currency="USD"))
        if funded:
            self.container.writer.execute(Deposit(tenant=TENANT, account_id=a.id, amount_minor=funded, currency="USD"))
        return str(a.id), str(b.id)

    def post(self, who: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        h = {"Authorization": f"Bearer {self.tokens[who]}"} if who in self.tokens else {}
        h.update(headers or {})
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
            return self.client.post("/v1/transfers", content=raw, headers=h)
        return self.client.post("/v1/transfers", json=body, headers=h)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Any, pg_session_schemas: list[str]) -> Iterator[Env]:
    from tests.conftest import fresh_pg_settings, fresh_sqlite_settings

    settings: Settings = (
        fresh_pg_settings(pg_session_schemas, rate_limit_per_s=1000)
        if request.param == "postgres"
        else fresh_sqlite_settings(tmp_path, rate_limit_per_s=1000)
    )
    container = build(settings)
    tokens = {}
    for who, role, tenant in (("bank", "banking", TENANT), ("analyst", "analyst", None)):
        key, token = new_key(role, tenant)
        container.keys.add(key)
        tokens[who] = token
    with TestClient(create_app(container, on_shutdown=[container.close])) as client:
        e = Env(client, container, tokens)
        # The fast path serves keys the cache already holds: Litestar caches them on first use.
        for who in tokens:
            e.post(who, {})
        yield e


def _normal(response: Any, names: dict[str, str]) -> tuple[Any, ...]:
    text = response.text
    for real, placeholder in names.items():
        text = text.replace(real, placeholder)
    text = TIME_RE.sub("<time>", UUID_RE.sub("<id>", text))
    extra = sorted((k, v) for k, v in response.headers.items() if k not in ("content-length", "date", "server"))
    return response.status_code, extra, text


Case = Callable[[Env, str, str, str], Any]


def _transfer(a: str, b: str, amount: int = 100, **more: Any) -> dict[str, Any]:
    return {"debit_account_id": a, "credit_account_id": b, "amount": amount, "currency": "USD", **more}


def _idempotent_replay(e: Env, a: str, b: str, key: str) -> Any:
    e.post("bank", _transfer(a, b), headers={"Idempotency-Key": key})
    return e.post("bank", _transfer(a, b), headers={"Idempotency-Key": key})


def _idempotent_reuse(e: Env, a: str, b: str, key: str) -> Any:
    e.post("bank", _transfer(a, b), headers={"Idempotency-Key": key})
    return e.post("bank", _transfer(a, b, 7), headers={"Idempotency-Key": key})


def _same_id_twice(e: Env, a: str, b: str, key: str) -> Any:
    tid = str(uuid.uuid4())
    e.post("bank", _transfer(a, b, id=tid))
    return e.post("bank", _transfer(a, b, id=tid))


def _same_id_other_fields(e: Env, a: str, b: str, key: str) -> Any:
    tid = str(uuid.uuid4())
    e.post("bank", _transfer(a, b, id=tid))
    return e.post("bank", _transfer(a, b, 5, id=tid))


CASES: dict[str, tuple[Case, bool]] = {
    # name: (request, whether the fast path answers it itself)
    "created": (lambda e, a, b, k: e.post("bank", _transfer(a, b, reference="r-1", metadata={"x": "1"})), True),
    "hold": (lambda e, a, b, k: e.post("bank", _transfer(a, b, pending=True, timeout_seconds=60)), True),
    "insufficient_funds": (lambda e, a, b, k: e.post("bank", _transfer(a, b, 10**9)), True),
    "unknown_account": (lambda e, a, b, k: e.post("bank", _transfer(a, str(uuid.uuid4()))), True),
    "currency_mismatch": (lambda e, a, b, k: e.post("bank", {**_transfer(a, b), "currency": "EUR"}), True),
    "same_account": (lambda e, a, b, k: e.post("bank", _transfer(a, a)), True),
    "idempotent_created": (lambda e, a, b, k: e.post("bank", _transfer(a, b), headers={"Idempotency-Key": k}), True),
    "idempotent_replay": (_idempotent_replay, True),
    "idempotent_reuse": (_idempotent_reuse, True),
    "bad_idempotency_key": (lambda e, a, b, k: e.post("bank", _transfer(a, b), headers={"Idempotency-Key": "x" * 300}), True),
    "same_id_twice": (_same_id_twice, True),
    "same_id_other_fields": (_same_id_other_fields, True),
    "string_amount": (lambda e, a, b, k: e.post("bank", _transfer(a, b, "25")), False),  # type: ignore[arg-type]
    "float_amount": (lambda e, a, b, k: e.post("bank", _transfer(a, b, 2.5)), False),  # type: ignore[arg-type]
    "unknown_field": (lambda e, a, b, k: e.post("bank", _transfer(a, b, extra=1)), False),
    "not_json": (lambda e, a, b, k: e.post("bank", raw=b"{nope"), False),
    "too_large": (lambda e, a, b, k: e.post("bank", raw=b'{"reference":"' + b"x" * 70_000 + b'"}'), False),
    "text_plain": (lambda e, a, b, k: e.post("bank", raw=b"{}", headers={"Content-Type": "text/plain"}), False),
    "no_key": (lambda e, a, b, k: e.post("nobody", _transfer(a, b)), False),
    "bad_token": (lambda e, a, b, k: e.client.post("/v1/transfers", json=_transfer(a, b), headers={"Authorization": "Bearer nope"}), False),
    "analyst": (lambda e, a, b, k: e.post("analyst", _transfer(a, b)), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_answers_like_the_litestar_route(env: Env, case: str) -> None:
    send, answered_fast = CASES[case]
    answers = []
    for enabled in (True, False):
        env.fast.enabled = enabled
        a, b = env.accounts(funded=10_000)
        before = env.fast.answered
        response = send(env, a, b, f"k-{uuid.uuid4()}")
        assert response.status_code < 500, response.text
        if enabled:
            assert (env.fast.answered > before) == answered_fast
        answers.append(_normal(response, {a: "<debit>", b: "<credit>"}))
    assert answers[0] == answers[1]


def test_fast_path_is_rate_limited_logged_and_measured(tmp_path: Any) -> None:
    from tests.conftest import fresh_sqlite_settings

    container = build(fresh_sqlite_settings(tmp_path, rate_limit_per_s=1))  # burst of 2
    key, token = new_key("banking", TENANT)
    container.keys.add(key)
    with TestClient(create_app(container, on_shutdown=[container.close])) as client:
        e = Env(client, container, {"bank": token})
        a, b = e.accounts(funded=10_000)
        # A burst of 2: the first request (key not cached yet) goes through Litestar, the second
        # through the fast path; the fast path hands the rest to Litestar, which answers 429.
        statuses = [e.post("bank", _transfer(a, b)).status_code for _ in range(4)]
        assert statuses == [201, 201, 429, 429]
        assert e.post("bank", _transfer(a, b)).headers["retry-after"]
        assert e.fast.answered == 1
        metrics = client.get("/metrics").text
        count = re.search(r'keel_http_request_duration_seconds_count\{method="POST",route="/v1/transfers",status="2xx"\} (\S+)', metrics)
        assert count and float(count.group(1)) >= 2
        refused = client.post("/v1/transfers", json=_transfer(a, b), headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        metrics = client.get("/metrics").text
        # api.observe labels a refusal raised past it by its status, not as a 5xx.
        assert re.search(r'keel_http_request_duration_seconds_count\{method="POST",route="[^"]*",status="4xx"\}', metrics)
        assert 'method="POST",route="/v1/transfers",status="5xx"' not in metrics
        client.app.state.access_log_buffer.flush()  # type: ignore[attr-defined]
        entries = container.audit.access_log()
        routes = [x.route for x in entries if x.key_id == key.key_id]
        assert routes.count("POST /v1/transfers") == 5
        assert [x.outcome for x in entries if x.key_id == "-"] == ["401"]
