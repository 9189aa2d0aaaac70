"""`GET /v1/accounts/{id}/transactions` for `banking` keys: an account's history from the read model.

Identity: the client's account id is a public id, resolved inside the caller's tenant to the
account's storage key (`account_key(tenant, id)`, domain/identity.py) before anything is read;
the views are keyed by storage keys, so another tenant's account is simply not there: it answers
exactly like a missing one (404 `not_found`, the same body, no id in it).

Read-your-writes: before reading, the handler waits (at most WAIT_MAX_S) until the projection
has applied every event of this account that was in the log when the request arrived, so a
client always sees the transfers it was told succeeded. If the wait runs out the page is served
as it stands and `Keel-Projection-Stale: true` says so.
"""
from __future__ import annotations

from typing import Annotated
from uuid import UUID

import anyio
import msgspec
from litestar.di import NamedDependency
from litestar import Request, Response, Router, get
from litestar.params import QueryParameter

from api.schemas import AccountIdParam
from api.auth import banking_tenant, require_roles
from api.routes_banking import READ_PROBLEMS
from api.schemas import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX
from domain.errors import NotFound, ValidationFailed
from domain.identity import account_key
from infrastructure.readside import ReadSide, PAGE_MAX, WAIT_MAX_S, Page, check_limit, decode_cursor
from application.ledger import Ledger


class HistoryItem(msgspec.Struct, frozen=True):
    transfer_id: UUID
    account_id: UUID
    counterparty_id: UUID
    direction: str  # debit | credit
    # debited | credited once posted; otherwise <direction>_<status>, e.g. debit_pending, credit_voided
    type: str
    amount: int  # minor units; for a posted hold, the amount posted
    currency: str
    kind: str  # transfer | deposit | withdrawal | reversal
    status: str  # pending | posted | voided | expired
    reference: str | None
    timestamp: str  # when it was recorded (the order of the history)
    occurred_at: str  # when it happened: the client's event time, else the same as timestamp
    position: int


class HistoryPage(msgspec.Struct, frozen=True):
    items: list[HistoryItem]
    next_cursor: str | None


def _type(direction: str, status: str) -> str:
    if status == "posted":
        return "debited" if direction == "debit" else "credited"
    return f"{direction}_{status}"


def _history(
    rs: ReadSide, ledger: NamedDependency[Ledger], public_id: UUID, tenant: str, cursor: str | None, limit: int,
    last: int | None = None,
) -> tuple[Page, bool]:
    """`last`: the account's latest log position as of the request, when the caller knows it."""
    key = account_key(tenant, public_id)
    fresh = rs.wait_for_aggregate(key, WAIT_MAX_S, last)
    owner, page = rs.account_history(str(key), cursor, limit)
    if owner is None:
        # Not in the view (yet): the ledger decides between 404 and an empty history.
        ledger.get_account(public_id, tenant)
        return Page([], None), fresh
    if owner != tenant:  # cannot happen (the key is the tenant's); answered like a missing one
        raise NotFound("account not found")
    return page, fresh


@get(
    "/accounts/{account_id:str}/transactions",
    summary="An account's transactions, newest first (read model)",
    description="One row per transfer leg of this account, with counterparty, direction, status and reference. "
    "Waits up to 2 s for the read model to include every write to this account acknowledged before the request "
    "(`Keel-Projection-Stale: true` if it had not). Cursor-paginated.",
    responses=READ_PROBLEMS,
)
async def account_transactions(
    request: Request,
    read_side: NamedDependency[ReadSide],
    ledger: NamedDependency[Ledger],
    account_id: AccountIdParam,
    cursor: Annotated[str | None, QueryParameter(name="cursor", max_length=64)] = None,
    limit: Annotated[int, QueryParameter(name="limit", ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT,
) -> Response[HistoryPage]:
    tenant = banking_tenant(request)
    try:
        aid = UUID(account_id)
    except ValueError:
        raise ValidationFailed("account_id must be a UUID", field="account_id") from None
    # Bad input is a 422 whether or not the account exists (checked again by the read side).
    decode_cursor(cursor, (int,))
    check_limit(limit, maximum=min(PAGE_LIMIT_MAX, PAGE_MAX))
    page, fresh = await anyio.to_thread.run_sync(_history, read_side, ledger, aid, tenant, cursor, limit)
    items = msgspec.convert([{**i, "type": _type(i["direction"], i["status"])} for i in page.items], list[HistoryItem])
    headers = {} if fresh else {"Keel-Projection-Stale": "true"}
    return Response(HistoryPage(items=items, next_cursor=page.next_cursor), headers=headers)


router = Router(path="/v1", guards=[require_roles("banking")], tags=["banking"], route_handlers=[account_transactions])
