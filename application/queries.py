"""The account list of the banking API, answered by the event store directly.

Accounts of a tenant are found by following `Account.Opened` notifications (cursor =
notification id); each page is bounded by its limit and by a scan limit, so no request reads
the whole log. (Account histories come from the read model: api/routes_history.py.) Never writes.
"""
from __future__ import annotations

import msgspec
from eventsourcing.utils import get_topic

from application.commands import AccountState
from application.ledger import Ledger
from domain.account import Account
from domain.errors import NotFound

SCAN_NOTIFICATIONS_MAX = 5000  # rows looked at per page of accounts, whatever the tenant

_OPENED_TOPIC = get_topic(Account.Opened)


class AccountsPage(msgspec.Struct, frozen=True):
    items: list[AccountState]
    next_cursor: int | None  # notification id to continue after; None at the end of the log


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
                items.append(ledger.account_by_key(event.originator_id, tenant))
            except NotFound:
                continue
            if len(items) >= limit:
                return AccountsPage(items=items, next_cursor=position)
        if len(notifications) < chunk:
            return AccountsPage(items=items, next_cursor=None)
    return AccountsPage(items=items, next_cursor=position)


__all__ = ["AccountsPage", "list_accounts"]
