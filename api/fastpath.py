"""A raw ASGI fast path for `POST /v1/transfers`, the route every banking app calls most.

Litestar spends more CPU on a request than the ledger spends on the transfer (profile in
docs/benchmarks.md): its middleware stack, routing, a guard call that copies the handler,
signature parsing that decodes the body once more before our strict decode, and response
objects. This handler sits in front of Litestar (`install` wraps `app.asgi_handler`) and answers
the ordinary request itself, with the very functions the Litestar route uses:

- the caller from the key cache (`api.auth.cached_principal`), a banking key with a tenant;
- the body read once (at most REQUEST_BODY_MAX_BYTES) and decoded strictly into TransferCreate;
- the per-key rate limit, then `api.idempotency.execute_write` with `transfer_write`'s command
  and presenter, and errors through `api.errors.write_problem`;
- the latency metric and the access-log entry, through api.observe like every other request.

Anything else — no or unknown or uncached key, another role, another content type, a body too
large or invalid, an exhausted rate limit — is handed to Litestar unchanged (the body read so far
is replayed), so every refusal keeps exactly one implementation. tests/api/test_fastpath.py sends
the same requests both ways and compares the answers.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import cached_principal
from api.errors import PROBLEM_MEDIA_TYPE, problem_parts, write_problem
from api.idempotency import IDEMPOTENCY_HEADER, WriteContext, execute_write
from api.observe import observe
from api.routes_banking import transfer_write
from api.schemas import TransferCreate

log = logging.getLogger(__name__)

PATH = "/v1/transfers"
_WANTED = {b"authorization", b"content-type", b"content-length", IDEMPOTENCY_HEADER.encode()}


class TransferFastPath:
    def __init__(self, app: ASGIApp, body_max_bytes: int) -> None:
        self.app = app
        self.body_max_bytes = body_max_bytes
        self.enabled = True  # tests switch it off to get the reference answers
        self.answered = 0  # requests this path answered itself (the rest went to Litestar)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (self.enabled and scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        state = scope["app"].state
        principal = None if headers is None else cached_principal(state.api_keys, headers.get(b"authorization"))
        content_type = (headers or {}).get(b"content-type", "").split(";", 1)[0].strip().lower()
        if principal is None or principal.role != "banking" or not principal.tenant or content_type != "application/json":
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit() and len(declared) <= 12 and int(declared) <= self.body_max_bytes):
            # Too large (or not a length): Litestar answers 413 (or 400) from the header, before
            # any of the body is read. A body without a length is counted as it arrives below.
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.body_max_bytes:
                await self.app(scope, _replaying(chunks, more, receive), send)  # Litestar's 413
                return
        body = b"".join(chunks)
        try:
            data = msgspec.json.decode(body, type=TransferCreate, strict=True)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # Litestar words the 422
            await self.app(scope, _replaying([body], False, receive), send)
            return
        bucket = state.get("rate_limiter")
        if bucket is not None and bucket.take(principal.key_id) > 0:
            await self.app(scope, _replaying([body], False, receive), send)  # Litestar's 429
            return
        scope["user"] = principal
        scope["path_template"] = PATH
        ctx = WriteContext(
            writes=state.writes, principal=principal, method="POST", path=PATH,
            idempotency_key=headers.get(IDEMPOTENCY_HEADER.encode()), body=body,
        )  # fmt: skip
        try:
            answer = await execute_write(ctx, *transfer_write(principal.tenant, data))
            status, out, extra = answer.status, answer.body, {"Idempotent-Replayed": "true"} if answer.replayed else {}
        except Exception as e:  # noqa: BLE001 - every failure becomes a problem response
            problem = write_problem(e)
            if problem is None:
                log.error("unhandled error: %s", type(e).__name__, exc_info=e)
                problem = problem_parts("internal_error", "an unexpected error occurred; it has been logged")
            status, out, extra = problem
        self.answered += 1
        try:
            await _respond(send, status, out, extra)
        finally:
            observe(scope, status, time.perf_counter() - started)


def install(app: Any, body_max_bytes: int) -> TransferFastPath:
    """Puts the fast path in front of a built Litestar app's own handler."""
    fast = TransferFastPath(app.asgi_handler, body_max_bytes)
    app.asgi_handler = fast
    return fast


def _headers(scope: Scope) -> dict[bytes, str] | None:
    """The headers the fast path reads; None when one of them is repeated (Litestar decides)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in found:
                return None
            found[name] = value.decode("latin-1")
    return found


def _replaying(chunks: list[bytes], more: bool, receive: Receive) -> Receive:
    pending = [b"".join(chunks)]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": more}
        return await receive()

    return replay


async def _respond(send: Send, status: int, body: bytes, extra: dict[str, str]) -> None:
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
