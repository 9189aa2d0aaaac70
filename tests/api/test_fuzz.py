"""No client input gives a 500: random JSON and mutated valid bodies against every POST route."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from litestar.testing import TestClient

from api.app import create_app
from infrastructure.keys import new_key
from keel.bootstrap import build
from tests.conftest import fresh_sqlite_settings

ACCOUNT = str(uuid.uuid4())
ROUTES = [
    "/v1/accounts",
    "/v1/deposits",
    "/v1/withdrawals",
    "/v1/transfers",
    "/v1/transfers/batch",
    f"/v1/transfers/{ACCOUNT}/post",
    f"/v1/transfers/{ACCOUNT}/void",
    f"/v1/transfers/{ACCOUNT}/reverse",
    f"/v1/accounts/{ACCOUNT}/freeze",
]
VALID: dict[str, Any] = {
    "debit_account_id": ACCOUNT,
    "credit_account_id": str(uuid.uuid4()),
    "account_id": ACCOUNT,
    "amount": 100,
    "currency": "EUR",
    "reference": "r",
    "metadata": {"a": 1},
    "pending": False,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = fresh_sqlite_settings(tmp_path_factory.mktemp("fuzz"), rate_limit_per_s=0)
    container = build(settings)
    key, token = new_key("banking", "fuzz")
    container.keys.add(key)
    with TestClient(create_app(container, on_shutdown=[container.close])) as c:
        yield c, {"Authorization": f"Bearer {token}"}


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"]


@hyp_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=json_values)
def test_random_json(client: tuple[TestClient, dict[str, str]], route: str, body: Any) -> None:
    c, headers = client
    _check(c.post(route, json=body, headers=headers))


@hyp_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(ROUTES[:4]),
    field=st.sampled_from(sorted(VALID)),
    value=json_values,
    key=st.none() | st.text(max_size=300),
)
def test_mutated_valid_bodies(
    client: tuple[TestClient, dict[str, str]], route: str, field: str, value: Any, key: str | None
) -> None:
    c, headers = client
    extra = {}
    if key is not None:
        try:
            key.encode("ascii")
            extra = {"Idempotency-Key": key}
        except UnicodeEncodeError:
            pass
    _check(c.post(route, json={**VALID, field: value}, headers={**headers, **extra}))


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), path_id=st.text(max_size=40))
def test_raw_bytes_and_path_ids(client: tuple[TestClient, dict[str, str]], raw: bytes, path_id: str) -> None:
    c, headers = client
    _check(c.post("/v1/transfers", content=raw, headers=headers))
    from urllib.parse import quote

    _check(c.get(f"/v1/accounts/{quote(path_id, safe='')}", headers=headers))
    _check(c.get("/v1/accounts", params={"cursor": path_id}, headers=headers))
