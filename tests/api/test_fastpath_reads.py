"""api.fastpath_reads must answer `GET /v1/accounts/{id}` and `GET /v1/accounts/{id}/transactions`
exactly as the Litestar routes do: every case is sent with the fast path on and off (the
reference) and the answers are compared whole — status, headers, body — and the fast path must
have answered the ordinary ones itself."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.fastpath_reads import ReadFastPath
from application.commands import Deposit, MakeTransfer, OpenAccount
from application.view_follower import ViewFollower
from infrastructure.keys import new_key
from infrastructure.readmodels import LogReader, SqlViewStore
from infrastructure.settings import Settings
from keel.bootstrap import build

TENANT, OTHER = "reads", "others"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Any, pg_session_schemas: list[str]) -> Iterator[dict[str, Any]]:
    from tests.conftest import fresh_pg_settings, fresh_sqlite_settings

    settings: Settings = (
        fresh_pg_settings(pg_session_schemas, rate_limit_per_s=1000)
        if request.param == "postgres"
        else fresh_sqlite_settings(tmp_path, rate_limit_per_s=1000)
    )
    c = build(settings)
    w = c.writer
    a = w.execute(OpenAccount(tenant=TENANT, currency="USD", holder={"name": "Ann Example", "email": "ann@example.com"}))
    b = w.execute(OpenAccount(tenant=TENANT, currency="USD"))
    empty = w.execute(OpenAccount(tenant=TENANT, currency="USD"))
    theirs = w.execute(OpenAccount(tenant=OTHER, currency="USD"))
    w.execute(Deposit(tenant=TENANT, account_id=a.id, amount_minor=10_000, currency="USD"))
    for k in range(5):
        w.execute(MakeTransfer(tenant=TENANT, debit_account_id=a.id, credit_account_id=b.id, amount_minor=100 + k,
                               currency="USD", reference=f"r{k}", pending=k == 2))  # fmt: skip
    db = c.read_side.db
    ViewFollower(LogReader(db, c.ledger.recorder, c.ledger.mapper), SqlViewStore(db)).catch_up()
    tokens = {}
    for who, role, tenant in (("bank", "banking", TENANT), ("analyst", "analyst", None), ("other", "banking", OTHER)):
        key, token = new_key(role, tenant)
        c.keys.add(key)
        tokens[who] = token
    with TestClient(create_app(c, on_shutdown=[c.close])) as client:
        for token in tokens.values():  # the fast path serves keys the cache already holds
            client.get("/v1/accounts", headers={"Authorization": f"Bearer {token}"})
        yield {"client": client, "tokens": tokens, "a": str(a.id), "b": str(b.id), "empty": str(empty.id),
               "theirs": str(theirs.id), "db": request.param, "settings": settings, "container": c}  # fmt: skip


def _both(env: dict[str, Any], path: str, who: str | None = "bank", headers: dict[str, str] | None = None) -> tuple[Any, Any, int]:
    client = env["client"]
    fast = client.app.asgi_handler.app  # inside the transfers' fast path (api/app.py)
    assert isinstance(fast, ReadFastPath)
    h = {"Authorization": f"Bearer {env['tokens'][who]}"} if who is not None else {}
    h.update(headers or {})
    answered = fast.answered
    on = client.get(path, headers=h)
    took = fast.answered - answered
    fast.enabled = False
    try:
        off = client.get(path, headers=h)
    finally:
        fast.enabled = True
    return on, off, took


def _same(on: Any, off: Any) -> None:
    def shape(r: Any) -> tuple[Any, ...]:
        extra = sorted((k, v) for k, v in r.headers.items() if k not in ("date", "server"))
        return r.status_code, extra, r.content

    assert shape(on) == shape(off)


def test_ordinary_reads_are_answered_by_the_fast_path_exactly_as_by_litestar(env: dict[str, Any]) -> None:
    a, b, empty = env["a"], env["b"], env["empty"]
    ordinary = [
        f"/v1/accounts/{a}", f"/v1/accounts/{b}", f"/v1/accounts/{empty}",
        f"/v1/accounts/{a}/transactions", f"/v1/accounts/{a}/transactions?limit=2", f"/v1/accounts/{b}/transactions?limit=200",
        f"/v1/accounts/{empty}/transactions",
    ]  # fmt: skip
    fast = env["client"].app.asgi_handler.app
    on_loop = fast.history_on_loop
    for path in ordinary:
        on, off, took = _both(env, path)
        assert on.status_code == 200 and took == 1, path
        _same(on, off)
    # On PostgreSQL the pages with legs were read on the event loop (the empty one on a thread).
    assert fast.history_on_loop - on_loop == (3 if env["db"] == "postgres" else 0)
    # The pages join up the same way.
    first, _, _ = _both(env, f"/v1/accounts/{a}/transactions?limit=2")
    cursor = first.json()["next_cursor"]
    on, off, took = _both(env, f"/v1/accounts/{a}/transactions?limit=2&cursor={cursor}")
    assert took == 1 and on.json()["items"][0]["position"] < first.json()["items"][-1]["position"]
    _same(on, off)
    assert on.json()["items"] and "Ann" not in on.text


def test_balances_come_from_the_writers_copies_and_never_lag_another_process(env: dict[str, Any]) -> None:
    """On PostgreSQL a balance read the writer's copies can answer takes neither a thread nor a
    pooled connection; once another process has written, it reads the store and is current."""
    fast = env["client"].app.asgi_handler.app
    b = env["b"]
    before = fast.from_memory
    on, off, _ = _both(env, f"/v1/accounts/{b}")
    _same(on, off)
    assert fast.from_memory - before == (1 if env["db"] == "postgres" else 0)
    # The account with a holder: its holder is revealed with a key lookup, on a thread.
    before = fast.from_memory
    _both(env, f"/v1/accounts/{env['a']}")
    assert fast.from_memory == before
    other = build(env["settings"])  # another process on the same database
    try:
        other.writer.execute(Deposit(tenant=TENANT, account_id=uuid.UUID(b), amount_minor=7, currency="USD"))
    finally:
        other.close()
    h = {"Authorization": f"Bearer {env['tokens']['bank']}"}
    before = fast.from_memory
    after = env["client"].get(f"/v1/accounts/{b}", headers=h).json()
    assert after["posted"] == on.json()["posted"] + 7
    assert fast.from_memory == before  # stale copy: not used
    env["container"].writer.execute(Deposit(tenant=TENANT, account_id=uuid.UUID(b), amount_minor=1, currency="USD"))
    again = env["client"].get(f"/v1/accounts/{b}", headers=h).json()
    assert again["posted"] == after["posted"] + 1
    assert fast.from_memory - before == (1 if env["db"] == "postgres" else 0)


def test_everything_else_is_left_to_litestar_and_answers_the_same(env: dict[str, Any]) -> None:
    a, theirs = env["a"], env["theirs"]
    cases: list[tuple[str, str | None, dict[str, str] | None]] = [
        (f"/v1/accounts/{theirs}", "bank", None),  # another tenant's: 404
        (f"/v1/accounts/{uuid.uuid4()}", "bank", None),  # none: 404
        (f"/v1/accounts/{theirs}/transactions", "bank", None),
        (f"/v1/accounts/{uuid.uuid4()}/transactions", "bank", None),
        (f"/v1/accounts/{a.upper()}", "bank", None),
        (f"/v1/accounts/{a.replace('-', '')}xxxx", "bank", None),
        (f"/v1/accounts/{a}", None, None),  # no key: 401
        (f"/v1/accounts/{a}", "analyst", None),  # another role: 403
        (f"/v1/accounts/{a}", "bank", {"Authorization": "Bearer keel_0123456789abcdef_nope"}),
        (f"/v1/accounts/{a}?x=1", "bank", None),
        (f"/v1/accounts/{a}/transactions?limit=0", "bank", None),
        (f"/v1/accounts/{a}/transactions?limit=201", "bank", None),
        (f"/v1/accounts/{a}/transactions?limit=abc", "bank", None),
        (f"/v1/accounts/{a}/transactions?limit=2&limit=3", "bank", None),
        (f"/v1/accounts/{a}/transactions?cursor=zzz", "bank", None),
        (f"/v1/accounts/{a}/transactions?cursor=" + "1" * 65, "bank", None),
        (f"/v1/accounts/{a}/transactions?cursor=", "bank", None),
        (f"/v1/accounts/{a}/transactions?other=1", "bank", None),
        (f"/v1/accounts/{a}/transactions/", "bank", None),
    ]
    for path, who, headers in cases:
        on, off, took = _both(env, path, who, headers)
        assert took == 0, (path, who, headers)
        _same(on, off)


def test_a_read_the_fast_path_hands_to_litestar_costs_one_token(tmp_path: Any) -> None:
    """A 404 is worded by Litestar after the fast path took the request's token: one token still."""
    from tests.conftest import fresh_sqlite_settings

    c = build(fresh_sqlite_settings(tmp_path, rate_limit_per_s=0.01, rate_limit_burst=3))
    key, token = new_key("banking", TENANT)
    c.keys.add(key)
    with TestClient(create_app(c, on_shutdown=[c.close])) as client:
        h = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/accounts", headers=h).status_code == 200  # token 1; the key is cached now
        missing = f"/v1/accounts/{uuid.uuid4()}"
        assert client.get(missing, headers=h).status_code == 404  # token 2 (charged twice before)
        assert client.get(missing, headers=h).status_code == 404  # token 3
        assert client.get(missing, headers=h).status_code == 429


@pytest.mark.postgres
def test_reads_fall_back_to_threads_when_the_loop_connection_fails(pg_session_schemas: list[str]) -> None:
    """The event-loop reads' own connection cannot be made (a wrong port here; a dead server, a
    killed backend): every read is still answered, by the thread path, exactly as by Litestar."""
    from application.aggregate_cache import AsyncLogHead
    from infrastructure.postgres.async_head import PostgresAsyncHead
    from tests.conftest import fresh_pg_settings

    settings = fresh_pg_settings(pg_session_schemas, rate_limit_per_s=1000)
    c = build(settings)
    a = c.writer.execute(OpenAccount(tenant=TENANT, currency="USD"))
    b = c.writer.execute(OpenAccount(tenant=TENANT, currency="USD"))
    c.writer.execute(Deposit(tenant=TENANT, account_id=a.id, amount_minor=500, currency="USD"))
    c.writer.execute(MakeTransfer(tenant=TENANT, debit_account_id=a.id, credit_account_id=b.id, amount_minor=5,
                                  currency="USD"))  # fmt: skip
    db = c.read_side.db
    ViewFollower(LogReader(db, c.ledger.recorder, c.ledger.mapper), SqlViewStore(db)).catch_up()
    key, token = new_key("banking", TENANT)
    c.keys.add(key)

    class Unreachable:
        def __getattr__(self, name: str) -> Any:
            return getattr(c, name)

        def open_log_head(self) -> AsyncLogHead:
            reader = PostgresAsyncHead(msgspec.structs.replace(settings.postgres(), port=1), "ledger_events")
            return AsyncLogHead(reader, reader.close, reader.fetchall)

    h = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(Unreachable(), on_shutdown=[c.close])) as client:  # type: ignore[arg-type]
        client.get("/v1/accounts", headers=h)
        fast = client.app.asgi_handler.app
        for path in (f"/v1/accounts/{a.id}", f"/v1/accounts/{a.id}/transactions"):
            on = client.get(path, headers=h)
            fast.enabled = False
            off = client.get(path, headers=h)
            fast.enabled = True
            assert on.status_code == 200 and (on.status_code, on.content) == (off.status_code, off.content)
        assert fast.from_memory == 0 and fast.history_on_loop == 0
        assert fast.answered == 2
