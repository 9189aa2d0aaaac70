"""A raw ASGI fast path for the two reads banking apps make most (issue #16): an account with its
balances, `GET /v1/accounts/{id}`, and its history, `GET /v1/accounts/{id}/transactions`.

Like api.fastpath for `POST /v1/transfers`, it answers the ordinary request with the very
functions the Litestar routes use (`Ledger.get_account` and `account_out`; `_history` and the
history page) and hands anything else to Litestar unchanged: no, an unknown or uncached key,
another role, a query it does not expect, a rate limit reached, and every error (a 404, a bad
cursor), so every refusal keeps exactly one implementation. tests/api/test_fastpath_reads.py
sends the same requests both ways and compares the answers.

What it saves is Litestar's per-request work (middleware stack, routing, dependency injection,
signature parsing, response objects): the profile in docs/benchmarks.md put it above the cost of
the read itself.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import anyio.to_thread
import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from api.auth import RATE_CHARGED, cached_principal
from api.observe import observe
from api.routes_history import HistoryItem, HistoryPage, _history, _type
from api.schemas import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, account_out
from domain.identity import account_key
from infrastructure.readside import PAGE_MAX, WAIT_MAX_S, WAIT_POLL_S, Page, check_limit, decode_cursor

PREFIX = "/v1/accounts/"
ACCOUNT_TEMPLATE = "/v1/accounts/{account_id}"
HISTORY_TEMPLATE = "/v1/accounts/{account_id}/transactions"
HISTORY_SUFFIX = "/transactions"
UUID_CHARS = 36
CURSOR_MAX_CHARS = 64  # the route's max_length
# Threads the fast path's reads run on at once (anyio's default is 40, shared with everything).
# Each read is a few short queries on the store's pool of 8; more threads than that only contend
# for the GIL and the pool: 4 cut a history read's CPU by a fifth to a third at 64 concurrent
# readers (in-process harness, docs/benchmarks.md).
READ_THREADS = 4
_encoder = msgspec.json.Encoder()


class ReadFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.enabled = True  # tests switch it off to get the reference answers
        self.answered = 0
        self.from_memory = 0  # balance reads answered from the writer's copies (no thread, no pool)
        self._threads: anyio.CapacityLimiter | None = None  # made on first use, on the app's loop
        self.history_on_loop = 0  # history pages read on the event loop (PostgreSQL), no thread
        # The views' position as last read on the loop, shared by the history reads waiting on it.
        self._views_position = 0
        self._views_read_at = float("-inf")
        self._views_query: asyncio.Future[int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (self.enabled and scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX)):
            await self.app(scope, receive, send)
            return
        rest = scope["path"][len(PREFIX):]
        history = rest.endswith(HISTORY_SUFFIX) and len(rest) == UUID_CHARS + len(HISTORY_SUFFIX)
        if not (history or len(rest) == UUID_CHARS):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = await self._answer(scope, rest[:UUID_CHARS], history)
        if answer is None:
            await self.app(scope, receive, send)
            return
        self.answered += 1
        body, extra = answer
        try:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            observe(scope, 200, time.perf_counter() - started)

    async def _answer(self, scope: Scope, account: str, history: bool) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """The 200 answer, or None for Litestar to give (whatever it is)."""
        state = scope["app"].state
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None  # repeated: Litestar decides
                authorization = value.decode("latin-1")
        principal = cached_principal(state.api_keys, authorization)
        if principal is None or principal.role != "banking" or not principal.tenant:
            return None
        try:
            aid = UUID(account)
        except ValueError:
            return None
        if str(aid) != account:
            return None  # upper case, braces, no hyphens: Litestar decides
        query = _query(scope.get("query_string", b""), history)
        if query is None:
            return None
        bucket = state.get("rate_limiter")
        if bucket is not None:
            if bucket.take(principal.key_id) > 0:
                return None  # Litestar's 429 (the bucket is asked again there)
            scope[RATE_CHARGED] = True  # if Litestar answers after all (an error), it charges nothing more
        scope["user"] = principal
        scope["path_template"] = HISTORY_TEMPLATE if history else ACCOUNT_TEMPLATE
        tenant = principal.tenant
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(READ_THREADS)
        try:
            if not history:
                found = None
                log_head = state.get("log_head")
                if log_head is not None:  # the writer's copy, when current: no thread, no pooled connection
                    head = await log_head.current()
                    if head is not None:
                        found = state.ledger.account_if_current(aid, tenant, head)
                        self.from_memory += found is not None
                if found is None:
                    found = await anyio.to_thread.run_sync(state.ledger.get_account, aid, tenant, limiter=self._threads)
                return _encoder.encode(account_out(found)), []
            cursor, limit = query
            decode_cursor(cursor, (int,))
            check_limit(limit, maximum=min(PAGE_LIMIT_MAX, PAGE_MAX))
            last = None
            found_on_loop = None
            log_head = state.get("log_head")
            if log_head is not None:  # the account's latest position from the writer's copy: no query
                head = await log_head.current()
                if head is not None:
                    last = state.ledger.latest_position(account_key(tenant, aid), head)
                if last is not None and log_head.fetchall is not None:
                    found_on_loop = await self._history_on_loop(state.read_side, log_head.fetchall, aid, tenant,
                                                                cursor, limit, last)  # fmt: skip
            if found_on_loop is not None:
                page, fresh = found_on_loop
            else:
                page, fresh = await anyio.to_thread.run_sync(
                    _history, state.read_side, state.ledger, aid, tenant, cursor, limit, last, limiter=self._threads
                )
        except Exception:  # noqa: BLE001 - 404, 422, a store outage: Litestar answers (and words) every failure
            return None
        items = msgspec.convert([{**i, "type": _type(i["direction"], i["status"])} for i in page.items], list[HistoryItem])
        extra = [] if fresh else [(b"keel-projection-stale", b"true")]
        return _encoder.encode(HistoryPage(items=items, next_cursor=page.next_cursor)), extra


    async def _history_on_loop(
        self, rs: Any, fetch: Any, aid: UUID, tenant: str, cursor: str | None, limit: int, last: int
    ) -> tuple[Page, bool] | None:
        """`_history` on the event loop, on the log head's connection (PostgreSQL): the same wait
        for the views to hold `last` (at most WAIT_MAX_S; `fresh` False after it) and the same
        statement. None when the page is empty or not the tenant's: the thread path decides."""
        deadline = time.monotonic() + WAIT_MAX_S
        fresh = True
        while await self._views_at_least(rs, fetch) < last:
            if time.monotonic() >= deadline:
                fresh = False
                break
            await asyncio.sleep(WAIT_POLL_S)
        sql, params, n = rs.history_statement(str(account_key(tenant, aid)), cursor, limit)
        found = rs.history_page(await fetch(sql, params), n)
        if found is None or found[0] != tenant:
            return None
        self.history_on_loop += 1
        return found[1], fresh

    async def _views_at_least(self, rs: Any, fetch: Any) -> int:
        """The views' position, read at most once per WAIT_POLL_S for every history read on this
        loop (a value up to that old is never more than the position now: waiting on it is safe)."""
        if time.monotonic() - self._views_read_at < WAIT_POLL_S:
            return self._views_position
        if self._views_query is None:
            self._views_query = asyncio.ensure_future(self._read_views(rs, fetch))
        return await asyncio.shield(self._views_query)

    async def _read_views(self, rs: Any, fetch: Any) -> int:
        try:
            rows = await fetch(*rs.position_statement(), shared=True)
            self._views_position, self._views_read_at = (int(rows[0][0]) if rows else 0), time.monotonic()
            return self._views_position
        finally:
            self._views_query = None


def _query(raw: bytes, history: bool) -> tuple[str | None, int] | None:
    """(cursor, limit) of a history query; None when the query is not the plain kind (Litestar
    decides). An account read takes no query at all."""
    if not raw:
        return None, PAGE_LIMIT_DEFAULT
    if not history:
        return None
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    seen = dict(pairs)
    if len(seen) != len(pairs) or not set(seen) <= {"cursor", "limit"}:
        return None
    limit, cursor = seen.get("limit", str(PAGE_LIMIT_DEFAULT)), seen.get("cursor")
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4) or (cursor is not None and not 0 < len(cursor) <= CURSOR_MAX_CHARS):
        return None
    return cursor, int(limit)


def install(app: Any) -> ReadFastPath:
    """Puts the read fast path in front of the app's handler (after api.fastpath's)."""
    fast = ReadFastPath(app.asgi_handler)
    app.asgi_handler = fast
    return fast
