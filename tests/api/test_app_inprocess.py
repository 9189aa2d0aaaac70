"""The app in-process (Litestar TestClient, real store): rate limits, error table, token format."""
from __future__ import annotations

import msgspec
import pytest
from litestar.testing import TestClient

import domain.errors as domain_errors
from api.app import create_app
from api.errors import STATUS_BY_CODE, domain_problem
from infrastructure.keys import new_key, parse_token, secret_matches
from infrastructure.settings import Settings
from keel.bootstrap import build, key_store
from tests.conftest import fresh_sqlite_settings


def _all_domain_errors() -> list[type[domain_errors.DomainError]]:
    found = []
    for value in vars(domain_errors).values():
        if isinstance(value, type) and issubclass(value, domain_errors.DomainError) and value is not domain_errors.DomainError:
            found.append(value)
    return found


def test_every_domain_error_code_has_a_status() -> None:
    for cls in _all_domain_errors():
        assert cls.code in STATUS_BY_CODE, cls
        status, body = domain_problem(cls("x", secret_thing=object()))
        decoded = msgspec.json.decode(body)
        assert decoded["status"] == status == STATUS_BY_CODE[cls.code]
        assert decoded["code"] == cls.code and decoded["type"].endswith(cls.code)
        assert "object at 0x" in decoded["secret_thing"] or isinstance(decoded["secret_thing"], str)


def test_tokens_round_trip_and_reject_garbage() -> None:
    key, token = new_key("banking", "t")
    parsed = parse_token(token)
    assert parsed is not None and parsed[0] == key.key_id and secret_matches(key, parsed[1])
    assert not secret_matches(key, parsed[1] + "x")
    for bad in ("", "keel_", "keel_xyz_abc", "keel_0123456789ABCDEF_s", "other_0123456789abcdef_s", "keel_" + "a" * 300):
        assert parse_token(bad) is None
    with pytest.raises(ValueError, match="tenant"):
        new_key("banking", None)
    with pytest.raises(ValueError, match="role"):
        new_key("root", None)


@pytest.fixture
def rate_limited(tmp_path: object) -> Settings:
    return fresh_sqlite_settings(tmp_path, rate_limit_per_s=1.0)


def test_rate_limit_per_key(rate_limited: Settings) -> None:
    container = build(rate_limited)
    key_a, token_a = new_key("banking", "a")
    key_b, token_b = new_key("banking", "b")
    key_store(container).add(key_a)
    key_store(container).add(key_b)
    app = create_app(container, on_shutdown=[container.close])
    with TestClient(app) as client:
        statuses = [client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_a}"}).status_code for _ in range(5)]
        assert statuses[:2] == [200, 200] and 429 in statuses
        limited = client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_a}"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["content-type"].startswith("application/problem+json")
        # another key has its own bucket; operations routes are never limited
        assert client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_b}"}).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))
