"""Analyst routes (SPEC §5, analytics) over the read models, for `analyst` keys.

Every filter is validated (422 `validation_error`): numbers and cursors out of range included,
never a 500. Every list is bounded and paginated with an opaque cursor. Responses carry no holder
personal data: the views never store it. Handlers only parse, call the read side in a worker
thread, and shape the answer.

Analysts see every tenant: ids in answers are public ids (the ones each tenant uses), shown with
their `tenant`, since the same public id may name accounts of several tenants. The CSV export
neutralises cells a spreadsheet would run as a formula (OWASP CSV injection).
"""
from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from litestar.di import NamedDependency
from litestar import Request, Response, Router, get
from litestar.params import QueryParameter

from api.auth import require_roles
from domain.errors import ValidationFailed
from domain.limits import TENANT_MAX_CHARS, TENANT_PATTERN
from infrastructure.readside import (
    CSV_ROWS_MAX,
    INT64_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    TOP_MAX,
    TRANSFER_CSV_FIELDS,
    ReadSide,
    to_us,
)

AMOUNT_MAX = INT64_MAX
CSV_MEDIA_TYPE = "text/csv"
TIME_CHARS_MAX = 40

Currency = Annotated[str | None, QueryParameter(name="currency", pattern="^[A-Z]{3}$", description="ISO 4217 code")]
Cursor = Annotated[str | None, QueryParameter(name="cursor", max_length=64, description="`next_cursor` of the previous page")]
From = Annotated[str | None, QueryParameter(name="from", max_length=TIME_CHARS_MAX, description="RFC 3339 time, inclusive")]
To = Annotated[str | None, QueryParameter(name="to", max_length=TIME_CHARS_MAX, description="RFC 3339 time, exclusive")]
Tenant = Annotated[
    str | None,
    QueryParameter(
        name="tenant",
        pattern=TENANT_PATTERN,
        max_length=TENANT_MAX_CHARS,
        description="Only this tenant's transfers; with `account`, the account with that public id in this tenant "
        "(without it, every tenant's account with that public id).",
    ),
]
# Cells a spreadsheet would read as a formula (OWASP CSV injection): prefixed with a quote.
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class CurrencyTotal(msgspec.Struct, frozen=True):
    currency: str
    kind: str
    accounts: int
    posted: int
    pending_debits: int
    pending_credits: int


class AccountBalance(msgspec.Struct, frozen=True):
    id: UUID
    tenant: str
    currency: str
    kind: str
    status: str
    overdraft_limit: int
    posted: int
    pending_debits: int
    pending_credits: int
    available: int
    opened_at: str


class BalancesOut(msgspec.Struct, frozen=True):
    totals: list[CurrencyTotal]
    accounts: list[AccountBalance]
    next_cursor: str | None


class VolumeBucket(msgspec.Struct, frozen=True):
    bucket_start: str
    currency: str
    amount: int  # sum of posted amounts (minor units)
    count: int  # postings


class VolumesOut(msgspec.Struct, frozen=True):
    interval: str
    items: list[VolumeBucket]


class TransferRow(msgspec.Struct, frozen=True):
    id: UUID
    tenant: str
    kind: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    posted_amount: int
    currency: str
    status: str
    reference: str | None
    reverses_id: UUID | None
    reversed_by_id: UUID | None
    timestamp: str  # when it was recorded
    occurred_at: str  # when it happened: the client's event time, else the same as timestamp
    position: int


class TransactionsOut(msgspec.Struct, frozen=True):
    items: list[TransferRow]
    next_cursor: str | None


class TopAccount(msgspec.Struct, frozen=True, omit_defaults=True):
    account_id: UUID
    tenant: str
    currency: str
    kind: str
    count: int
    inflow: int | None = None
    outflow: int | None = None


class TopAccountsOut(msgspec.Struct, frozen=True):
    by: str
    items: list[TopAccount]


class ProjectionStatus(msgspec.Struct, frozen=True):
    name: str
    position: int
    lag_events: int
    lag_ms: int


class ProjectionsOut(msgspec.Struct, frozen=True):
    head: int
    projections: list[ProjectionStatus]


def parse_time(value: str | None, name: str) -> int | None:
    """RFC 3339 with an offset, as integer microseconds since the epoch."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise ValidationFailed(f"'{name}' must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z", field=name) from None
    if ts.tzinfo is None:
        raise ValidationFailed(f"'{name}' must carry a UTC offset (Z or +hh:mm)", field=name)
    return to_us(ts)


def csv_cell(value: Any) -> Any:
    """One CSV cell: None empty, integers as they are (amounts and positions are numbers, not
    text a spreadsheet could evaluate), and a text cell that starts like a formula prefixed
    with a single quote so that it is shown, not run (e.g. a reference `=HYPERLINK(...)`)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value



@get("/balances", summary="Balances per currency and kind, and every account's balance (paginated)",
     description="From the `accounts` read model (never holder data): totals per currency and kind, then the "
     "accounts in id order, `limit` per page; filter with `currency`. Pass `next_cursor` as `cursor`.")
async def balances(
    request: Request, read_side: NamedDependency[ReadSide],
    currency: Currency = None,
    cursor: Cursor = None,
    limit: Annotated[int, QueryParameter(name="limit", ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> BalancesOut:
    out = await anyio.to_thread.run_sync(read_side.balances, currency, cursor, limit)
    return msgspec.convert(out, BalancesOut)


@get("/volumes", summary="Posted volume and count per hour or day and currency",
     description="Sums of posted amounts (minor units) and postings per `interval` bucket (UTC), optionally "
     "for one `currency` and between `from` and `to` (RFC 3339).")
async def volumes(
    request: Request, read_side: NamedDependency[ReadSide],
    currency: Currency = None,
    interval: Annotated[str, QueryParameter(name="interval", pattern="^(hour|day)$")] = "day",
    from_: From = None,
    to: To = None,
) -> VolumesOut:
    from_us, to_us_ = parse_time(from_, "from"), parse_time(to, "to")
    items = await anyio.to_thread.run_sync(read_side.volumes, currency, interval, from_us, to_us_)
    return VolumesOut(interval=interval, items=msgspec.convert(items, list[VolumeBucket]))


@get(
    "/transactions",
    summary="Transfers matching the filters, oldest first (JSON, or CSV with Accept: text/csv)",
    description=f"JSON pages hold up to {PAGE_MAX} rows; CSV up to {CSV_ROWS_MAX}, with the next cursor in the "
    "`Keel-Next-Cursor` response header. Ids are public ids, each row with its `tenant`. `account` names an account "
    "by its public id: in every tenant, or only in `tenant` when that is given. CSV cells that would start a "
    "spreadsheet formula (`=`, `+`, `-`, `@`, tab, CR) are prefixed with a single quote.",
)
async def transactions(
    request: Request, read_side: NamedDependency[ReadSide],
    account: Annotated[
        UUID | None, QueryParameter(name="account", description="An account's public id (the id its tenant uses)")
    ] = None,
    tenant: Tenant = None,
    min_amount: Annotated[int | None, QueryParameter(name="min_amount", ge=0, le=AMOUNT_MAX)] = None,
    max_amount: Annotated[int | None, QueryParameter(name="max_amount", ge=0, le=AMOUNT_MAX)] = None,
    from_: From = None,
    to: To = None,
    cursor: Cursor = None,
    limit: Annotated[int | None, QueryParameter(name="limit", ge=1, le=CSV_ROWS_MAX)] = None,
    time: Annotated[
        Literal["recorded", "occurred"],
        QueryParameter(name="time", description="Which time `from` and `to` bound: when the transfer was recorded "
                       "(`timestamp`, the default) or when it happened (`occurred_at`: the client's event time for "
                       "imported or backfilled history, else the same as `timestamp`)."),
    ] = "recorded",
) -> Response[Any]:
    wants_csv = CSV_MEDIA_TYPE in (request.headers.get("accept") or "")
    maximum = CSV_ROWS_MAX if wants_csv else PAGE_MAX
    page = await anyio.to_thread.run_sync(
        lambda: read_side.transactions(
            account=str(account) if account else None, tenant=tenant, min_amount=min_amount, max_amount=max_amount,
            from_us=parse_time(from_, "from"), to_us_=parse_time(to, "to"), cursor=cursor,
            limit=limit if limit is not None else (maximum if wants_csv else PAGE_DEFAULT), maximum=maximum,
            time=time,
        )
    )  # fmt: skip
    if wants_csv:
        buf = io.StringIO()
        # RFC 4180 line ends: the writer then quotes every cell holding a CR or LF. (With "\n" it
        # left a bare CR unquoted, which readers take as a line end: a reference "x\r=cmd()"
        # would have started a new row with a formula cell.)
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(TRANSFER_CSV_FIELDS)
        for item in page.items:
            w.writerow([csv_cell(item[f]) for f in TRANSFER_CSV_FIELDS])
        headers = {"Keel-Next-Cursor": page.next_cursor} if page.next_cursor else {}
        return Response(buf.getvalue(), media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8", headers=headers)
    return Response(TransactionsOut(items=msgspec.convert(page.items, list[TransferRow]), next_cursor=page.next_cursor))


@get("/top-accounts", summary="Accounts with the largest posted inflow or outflow over whole UTC days",
     description="Ranks accounts `by` inflow or outflow over the UTC days from `from` to `to`, at most `limit`.")
async def top_accounts(
    request: Request, read_side: NamedDependency[ReadSide],
    by: Annotated[str, QueryParameter(name="by", pattern="^(inflow|outflow)$")] = "inflow",
    from_: From = None,
    to: To = None,
    limit: Annotated[int, QueryParameter(name="limit", ge=1, le=TOP_MAX)] = 10,
) -> TopAccountsOut:
    from_us, to_us_ = parse_time(from_, "from"), parse_time(to, "to")
    items = await anyio.to_thread.run_sync(read_side.top_accounts, by, from_us, to_us_, limit)
    return TopAccountsOut(by=by, items=msgspec.convert(items, list[TopAccount]))


@get("/projections", summary="Each projection's position, the log head, and the lag",
     description="For every projection: the last log position applied, the log head, and the lag in events "
     "and milliseconds.")
async def projections(request: Request, read_side: NamedDependency[ReadSide]) -> ProjectionsOut:
    return msgspec.convert(await anyio.to_thread.run_sync(read_side.projections), ProjectionsOut)


router = Router(
    path="/v1/analytics",
    guards=[require_roles("analyst")],
    tags=["analytics"],
    route_handlers=[balances, volumes, transactions, top_accounts, projections],
)
