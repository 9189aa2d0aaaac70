"""Every write of the API goes through `run_write`: group commit + Idempotency-Key (SPEC §5).

- The stored response is an `IdempotencyRecord` rendered by the writer thread from the
  command's outcome and saved in the same database transaction as the effect: either both
  exist or neither does.
- Keys are scoped to the API key id. Before submitting, the stored record is looked up: same
  request hash -> the stored status and body with `Idempotent-Replayed: true`; another hash ->
  422 `idempotency_key_reused`. The same key already running in this process -> 409
  `idempotency_key_in_flight`.
- Across processes, a claim row (`keel_idempotency_claims`, UNLOGGED on PostgreSQL) is taken
  before submitting and released after the answer: a second process finding the key claimed
  replays the stored response if it exists by then, else answers 409. A claim older than
  `CLAIM_STALE_S` (a killed process) is taken over.
- Should two processes still run one key at once (a takeover of a claim whose holder was only
  slow), the second commit hits the primary key of `keel_idempotency` and the ledger re-runs
  that batch. Creation commands get ids derived from (key id, Idempotency-Key), so the re-run
  finds the first transfer/account and adds no second effect; the renderer, called again for the
  re-run, sees the stored record, stores nothing and marks itself superseded; the caller then
  answers with the stored record. The claim makes this fallback rare, because a re-run of a
  command whose first run failed (or of another body under the same key) may still apply.
- Retryable outcomes (`concurrency_conflict`) are never stored: the client may retry them.

Handlers never block the event loop: the writer runs on its own thread and store lookups run
in a worker thread.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import anyio
import msgspec
from litestar import Request, Response

from api.auth import Principal, principal_of
from api.errors import PROBLEM_MEDIA_TYPE, ApiError
from api.schemas import SEALED_MARK
from application.commands import BatchResult, Command, Result, TransferState
from application.group_commit import Overloaded, WriterStopped
from application.ports import IdempotencyRecord
from application.unit_of_work import CommandFailed
from domain.errors import ConcurrencyConflict, DomainError
from domain.identity import derived_id as system_id

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_KEY_MAX_CHARS = 255
IDEMPOTENCY_TTL_S = 24 * 3600
# A command whose batch kept conflicting with another process's commits is resubmitted (it
# joins a new, different batch) after a jittered, growing pause, within the write deadline.
CONFLICT_RESUBMITS_MAX = 12
CONFLICT_BACKOFF_FIRST_S = 0.005
CONFLICT_BACKOFF_MAX_S = 0.25
WRITE_TIMEOUT_S = 30.0
# Twice the longest a live request holds a claim (WRITE_TIMEOUT_S for all its resubmits, plus
# two lookups): only a dead or stuck holder's claim gets this old.
CLAIM_STALE_S = 60.0

# (status, body) of an outcome; runs on the writer thread, so it must be pure.
Present = Callable[[Result | DomainError], tuple[int, bytes]]
# Turns a stored-form success body into the body sent (e.g. reveals a sealed holder); runs in a
# worker thread, for live and replayed answers alike.
Finish = Callable[[Any, bytes], bytes]


def respond(status: int, body: bytes, *, replayed: bool = False) -> Response[bytes]:
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(content=body, status_code=status, media_type=media_type, headers=headers)


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= IDEMPOTENCY_KEY_MAX_CHARS or not all(" " <= c <= "~" for c in raw):
        raise ApiError(
            "validation_error", f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters"
        )
    return raw


def request_hash(method: str, path: str, body: bytes) -> str:
    # Canonical JSON when it parses (key order and whitespace do not make a different request).
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        canonical = body
    h = hashlib.sha256()
    h.update(method.encode())
    h.update(b"\x00")
    h.update(path.encode())
    h.update(b"\x00")
    h.update(canonical)
    return h.hexdigest()


# A stored answer is the HTTP status (2 bytes, big-endian) and the body: the application keeps it
# as opaque bytes (application.ports.IdempotencyRecord), only this module knows it is HTTP.
STATUS_BYTES = 2


def pack_answer(status: int, body: bytes) -> bytes:
    return status.to_bytes(STATUS_BYTES, "big") + body


def unpack_answer(answer: bytes) -> tuple[int, bytes]:
    return int.from_bytes(answer[:STATUS_BYTES], "big"), answer[STATUS_BYTES:]


class Renderer:
    """Renders one idempotent command's outcome into the record stored with its effect
    (application.ports.OutcomeRecorder); called once per commit attempt."""

    def __init__(self, scope: str, key: str, hash_: str, present: Present, store: Any) -> None:
        self.scope = scope
        self.key = key
        self.hash = hash_
        self.present = present
        self.store = store
        self.attempts = 0
        self.superseded = False
        self.record: IdempotencyRecord | None = None

    def recorded(self) -> bool:
        """Asked by the ledger before it re-runs the command after a conflict: when another
        process has stored this key meanwhile, the command is skipped and that answer stands."""
        if self.store.get(self.scope, self.key) is not None:
            self.superseded = True
            return True
        return False

    def render(self, outcome: Result | DomainError) -> IdempotencyRecord | None:  # type: ignore[override]
        self.attempts += 1
        self.record = None
        if self.attempts > 1 and self.store.get(self.scope, self.key) is not None:
            # Another process stored this key first; its response is the answer.
            self.superseded = True
            return None
        self.superseded = False
        if isinstance(outcome, (ConcurrencyConflict, CommandFailed)):
            return None  # retryable, or a bug: the client may send the key again
        status, body = self.present(outcome)
        self.record = IdempotencyRecord(
            scope=self.scope,
            key=self.key,
            request_hash=self.hash,
            answer=pack_answer(status, body),
            created_at_ms=int(time.time() * 1000),
        )
        return self.record


def derived_id(scope: str, key: str | None) -> UUID | None:
    """The id of an object created under (API key id, Idempotency-Key): the same pair always names
    the same object, so a racing duplicate can never create a second one. A system id
    (domain/identity.py): no client can create an object with it first."""
    if key is None:
        return None
    return system_id("idempotency", scope, key)


class WritePath:
    """What every write of this API process goes through: the group-commit writer, the stored
    responses and claims of Idempotency-Keys, the keys running in this process, the holder vault
    (to reveal a sealed holder in an answer) and the transfers counter. Built once by
    api.app.create_app; route handlers get it as the `writes` dependency, api.fastpath from the
    app's state."""

    def __init__(self, writer: Any, idempotency: Any, claims: Any, vault: Any, transfers_committed: Any) -> None:
        self.writer = writer
        self.idempotency = idempotency
        self.claims = claims
        self.vault = vault
        self.transfers_committed = transfers_committed  # a prometheus Counter
        self.in_flight: set[tuple[str, str]] = set()


class WriteContext(msgspec.Struct, frozen=True):
    """What a write needs from its request, whichever way it arrived (a Litestar route, or
    api.fastpath's raw ASGI handler): the write path, the caller, and the request itself."""

    writes: Any  # WritePath
    principal: Principal
    method: str
    path: str
    idempotency_key: str | None  # the raw header value, validated here
    body: bytes


class Answer(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    replayed: bool = False


async def write_context(writes: WritePath, request: Request[Any, Any, Any]) -> WriteContext:
    return WriteContext(
        writes=writes,
        principal=principal_of(request),
        method=request.method,
        path=request.url.path,
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
        body=await request.body(),
    )


async def _submit(ctx: WriteContext, command: Command, render: Renderer | None) -> Any:
    writer = ctx.writes.writer
    deadline = time.monotonic() + WRITE_TIMEOUT_S  # for all resubmits together: bounds a claim's life
    for attempt in range(CONFLICT_RESUBMITS_MAX):
        try:
            future = writer.submit_async(command, render)
            outcome = await asyncio.wait_for(future, max(0.001, deadline - time.monotonic()))
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError("unavailable", "the write did not complete in time; retry with the same Idempotency-Key") from None
        except (ApiError, DomainError, Overloaded, WriterStopped):
            raise  # mapped by api.errors
        except Exception as e:
            # A storage failure: nothing of the batch was committed. Safe to retry.
            log.warning("write failed: %s", type(e).__name__)
            raise ApiError("unavailable", "the event store is unavailable; retry shortly") from None
        if isinstance(outcome, ConcurrencyConflict) and (render is None or not render.superseded):
            pause_s = random.uniform(0, min(CONFLICT_BACKOFF_MAX_S, CONFLICT_BACKOFF_FIRST_S * 2**attempt))
            if time.monotonic() + pause_s >= deadline:
                break
            await asyncio.sleep(pause_s)
            continue
        _count_transfers(ctx, outcome)
        return outcome
    return outcome


def _count_transfers(ctx: WriteContext, outcome: Any) -> None:
    if isinstance(outcome, TransferState):
        ctx.writes.transfers_committed.inc()
    elif isinstance(outcome, BatchResult):
        done = sum(isinstance(r, TransferState) for r in outcome.results)
        if done:
            ctx.writes.transfers_committed.inc(done)


async def run_write(
    writes: WritePath,
    request: Request[Any, Any, Any],
    build: Callable[[UUID | None], Command],
    present: Present,
    *,
    finish: Finish | None = None,
) -> Response[bytes]:
    """Submits the command `build(default_id)` and answers with its (stored) response."""
    answer = await execute_write(await write_context(writes, request), build, present)
    body = answer.body
    if finish is not None and answer.status < 400:
        body = await anyio.to_thread.run_sync(finish, writes, body)
    return respond(answer.status, body, replayed=answer.replayed)


def reveal_holder(writes: WritePath, body: bytes) -> bytes:
    """An account body with its holder sealed (as stored) -> the body with the holder revealed,
    or `{"erased": true}` once the holder's key was destroyed. Stored responses therefore never
    hold a holder's plaintext, and a replay after an erasure shows it erased."""
    if SEALED_MARK.encode() not in body:
        return body
    doc = msgspec.json.decode(body)
    holder = doc.get("holder")
    if isinstance(holder, dict) and SEALED_MARK in holder:
        vault = writes.vault
        doc["holder"] = vault.reveal(holder[SEALED_MARK]) if vault is not None else None
    return msgspec.json.encode(doc)


async def execute_write(ctx: WriteContext, build: Callable[[UUID | None], Command], present: Present) -> Answer:
    """`run_write` without the framework: raises ApiError, DomainError, Overloaded, WriterStopped."""
    key = idempotency_key(ctx.idempotency_key)
    if key is None:
        outcome = await _submit(ctx, build(None), None)
        return Answer(*present(outcome))

    scope = ctx.principal.key_id
    hash_ = request_hash(ctx.method, ctx.path, ctx.body)
    in_flight = ctx.writes.in_flight
    if (scope, key) in in_flight:
        raise ApiError("idempotency_key_in_flight", "a request with this Idempotency-Key is still running")
    store = ctx.writes.idempotency
    claims = ctx.writes.claims
    in_flight.add((scope, key))
    try:
        now_ms = int(time.time() * 1000)
        claimed = await anyio.to_thread.run_sync(claims.claim, scope, key, now_ms, now_ms - int(CLAIM_STALE_S * 1000))
        try:
            # After claiming, so that a holder who committed and released is seen.
            stored = await anyio.to_thread.run_sync(store.get, scope, key)
            if stored is not None:
                return _replay(stored, hash_)
            if not claimed:
                raise ApiError("idempotency_key_in_flight", "a request with this Idempotency-Key is still running")
            render = Renderer(scope, key, hash_, present, store)
            outcome = await _submit(ctx, build(derived_id(scope, key)), render)
        finally:
            if claimed:
                await anyio.to_thread.run_sync(claims.release, scope, key)
        if render.superseded:
            stored = await anyio.to_thread.run_sync(store.get, scope, key)
            if stored is not None:
                return _replay(stored, hash_)
        # A conflict outcome means nothing of this command was committed, record included.
        if render.record is not None and not isinstance(outcome, ConcurrencyConflict):
            return Answer(*unpack_answer(render.record.answer))
        return Answer(*present(outcome))
    finally:
        in_flight.discard((scope, key))


def _replay(stored: IdempotencyRecord, hash_: str) -> Answer:
    if stored.request_hash != hash_:
        raise ApiError("idempotency_key_reused", "this Idempotency-Key was used with a different request")
    return Answer(*unpack_answer(stored.answer), replayed=True)
