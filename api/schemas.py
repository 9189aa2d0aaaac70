"""Wire types of the banking API (request and response bodies) and their conversions.

Requests are strict msgspec Structs: unknown fields, floats or strings for amounts, negative
amounts and malformed UUIDs or currencies fail decoding and become 422 `validation_error`.
Rules that need state (balances, metadata size, ...) are checked by the domain. Wire names
(`amount`, `posted`, ...) differ from the domain's (`amount_minor`, ...): convert only here.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

import msgspec
from litestar.params import PathParameter
from litestar import Request
from msgspec import Meta

from api.currencies import CurrencyCode
from api.errors import ApiError
from application.commands import AccountState, TransferState
from domain.limits import HOLD_TIMEOUT_MAX_S, REFERENCE_MAX_CHARS

T = TypeVar("T")

AMOUNT_MAX_MINOR = 2**63 - 1
BATCH_ITEMS_MAX = 1000
PAGE_LIMIT_MAX = 200
PAGE_LIMIT_DEFAULT = 50
HOLDER_FIELD_MAX_CHARS = 256

Amount = Annotated[
    int,
    Meta(
        ge=1,
        le=AMOUNT_MAX_MINOR,
        description="Amount in minor units (e.g. cents) as a JSON integer; any float, even `2500.0`, is rejected.",
        examples=[2500],
    ),
]
Currency = Annotated[
    CurrencyCode,
    Meta(description="An ISO 4217 currency code, upper case (api/currencies.py); any other is 422.", examples=["EUR"]),
]
Reference = Annotated[str, Meta(max_length=REFERENCE_MAX_CHARS, description="Free text shown to the customer.")]
Metadata = Annotated[
    dict[str, Any], Meta(description="Any JSON object up to 4 KiB, stored with the object and returned as given.")
]
TimeoutSeconds = Annotated[
    int, Meta(ge=1, le=HOLD_TIMEOUT_MAX_S, description="Seconds until an unposted hold expires (pending only).")
]
OverdraftLimit = Annotated[
    int, Meta(ge=0, le=AMOUNT_MAX_MINOR, description="How far below zero `available` may go, in minor units.")
]
HolderText = Annotated[str, Meta(min_length=1, max_length=HOLDER_FIELD_MAX_CHARS)]


class Holder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Personal data of the account holder (encrypted per holder; erasable)."""

    name: HolderText
    email: HolderText | None = None


OccurredAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description="When it happened (RFC 3339 with an offset), for history imported or backfilled; default: "
        "when it is recorded. At most 5 minutes ahead of the server's clock, not before the accounts were "
        "opened, and at most 1 hour before the latest event time already on either account (422 `event_time_out_of_range` otherwise). "
        "Balances and ordering always follow recording order; histories and analytics show both times.",
        examples=["2026-11-03T14:05:00Z"],
    ),
]


class AccountCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    currency: Currency
    id: UUID | None = None
    overdraft_limit: OverdraftLimit = 0
    holder: Holder | None = None
    metadata: Metadata | None = None
    occurred_at: OccurredAt | None = None


class TransferCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    debit_account_id: UUID
    credit_account_id: UUID
    amount: Amount
    currency: Currency
    id: UUID | None = None
    reference: Reference | None = None
    metadata: Metadata | None = None
    pending: bool = False
    timeout_seconds: TimeoutSeconds | None = None
    occurred_at: OccurredAt | None = None


class MoneyMovement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A deposit (settlement -> account) or a withdrawal (account -> settlement)."""

    account_id: UUID
    amount: Amount
    currency: Currency
    id: UUID | None = None
    reference: Reference | None = None
    metadata: Metadata | None = None
    occurred_at: OccurredAt | None = None


class BatchCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    transfers: Annotated[list[TransferCreate], Meta(min_length=1, max_length=BATCH_ITEMS_MAX)]
    atomic: bool = False


class PostHold(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Amount | None = None


# ---- responses -------------------------------------------------------------------------------


class AccountOut(msgspec.Struct, frozen=True):
    id: UUID
    currency: str
    kind: str
    status: str
    overdraft_limit: int
    posted: int
    pending_debits: int
    pending_credits: int
    available: int
    holder: dict[str, Any] | None
    metadata: dict[str, Any]
    version: int


class TransferOut(msgspec.Struct, frozen=True):
    id: UUID
    kind: str
    status: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    posted_amount: int
    currency: str
    reference: str | None
    metadata: dict[str, Any]
    pending: bool  # true only while the hold is pending (status "pending")
    two_phase: bool  # created with `"pending": true` (a hold), whatever its status now
    timeout_seconds: int | None
    reverses_id: UUID | None
    reversed_by_id: UUID | None
    created_at: str
    occurred_at: str  # when it happened: as the client said, else when it was recorded


class ProblemOut(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    detail: str
    code: str


class BatchItemOut(msgspec.Struct, frozen=True):
    index: int
    ok: bool
    transfer: TransferOut | None = None
    # The item's problem: type, title, status, detail, code and its details (e.g. `available`).
    error: dict[str, Any] | None = None


class BatchOut(msgspec.Struct, frozen=True):
    atomic: bool
    results: list[BatchItemOut]


class AccountPage(msgspec.Struct, frozen=True):
    items: list[AccountOut]
    next_cursor: str | None


async def strict_body(request: Request[Any, Any, Any], type_: type[T], *, empty: T | None = None) -> T:
    """The body decoded strictly: Litestar's own decoding coerces "25" to 25; money must not."""
    body = await request.body()
    # No body, or JSON null (the documented body is optional and nullable): the empty request.
    if body.strip() in (b"", b"null") and empty is not None:
        return empty
    try:
        return msgspec.json.decode(body, type=type_, strict=True)
    except msgspec.ValidationError as e:
        raise ApiError("validation_error", str(e)) from None
    except msgspec.DecodeError:
        raise ApiError("validation_error", "the request body is not valid JSON") from None


UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Path ids stay `str` so a malformed one is a 422 problem (not Litestar's 404 for no route);
# the pattern documents (and enforces) the UUID form in the OpenAPI document.
AccountIdParam = Annotated[str, PathParameter(description="The account's UUID", pattern=UUID_PATTERN)]
TransferIdParam = Annotated[str, PathParameter(description="The transfer's UUID", pattern=UUID_PATTERN)]
AlertIdParam = Annotated[str, PathParameter(description="The alert's UUID", pattern=UUID_PATTERN)]


def parse_uuid(value: str, name: str) -> UUID:
    """A path parameter as a UUID; a malformed one is 422 `validation_error` (not a 404)."""
    try:
        return UUID(value)
    except ValueError:
        raise ApiError("validation_error", f"{name} must be a UUID", field=name) from None


SEALED_MARK = "__sealed__"  # a holder still sealed in a body on its way out (api.idempotency.reveal_holder)


def account_out(a: AccountState, *, sealed: bool = False) -> AccountOut:
    """`sealed`: keep the holder in its stored (encrypted) form, for a body that may be stored as
    an idempotent response; it is revealed just before it is sent, and never after an erasure."""
    holder = {SEALED_MARK: a.sealed_holder} if sealed and a.sealed_holder is not None else a.holder
    return AccountOut(
        id=a.id,
        currency=a.currency,
        kind=a.kind,
        status=a.status,
        overdraft_limit=a.overdraft_limit_minor,
        posted=a.posted_minor,
        pending_debits=a.pending_debits_minor,
        pending_credits=a.pending_credits_minor,
        available=a.available_minor,
        holder=holder,
        metadata=a.metadata,
        version=a.version,
    )


def transfer_out(t: TransferState) -> TransferOut:
    return TransferOut(
        id=t.id,
        kind=t.kind,
        status=t.status,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount=t.amount_minor,
        posted_amount=t.posted_amount_minor,
        currency=t.currency,
        reference=t.reference,
        metadata=t.metadata,
        pending=t.status == "pending",
        two_phase=t.pending,
        timeout_seconds=t.timeout_s,
        reverses_id=t.reverses_id,
        reversed_by_id=t.reversed_by_id,
        created_at=t.created_at,
        occurred_at=t.occurred_at or t.created_at,
    )
