"""Projection logic: the ledger's events folded into read-model rows, for any store.

`project(events, lookup)` turns one batch of events (in log order, each with its notification
position, decoded into the `SeenEvent` Structs of application/seen_events.py: only the fields
the views need) into the row changes of every view; `ViewFollower` (application/view_follower.py)
reads the ledger's log from the store's tracking position and hands each batch, with the new
position, to a `ViewStore` that writes rows and position in ONE transaction. The same code serves
PostgreSQL and SQLite. This module never reads holder personal data (the `holder` of
`Account.Opened` is not even decoded) and never writes to the event store.

Views (all amounts `int` minor units, all times integer microseconds / seconds since the epoch):
  accounts   one row per account: tenant, currency, kind, status, overdraft limit, balances
  entries    one row per account leg of a transfer (history): transfer, counterparty,
             direction debit|credit, amount, status, reference, time, position
  transfers  one row per transfer: status, held/posted amounts, reversal links
  volumes    per (hour|day, bucket start, currency): posted amount and number of postings
  flows      per (account, UTC day): posted inflow and outflow, with counts (top-N queries)

Identity (domain/identity.py): every view is keyed by *storage keys* (the aggregate ids of the
log, unique across tenants), so keys, joins and the projection's own updates never mix tenants.
The *public ids* a tenant knows its objects by are stored beside them (`*public_id` columns),
decoded from the events' display fields, only to be shown: the read side answers with them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from application.seen_events import (
    SEEN_EVENTS,
    AccountClosed,
    AccountCredited,
    AccountCreditHeld,
    AccountCreditHoldSettled,
    AccountDebited,
    AccountDebitHeld,
    AccountDebitHoldSettled,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    SeenEvent,
    TransferHoldExpired,
    TransferHoldPosted,
    TransferHoldVoided,
    TransferInitiated,
    TransferReversed,
)
from domain.transfer import POSTED

# The only projection of this module; its tracking row carries this name.
VIEWS = "views"
HOUR_S = 3600
DAY_S = 86400
INTERVALS = {"hour": HOUR_S, "day": DAY_S}
DEBIT = "debit"
CREDIT = "credit"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_us(ts: datetime) -> int:
    # Exact integer arithmetic (a float timestamp would lose microseconds far from 1970).
    d = ts - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


# Column order of each view's rows (the store's DDL uses the same order).
# `*_id` columns hold storage keys, `*public_id` columns the matching public ids (for display).
ACCOUNT_COLUMNS = (
    "account_id", "tenant", "currency", "kind", "status", "overdraft_limit_minor",
    "posted_minor", "pending_debits_minor", "pending_credits_minor", "opened_at_us", "position",
    "public_id",
)  # fmt: skip
ENTRY_COLUMNS = (
    "account_id", "position", "transfer_id", "counterparty_id", "direction", "amount_minor",
    "currency", "kind", "status", "reference", "at_us", "tenant",
    "account_public_id", "transfer_public_id", "counterparty_public_id", "occurred_at_us",
)  # fmt: skip
TRANSFER_COLUMNS = (
    "transfer_id", "position", "tenant", "kind", "debit_account_id", "credit_account_id", "amount_minor",
    "posted_amount_minor", "currency", "status", "reference", "reverses_id", "reversed_by_id", "at_us",
    "public_id", "debit_public_id", "credit_public_id", "reverses_public_id", "reversed_by_public_id",
    "occurred_at_us",
)  # fmt: skip
VOLUME_COLUMNS = ("period", "bucket_s", "currency", "amount_minor", "count")
FLOW_COLUMNS = ("account_id", "day_s", "inflow_minor", "outflow_minor", "inflow_count", "outflow_count")

_A = {c: i for i, c in enumerate(ACCOUNT_COLUMNS)}
_E = {c: i for i, c in enumerate(ENTRY_COLUMNS)}
_T = {c: i for i, c in enumerate(TRANSFER_COLUMNS)}


class Changes:
    """Row changes of one batch, already folded: one insert or one delta per key."""

    def __init__(self) -> None:
        # Accounts opened in this batch: the complete row (later events of the batch folded in).
        self.new_accounts: dict[str, list[Any]] = {}
        # Accounts opened earlier: balance deltas [posted, pending_debits, pending_credits].
        self.account_deltas: dict[str, list[int]] = {}
        self.account_status: dict[str, str] = {}
        self.new_transfers: dict[str, list[Any]] = {}
        self.new_entries: dict[str, list[list[Any]]] = {}  # transfer id -> its two legs
        # Transfers initiated earlier: the columns that change (status, posted amount, reversal).
        self.transfer_updates: dict[str, dict[str, Any]] = {}
        self.volumes: dict[tuple[str, int, str], list[int]] = {}
        self.flows: dict[tuple[str, int], list[int]] = {}

    def entry_rows(self) -> list[list[Any]]:
        return [leg for legs in self.new_entries.values() for leg in legs]


# Given transfer ids initiated in an earlier batch, their currencies (read from the view).
CurrencyLookup = Callable[[set[str]], dict[str, str]]


def project(events: Sequence[tuple[int, SeenEvent | None]], lookup: CurrencyLookup) -> Changes:
    """Folds `(position, event)` pairs, in log order, into the changes of every view.

    An event of None stands for a position whose event changes no view.
    """
    ch = Changes()
    missing = {e.originator_id for _, e in events if type(e) is TransferHoldPosted}
    if missing:
        missing -= {e.originator_id for _, e in events if type(e) is TransferInitiated}
    currencies = lookup(missing) if missing else {}
    for position, e in events:
        if e is not None:
            _HANDLERS[type(e)](ch, position, e, currencies)
    return ch


# ---- accounts -----------------------------------------------------------------------------


def _balance(ch: Changes, account_id: str, d_posted: int, d_pd: int, d_pc: int) -> None:
    key = str(account_id)
    row = ch.new_accounts.get(key)
    if row is not None:
        row[_A["posted_minor"]] += d_posted
        row[_A["pending_debits_minor"]] += d_pd
        row[_A["pending_credits_minor"]] += d_pc
        return
    delta = ch.account_deltas.get(key)
    if delta is None:
        ch.account_deltas[key] = [d_posted, d_pd, d_pc]
    else:
        delta[0] += d_posted
        delta[1] += d_pd
        delta[2] += d_pc


def _flow(ch: Changes, account_id: str, ts: datetime, inflow: int, outflow: int) -> None:
    key = (str(account_id), to_us(ts) // 1_000_000 // DAY_S * DAY_S)
    f = ch.flows.get(key)
    if f is None:
        ch.flows[key] = [inflow, outflow, 1 if inflow else 0, 1 if outflow else 0]
    else:
        f[0] += inflow
        f[1] += outflow
        f[2] += 1 if inflow else 0
        f[3] += 1 if outflow else 0


def _status(ch: Changes, account_id: str, status: str) -> None:
    key = str(account_id)
    row = ch.new_accounts.get(key)
    if row is not None:
        row[_A["status"]] = status
    else:
        ch.account_status[key] = status


def _opened(ch: Changes, position: int, e: AccountOpened, _: dict[str, str]) -> None:
    ch.new_accounts[e.originator_id] = [
        e.originator_id, e.tenant, e.currency, e.kind, "open", e.overdraft_limit_minor,
        0, 0, 0, to_us(e.timestamp), position, e.public_id,
    ]  # fmt: skip


def _debited(ch: Changes, position: int, e: AccountDebited, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, -e.amount_minor, 0, 0)
    _flow(ch, e.originator_id, e.occurred_at or e.timestamp, 0, e.amount_minor)


def _credited(ch: Changes, position: int, e: AccountCredited, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, e.amount_minor, 0, 0)
    _flow(ch, e.originator_id, e.occurred_at or e.timestamp, e.amount_minor, 0)


def _debit_held(ch: Changes, position: int, e: AccountDebitHeld, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, 0, e.amount_minor, 0)


def _credit_held(ch: Changes, position: int, e: AccountCreditHeld, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, 0, 0, e.amount_minor)


def _debit_settled(ch: Changes, position: int, e: AccountDebitHoldSettled, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, -e.posted_minor, -e.held_minor, 0)
    if e.posted_minor:
        _flow(ch, e.originator_id, e.timestamp, 0, e.posted_minor)


def _credit_settled(ch: Changes, position: int, e: AccountCreditHoldSettled, _: dict[str, str]) -> None:
    _balance(ch, e.originator_id, e.posted_minor, 0, -e.held_minor)
    if e.posted_minor:
        _flow(ch, e.originator_id, e.timestamp, e.posted_minor, 0)


def _frozen(ch: Changes, position: int, e: Any, _: dict[str, str]) -> None:
    _status(ch, e.originator_id, "frozen")


def _unfrozen(ch: Changes, position: int, e: Any, _: dict[str, str]) -> None:
    _status(ch, e.originator_id, "open")


def _closed(ch: Changes, position: int, e: Any, _: dict[str, str]) -> None:
    _status(ch, e.originator_id, "closed")


# ---- transfers ----------------------------------------------------------------------------


def _volume(ch: Changes, ts: datetime, currency: str, amount_minor: int) -> None:
    seconds = to_us(ts) // 1_000_000
    for interval, width in INTERVALS.items():
        key = (interval, seconds // width * width, currency)
        v = ch.volumes.get(key)
        if v is None:
            ch.volumes[key] = [amount_minor, 1]
        else:
            v[0] += amount_minor
            v[1] += 1


def _initiated(ch: Changes, position: int, e: TransferInitiated, _: dict[str, str]) -> None:
    tid = e.originator_id
    status = "pending" if e.pending else POSTED
    at_us = to_us(e.timestamp)
    occurred = e.occurred_at or e.timestamp  # event time: analytics bucket by it (README, "History and event time")
    occurred_us = to_us(occurred)
    debit, credit = e.debit_account_id, e.credit_account_id
    pub, debit_pub, credit_pub = e.public_id, e.debit_public_id, e.credit_public_id
    ch.new_transfers[tid] = [
        tid, position, e.tenant, e.kind, debit, credit, e.amount_minor,
        0 if e.pending else e.amount_minor, e.currency, status, e.reference,
        e.reverses_id, None, at_us, pub, debit_pub, credit_pub, e.reverses_public_id, None, occurred_us,
    ]  # fmt: skip
    ch.new_entries[tid] = [
        [debit, position, tid, credit, DEBIT, e.amount_minor, e.currency, e.kind, status, e.reference, at_us, e.tenant,
         debit_pub, pub, credit_pub, occurred_us],
        [credit, position, tid, debit, CREDIT, e.amount_minor, e.currency, e.kind, status, e.reference, at_us, e.tenant,
         credit_pub, pub, debit_pub, occurred_us],
    ]  # fmt: skip
    if not e.pending:
        _volume(ch, occurred, e.currency, e.amount_minor)


def _transfer_change(ch: Changes, transfer_id: str, **columns: Any) -> None:
    tid = str(transfer_id)
    row = ch.new_transfers.get(tid)
    if row is not None:
        for name, value in columns.items():
            row[_T[name]] = value
        for leg in ch.new_entries[tid]:
            if "status" in columns:
                leg[_E["status"]] = columns["status"]
            if "posted_amount_minor" in columns:
                leg[_E["amount_minor"]] = columns["posted_amount_minor"]
        return
    ch.transfer_updates.setdefault(tid, {}).update(columns)


def _hold_posted(ch: Changes, position: int, e: TransferHoldPosted, currencies: dict[str, str]) -> None:
    tid = str(e.originator_id)
    row = ch.new_transfers.get(tid)
    currency = row[_T["currency"]] if row is not None else currencies.get(tid)
    # A currency must be known: the transfer's Initiated event precedes this one in the log.
    assert currency is not None, f"HoldPosted for transfer {tid} that the view never saw initiated"
    _transfer_change(ch, e.originator_id, status=POSTED, posted_amount_minor=e.amount_minor)
    _volume(ch, e.timestamp, currency, e.amount_minor)


def _hold_voided(ch: Changes, position: int, e: Any, _: dict[str, str]) -> None:
    _transfer_change(ch, e.originator_id, status="voided")


def _hold_expired(ch: Changes, position: int, e: Any, _: dict[str, str]) -> None:
    _transfer_change(ch, e.originator_id, status="expired")


def _reversed(ch: Changes, position: int, e: TransferReversed, _: dict[str, str]) -> None:
    _transfer_change(ch, e.originator_id, reversed_by_id=e.reversal_id, reversed_by_public_id=e.reversal_public_id)


_HANDLERS: dict[type, Callable[[Changes, int, Any, dict[str, str]], None]] = {
    AccountOpened: _opened,
    AccountDebited: _debited,
    AccountCredited: _credited,
    AccountDebitHeld: _debit_held,
    AccountCreditHeld: _credit_held,
    AccountDebitHoldSettled: _debit_settled,
    AccountCreditHoldSettled: _credit_settled,
    AccountFrozen: _frozen,
    AccountUnfrozen: _unfrozen,
    AccountClosed: _closed,
    TransferInitiated: _initiated,
    TransferHoldPosted: _hold_posted,
    TransferHoldVoided: _hold_voided,
    TransferHoldExpired: _hold_expired,
    TransferReversed: _reversed,
}
assert set(_HANDLERS) == set(SEEN_EVENTS.values())
