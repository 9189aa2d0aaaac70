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
from keel.bootstrap import build
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
    # One token per 5 s and a burst of one: robust however slow the machine is.
    return fresh_sqlite_settings(tmp_path, rate_limit_per_s=0.2)


def test_rate_limit_per_key(rate_limited: Settings) -> None:
    container = build(rate_limited)
    key_a, token_a = new_key("banking", "a")
    key_b, token_b = new_key("banking", "b")
    container.keys.add(key_a)
    container.keys.add(key_b)
    app = create_app(container, on_shutdown=[container.close])
    with TestClient(app) as client:
        statuses = [client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_a}"}).status_code for _ in range(5)]
        assert statuses[0] == 200 and 429 in statuses
        limited = client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_a}"})
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 5
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["content-type"].startswith("application/problem+json")
        # another key has its own bucket; operations routes are never limited
        assert client.get("/v1/accounts", headers={"Authorization": f"Bearer {token_b}"}).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))


@pytest.mark.anyio
async def test_same_key_while_first_is_in_flight_is_409(tmp_path: object) -> None:
    import asyncio

    import httpx

    settings = fresh_sqlite_settings(tmp_path)
    container = build(settings, start_writer=False)  # commands queue until the writer starts
    key, token = new_key("banking", "t")
    container.keys.add(key)
    app = create_app(container)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
    # httpx's ASGI transport runs requests concurrently on this loop (Litestar's test client
    # serialises them); the app needs no lifespan here.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = asyncio.ensure_future(client.post("/v1/accounts", json={"currency": "EUR"}, headers=headers))
        for _ in range(200):  # until the first request is queued at the writer
            if container.writer._queue:  # noqa: SLF001
                break
            await asyncio.sleep(0.01)
        assert container.writer._queue, "the first request never reached the writer"  # noqa: SLF001
        second = await client.post("/v1/accounts", json={"currency": "EUR"}, headers=headers)
        assert second.status_code == 409 and second.json()["code"] == "idempotency_key_in_flight"
        container.writer.start()
        done = await first
        assert done.status_code == 201
        third = await client.post("/v1/accounts", json={"currency": "EUR"}, headers=headers)
        assert third.status_code == 201 and third.headers["idempotent-replayed"] == "true"
        assert third.json()["id"] == done.json()["id"]
    container.close()


def test_readyz_is_503_when_the_store_fails(pg_settings: Settings) -> None:
    container = build(pg_settings)
    app = create_app(container)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        container.ledger.recorder.datastore.close()  # type: ignore[attr-defined] - the store goes away
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "unavailable" and r.headers["retry-after"]
    container.writer.stop()


@pytest.mark.anyio
async def test_full_writer_queue_is_503_with_retry_after(tmp_path: object) -> None:
    import asyncio

    import httpx

    settings = fresh_sqlite_settings(tmp_path, group_commit_queue_max=1)
    container = build(settings, start_writer=False)
    key, token = new_key("banking", "t")
    container.keys.add(key)
    app = create_app(container)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        first = asyncio.ensure_future(client.post("/v1/accounts", json={"currency": "EUR"}, headers=headers))
        for _ in range(200):
            if container.writer._queue:  # noqa: SLF001
                break
            await asyncio.sleep(0.01)
        shed = await client.post("/v1/accounts", json={"currency": "EUR"}, headers=headers)
        assert shed.status_code == 503 and shed.json()["code"] == "overloaded" and shed.headers["retry-after"] == "1"
        container.writer.start()
        assert (await first).status_code == 201
    container.close()


def test_readyz_is_503_when_a_migration_is_missing(pg_settings: Settings) -> None:
    import psycopg

    from tests.conftest import PG_DSN

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{pg_settings.database_schema}".keel_api_keys')
    container = build(pg_settings)
    with TestClient(create_app(container, on_shutdown=[container.close])) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "not_migrated", r.text
        assert "not migrated" in r.json()["detail"] and "keel migrate" in r.json()["detail"]
        assert "keel_api_keys" not in r.text  # no SQL or table names in responses


def test_the_drivers_catch_all_errors_are_503_and_a_programming_error_stays_a_500() -> None:
    """A server crashing mid-request can surface as the driver's generic classes; those are
    retryable (503 unavailable), while a bad statement is still a bug (no problem: a 500)."""
    from eventsourcing.persistence import DatabaseError, InternalError, PersistenceError, ProgrammingError

    from api.errors import write_problem

    for exc in (PersistenceError("x"), DatabaseError("x"), InternalError("x")):
        answer = write_problem(exc)
        assert answer is not None and answer[0] == 503 and b'"unavailable"' in answer[1], exc
    assert write_problem(ProgrammingError('syntax error at or near "SELEC"')) is None


def test_building_the_app_warns_of_nothing(tmp_path: object) -> None:
    """Routes declared the way this Litestar wants (no deprecated parameter styles): building the
    app and serving a page of every kind raises no warning at all."""
    import warnings

    container = build(fresh_sqlite_settings(tmp_path))
    key, token = new_key("banking", "w")
    container.keys.add(key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app = create_app(container, on_shutdown=[container.close])
        with TestClient(app) as client:
            r = client.get("/v1/accounts?limit=5", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
