"""Audit routes (SPEC §5, `auditor`) and holder erasure (`admin`).

Everything here reads through application/audit.py (rebuilt from events, never read models) or
application/privacy.py. Payloads never show holder personal data (only encrypted/erased), and
no response carries stored event bytes. Verification walks the whole chain, so only
VERIFY_CONCURRENT_MAX run at once per process; more answer 503 with Retry-After.
"""
from __future__ import annotations

import threading
from typing import Annotated, Literal
from uuid import UUID

import anyio
import msgspec
from litestar.di import NamedDependency
from litestar import Request, Router, delete, get
from litestar.params import QueryParameter

from application.audit import Audit
from application.group_commit import GroupCommitWriter
from application.ledger import Ledger
from api.auth import require_roles
from api.errors import ApiError
from api.resolve import TENANT_DOC, account_key_for
from api.schemas import AccountIdParam, AccountOut, account_out
from application.audit import EVENTS_PAGE_DEFAULT, EVENTS_PAGE_MAX, AccessEntry, LogEntry, PointInTime, parse_instant
from application.chain import VerifyReport
from application.privacy import erase_holder
from domain.limits import TENANT_MAX_CHARS, TENANT_PATTERN

POSITION_MAX = 2**63 - 1
VERIFY_CONCURRENT_MAX = 1
AT_MAX_CHARS = 64
_verify_slots = threading.BoundedSemaphore(VERIFY_CONCURRENT_MAX)

AfterParam = Annotated[int, QueryParameter(ge=0, le=POSITION_MAX, description="Cursor: the last position (or id) seen")]
LimitParam = Annotated[int, QueryParameter(ge=1, le=EVENTS_PAGE_MAX, description="Page size")]
TenantParam = Annotated[
    str | None, QueryParameter(min_length=1, max_length=TENANT_MAX_CHARS, pattern=TENANT_PATTERN, description=TENANT_DOC)
]


class EventsPage(msgspec.Struct, frozen=True):
    items: list[LogEntry]
    next_after: int | None  # pass as `after` for the next page; null at the end


class CheckpointOut(msgspec.Struct, frozen=True):
    id: int
    position: int
    head_hash: str
    signed_at: str
    key_id: str
    signature: str
    message: str  # exactly the bytes that were signed (UTF-8), so anyone can check it


class CheckpointsPage(msgspec.Struct, frozen=True):
    items: list[CheckpointOut]
    next_after: int | None


class PublicKeyOut(msgspec.Struct, frozen=True):
    algorithm: str
    key_id: str
    public_key_hex: str
    public_key_pem: str


class AccessPage(msgspec.Struct, frozen=True):
    items: list[AccessEntry]
    next_after: int | None



def _uuid(value: str, name: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ApiError("validation_error", f"{name} must be a UUID", field=name) from None


_auditor = [require_roles("auditor")]


@get("/audit/events", guards=_auditor, summary="The global event log with hashes (cursor by position)",
     description="Every stored ledger event in log order after `after` (a position; 0: from the start), at most "
     "`limit`: position, aggregate id (storage key), version, type, time, payload (holder data only as "
     "`{\"encrypted\": true}`), `hash` and `prev_hash`. Pass `next_after` as `after` for the next page.")
async def audit_events(request: Request, audit: NamedDependency[Audit], after: AfterParam = 0, limit: LimitParam = EVENTS_PAGE_DEFAULT) -> EventsPage:
    items = await anyio.to_thread.run_sync(audit.events, after, limit)
    return EventsPage(items=items, next_after=items[-1].position if len(items) == limit else None)


@get("/audit/accounts/{account_id:str}/events", guards=_auditor, summary="One account's events, oldest first",
     description="The account's own events with their chain hashes, after aggregate version `after`. " + TENANT_DOC)
async def audit_account_events(
    request: Request,
    audit: NamedDependency[Audit],
    ledger: NamedDependency[Ledger],
    account_id: AccountIdParam,
    after: AfterParam = 0,
    limit: LimitParam = EVENTS_PAGE_DEFAULT,
    tenant: TenantParam = None,
) -> EventsPage:
    aid = _uuid(account_id, "account_id")
    key = await anyio.to_thread.run_sync(account_key_for, ledger, aid, tenant)
    items = await anyio.to_thread.run_sync(audit.account_events, key, after, limit)
    return EventsPage(items=items, next_after=items[-1].version if len(items) == limit else None)


@get(
    "/audit/accounts/{account_id:str}/balance",
    guards=_auditor,
    summary="An account's balances at an instant (?at=RFC3339) or a version (?version=N), rebuilt from events",
    description="Replays the account's events (snapshots allowed), never a read model. Give exactly one of `at` "
    "or `version`. The balances have the names of `GET /v1/accounts/{id}`: `posted`, `pending_debits`, "
    "`pending_credits`, `available`, integers in minor units. " + TENANT_DOC,
)
async def audit_balance(
    request: Request,
    audit: NamedDependency[Audit],
    ledger: NamedDependency[Ledger],
    account_id: AccountIdParam,
    at: Annotated[str | None, QueryParameter(max_length=AT_MAX_CHARS, description="RFC 3339 instant")] = None,
    version: Annotated[int | None, QueryParameter(ge=1, le=POSITION_MAX, description="aggregate version")] = None,
    tenant: TenantParam = None,
    time: Annotated[
        Literal["recorded", "occurred"],
        QueryParameter(description="With `at`: count the events recorded by then (the default; a prefix of the "
                       "account's history), or the movements that had happened by then by their event time "
                       "(`occurred_at`, for history imported or backfilled later), whenever they were recorded."),
    ] = "recorded",
) -> BalanceAt:
    aid = _uuid(account_id, "account_id")
    if (at is None) == (version is None):
        raise ApiError("validation_error", "give exactly one of at or version")
    aid = await anyio.to_thread.run_sync(account_key_for, ledger, aid, tenant)
    if version is not None:
        return balance_at_out(await anyio.to_thread.run_sync(audit.balance_at_version, aid, version))
    instant = parse_instant(at or "")
    rebuild = audit.balance_at_event_time if time == "occurred" else audit.balance_at
    return balance_at_out(await anyio.to_thread.run_sync(rebuild, aid, instant))


class BalanceAt(msgspec.Struct, frozen=True):
    """An account rebuilt from its events at an instant or version: the balances under the names
    `GET /v1/accounts/{id}` uses (`posted`, `available`, ...: integers in minor units)."""

    account_id: UUID
    key: UUID  # the storage key (aggregate id in the log)
    tenant: str
    version: int
    as_of: str | None
    currency: str
    status: str
    posted: int
    pending_debits: int
    pending_credits: int
    available: int


def balance_at_out(p: PointInTime) -> BalanceAt:
    return BalanceAt(
        account_id=p.account_id, key=p.key, tenant=p.tenant, version=p.version, as_of=p.as_of, currency=p.currency,
        status=p.status, posted=p.posted_minor, pending_debits=p.pending_debits_minor,
        pending_credits=p.pending_credits_minor, available=p.available_minor,
    )  # fmt: skip


@get("/audit/verify", guards=_auditor, summary="Walk the hash chain and the signed checkpoints",
     description="Recomputes every event's hash from the stored bytes and checks each checkpoint's signature: "
     "`ok`, events checked, the head hash, and the first position that fails with the reason. One walk at a "
     "time per process (503 `unavailable` while another runs).")
async def audit_verify(request: Request, audit: NamedDependency[Audit]) -> VerifyReport:
    if not _verify_slots.acquire(blocking=False):
        raise ApiError("unavailable", "a verification is already running; retry shortly")
    try:
        return await anyio.to_thread.run_sync(audit.verify)
    finally:
        _verify_slots.release()


@get("/audit/checkpoints", guards=_auditor, summary="Signed chain heads (Ed25519), oldest first",
     description="Each checkpoint: position, head hash, time, the signed message and its signature. Verify "
     "them with `GET /v1/audit/public-key`.")
async def audit_checkpoints(request: Request, audit: NamedDependency[Audit], after: AfterParam = 0, limit: LimitParam = EVENTS_PAGE_DEFAULT) -> CheckpointsPage:
    from application.chain import checkpoint_message

    rows = await anyio.to_thread.run_sync(audit.checkpoints, after, limit)
    items = [
        CheckpointOut(i, cp.position, cp.head_hash, cp.signed_at, cp.key_id, cp.signature,
                      checkpoint_message(cp.position, cp.head_hash, cp.signed_at).decode())  # fmt: skip
        for i, cp in rows
    ]
    return CheckpointsPage(items=items, next_after=items[-1].id if len(items) == limit else None)


@get("/audit/public-key", guards=_auditor, summary="The Ed25519 public key that verifies checkpoints",
     description="404 `not_found` while no signing or public key is configured (`keel keys audit-init`; the "
     "embedded store picks its key up at start).")
async def audit_public_key(request: Request, audit: NamedDependency[Audit]) -> PublicKeyOut:
    key = audit.public_key
    if key is None:
        raise ApiError("not_found", "no audit signing key is configured")
    return PublicKeyOut(**key)


@get("/audit/access-log", guards=_auditor, summary="Who did what: writes and audit reads (PCI DSS 10.2 style)",
     description="Append-only entries: key id, role, route, target, outcome and time, for every write and "
     "audit read, refused ones included; cursor by entry id.")
async def audit_access_log(
    request: Request, audit: NamedDependency[Audit],
    after: AfterParam = 0,
    limit: LimitParam = EVENTS_PAGE_DEFAULT,
    key_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
) -> AccessPage:
    items = await anyio.to_thread.run_sync(audit.access_log, after, limit, key_id)
    return AccessPage(items=items, next_after=items[-1].id if len(items) == limit else None)


@delete("/accounts/{account_id:str}/holder", guards=[require_roles("admin")], status_code=200,
        summary="Erase the holder's personal data (crypto-shredding); balances and history stay",
        description="Destroys the holder's key and records `Account.HolderErased`: every copy of the holder "
        "becomes unreadable while balances, replays and the hash chain are untouched. " + TENANT_DOC)  # fmt: skip
async def erase_account_holder(
    request: Request, ledger: NamedDependency[Ledger], writer: NamedDependency[GroupCommitWriter], account_id: AccountIdParam, tenant: TenantParam = None
) -> AccountOut:
    aid = _uuid(account_id, "account_id")
    if ledger.holder_vault is None:
        raise ApiError("unavailable", "holder encryption is not configured")
    key = await anyio.to_thread.run_sync(account_key_for, ledger, aid, tenant)
    state = await anyio.to_thread.run_sync(erase_holder, ledger.holder_vault, ledger.account_by_key, writer.execute, key)
    return account_out(state)


router = Router(
    path="/v1",
    route_handlers=[
        audit_events,
        audit_account_events,
        audit_balance,
        audit_verify,
        audit_checkpoints,
        audit_public_key,
        audit_access_log,
        erase_account_holder,
    ],
)
