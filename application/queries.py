"""Read-side queries of the banking API that the event store answers directly.

Until read models serve them, lists are built from the log: accounts of a tenant by following
`Account.Opened` notifications (cursor = notification id), and an account's transactions from
its own event stream, newest first (cursor = aggregate version). Every query is bounded by a
page limit and by a scan limit, so no request reads the whole log. Never writes.
"""
from __future__ import annotations

from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from application.commands import AccountState
from application.ledger import Ledger
from domain.account import Account
from domain.errors import NotFound

SCAN_NOTIFICATIONS_MAX = 5000  # rows looked at per page of accounts, whatever the tenant
SCAN_EVENTS_MAX = 1000  # events looked at per page of transactions

_OPENED_TOPIC = get_topic(Account.Opened)
_MOVEMENTS: dict[type, str] = {
    Account.Debited: "debited",
    Account.Credited: "credited",
    Account.DebitHeld: "debit_held",
    Account.CreditHeld: "credit_held",
    Account.DebitHoldSettled: "debit_settled",
    Account.CreditHoldSettled: "credit_settled",
}


class AccountsPage(msgspec.Struct, frozen=True):
    items: list[AccountState]
    next_cursor: int | None  # notification id to continue after; None at the end of the log


class Movement(msgspec.Struct, frozen=True):
    transfer_id: UUID
    type: str
    amount_minor: int
    version: int
    at: str


class MovementsPage(msgspec.Struct, frozen=True):
    items: list[Movement]
    next_cursor: int | None  # version to continue below


def list_accounts(ledger: Ledger, tenant: str, after: int, limit: int) -> AccountsPage:
    """The tenant's customer accounts opened after notification `after`, oldest first."""
    assert limit >= 1
    items: list[AccountState] = []
    position = after
    scanned = 0
    while scanned < SCAN_NOTIFICATIONS_MAX:
        chunk = min(500, SCAN_NOTIFICATIONS_MAX - scanned)
        notifications = ledger.recorder.select_notifications(
            position, chunk, topics=[_OPENED_TOPIC], inclusive_of_start=False
        )
        if not notifications:
            return AccountsPage(items=items, next_cursor=None)
        for n in notifications:
            position = n.id
            scanned += 1
            event = ledger.mapper.to_domain_event(n)
            if getattr(event, "tenant", None) != tenant or getattr(event, "kind", None) == "settlement":
                continue
            try:
                items.append(ledger.get_account(event.originator_id, tenant))
            except NotFound:
                continue
            if len(items) >= limit:
                return AccountsPage(items=items, next_cursor=position)
        if len(notifications) < chunk:
            return AccountsPage(items=items, next_cursor=None)
    return AccountsPage(items=items, next_cursor=position)


def account_movements(ledger: Ledger, account_id: UUID, tenant: str, before: int | None, limit: int) -> MovementsPage:
    """Balance changes of one account (tenant-checked), newest first, below version `before`."""
    assert limit >= 1
    ledger.get_account(account_id, tenant)  # NotFound for another tenant's account
    items: list[Movement] = []
    lte = None if before is None else before - 1
    if lte is not None and lte < 1:
        return MovementsPage(items=[], next_cursor=None)
    last_version: int | None = None
    for event in ledger.events.get(account_id, lte=lte, desc=True, limit=SCAN_EVENTS_MAX):
        last_version = event.originator_version
        kind = _MOVEMENTS.get(type(event))
        if kind is None:
            continue
        amount = getattr(event, "amount_minor", None)
        if amount is None:
            amount = event.posted_minor  # settled holds: what became final
        items.append(
            Movement(
                transfer_id=event.transfer_id,
                type=kind,
                amount_minor=amount,
                version=event.originator_version,
                at=event.timestamp.isoformat(),
            )
        )
        if len(items) >= limit:
            return MovementsPage(items=items, next_cursor=event.originator_version)
    if last_version is not None and last_version > 1:
        # The scan limit ran out before the account's first event: let the client continue.
        return MovementsPage(items=items, next_cursor=last_version)
    return MovementsPage(items=items, next_cursor=None)


__all__ = ["AccountsPage", "Movement", "MovementsPage", "account_movements", "list_accounts"]
