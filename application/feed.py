"""The event feed: the ledger's (and the fraud module's) events as a tenant's business events.

`FeedFold` turns events read from the logs, in log order, into feed rows — one tenant, one
stable public type (`transfer.posted`, `account.frozen`, ...) and the event's rendered JSON —
and keeps a small public picture of each object it has seen (an account's status, a transfer's
accounts and amounts) so that a later event of that object (`Transfer.HoldPosted` carries only
an amount) renders whole. A feed row carries the tenant's *public* ids only (domain/identity.py),
never a storage key and never holder data: the fold does not even decode `holder`.

Feed rows are numbered by the feed itself (`id`, strictly increasing in commit order, one writer
at a time: infrastructure/feed.py), so events of two logs (ledger, fraud) interleave in one order.
The cursor a client holds is that number, opaque (`encode_cursor`), and checked like any input.
This module is pure: no I/O, no clock.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

import msgspec
from eventsourcing.utils import get_topic

from application.seen_events import SeenDecoder, seen_decoder
from domain.account import Account
from domain.errors import ValidationFailed
from domain.transfer import Transfer

FEED = "feed"  # the feed's own tracking row: the last feed id written
LEDGER_SOURCE = "ledger"
FRAUD_SOURCE = "fraud"
EVENT_ID_NAMESPACE = UUID("5f0e4b0a-6c3d-4e51-9a7e-2b8d1c4f6a10")
CURSOR_VERSION = "f1"
CURSOR_CHARS_MAX = 64
FEED_ID_MAX = 2**63 - 1
PAGE_MAX = 500
PAGE_DEFAULT = 100
TYPES_MAX = 32  # types named in one filter

# ---- the public types -------------------------------------------------------------------------
ACCOUNT_OPENED = "account.opened"
ACCOUNT_FROZEN = "account.frozen"
ACCOUNT_UNFROZEN = "account.unfrozen"
ACCOUNT_CLOSED = "account.closed"
ACCOUNT_HOLDER_ERASED = "account.holder_erased"
TRANSFER_CREATED = "transfer.created"
TRANSFER_POSTED = "transfer.posted"
TRANSFER_VOIDED = "transfer.voided"
TRANSFER_EXPIRED = "transfer.expired"
TRANSFER_REVERSED = "transfer.reversed"
DEPOSIT_CREATED = "deposit.created"
WITHDRAWAL_CREATED = "withdrawal.created"
FRAUD_ALERT_OPENED = "fraud.alert_opened"
FRAUD_ALERT_REVIEWED = "fraud.alert_reviewed"

# Every public type with what it means: documented in OpenAPI and docs/realtime.md from here.
EVENT_TYPES: dict[str, str] = {
    ACCOUNT_OPENED: "An account was opened (also a settlement account, made on the first deposit or withdrawal in a currency).",
    ACCOUNT_FROZEN: "An account was frozen: no debits until it is unfrozen.",
    ACCOUNT_UNFROZEN: "A frozen account was unfrozen.",
    ACCOUNT_CLOSED: "An account was closed.",
    ACCOUNT_HOLDER_ERASED: "The account holder's personal data was erased (crypto-shredded).",
    TRANSFER_CREATED: "A transfer (or a reversal, `kind: reversal`) was accepted: `status` is `pending` for a hold, else `posted`.",
    TRANSFER_POSTED: "Money moved: an immediate transfer or reversal as it is created, or a hold when it is posted "
    "(`posted_amount`; also deposits and withdrawals made as holds).",
    TRANSFER_VOIDED: "A hold was voided: nothing moved.",
    TRANSFER_EXPIRED: "A hold expired unposted: nothing moved.",
    TRANSFER_REVERSED: "A posted transfer was reversed by a new compensating transfer (`reversed_by_id`).",
    DEPOSIT_CREATED: "A deposit (from the tenant's settlement account) was accepted; `status` says posted or pending.",
    WITHDRAWAL_CREATED: "A withdrawal (to the tenant's settlement account) was accepted; `status` says posted or pending.",
    FRAUD_ALERT_OPENED: "Fraud scoring rated one of the tenant's transfers high and opened an alert (`score`, `reasons`).",
    FRAUD_ALERT_REVIEWED: "An analyst reviewed a fraud alert on one of the tenant's transfers (`label`: fraud or legit).",
}


# ---- cursors ----------------------------------------------------------------------------------


def encode_cursor(feed_id: int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([CURSOR_VERSION, feed_id])).decode().rstrip("=")


def decode_cursor(cursor: str | None, field: str = "after") -> int:
    """The feed id inside a cursor (0: from the start); ValidationFailed for anything else."""
    if cursor is None or cursor == "":
        return 0
    if len(cursor) > CURSOR_CHARS_MAX or not cursor.isascii():
        raise ValidationFailed(f"{field}: not a cursor of this feed", field=field)
    try:
        raw = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed(f"{field}: not a cursor of this feed", field=field) from None
    if not (isinstance(raw, list) and len(raw) == 2 and raw[0] == CURSOR_VERSION and type(raw[1]) is int):
        raise ValidationFailed(f"{field}: not a cursor of this feed", field=field)
    if not 0 <= raw[1] <= FEED_ID_MAX:
        raise ValidationFailed(f"{field}: cursor out of range", field=field)
    return int(raw[1])


def parse_types(types: str | Iterable[str] | None, field: str = "types") -> frozenset[str] | None:
    """A filter of public types (comma-separated or a list); None: every type. `*` means every type."""
    if types is None:
        return None
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types)]
    names = [t for t in names if t]
    if not names:
        raise ValidationFailed(f"{field}: name at least one event type (or `*`)", field=field)
    if len(names) > TYPES_MAX:
        raise ValidationFailed(f"{field}: at most {TYPES_MAX} types", field=field)
    if "*" in names:
        return None
    unknown = sorted({t for t in names if t not in EVENT_TYPES})
    if unknown:
        shown = ", ".join(u[:40] for u in unknown[:5])
        raise ValidationFailed(f"{field}: unknown event type(s) {shown}; known: {', '.join(EVENT_TYPES)}", field=field)
    return frozenset(names)


def event_id(source: str, position: int, seq: int) -> UUID:
    """The public id of the `seq`-th feed event made from the event at `position` of `source`:
    the same whenever the feed is made from the same log."""
    return uuid5(EVENT_ID_NAMESPACE, f"{source}:{position}:{seq}")


# ---- what the fold decodes of the ledger's events (no holder, no metadata) ----------------------


class _Event(msgspec.Struct, kw_only=True):
    originator_id: str = ""  # set from the stored event's column
    timestamp: datetime
    occurred_at: datetime | None = None  # event time, when the client said (issue #15)


class _Opened(_Event):
    tenant: str
    public_id: str
    currency: str
    kind: str
    overdraft_limit_minor: int


class _Bare(_Event):
    pass


class _Initiated(_Event):
    tenant: str
    public_id: str
    kind: str
    debit_public_id: str
    credit_public_id: str
    amount_minor: int
    currency: str
    reference: str | None
    pending: bool
    reverses_public_id: str | None


class _HoldPosted(_Event):
    amount_minor: int


class _Reversed(_Event):
    reversal_public_id: str


# Stored topic -> (decoded Struct, what the fold does with it). Other ledger topics (the account
# legs of a transfer: Debited, Credited, holds) make no feed event and are never decoded.
_LEDGER: dict[type, tuple[type[_Event], str]] = {
    Account.Opened: (_Opened, "account_opened"),
    Account.Frozen: (_Bare, ACCOUNT_FROZEN),
    Account.Unfrozen: (_Bare, ACCOUNT_UNFROZEN),
    Account.Closed: (_Bare, ACCOUNT_CLOSED),
    Account.HolderErased: (_Bare, ACCOUNT_HOLDER_ERASED),
    Transfer.Initiated: (_Initiated, "transfer_initiated"),
    Transfer.HoldPosted: (_HoldPosted, TRANSFER_POSTED),
    Transfer.HoldVoided: (_Bare, TRANSFER_VOIDED),
    Transfer.HoldExpired: (_Bare, TRANSFER_EXPIRED),
    Transfer.Reversed: (_Reversed, TRANSFER_REVERSED),
}
LEDGER_TOPICS: dict[str, str] = {get_topic(cls): action for cls, (_, action) in _LEDGER.items()}
# Events that create their object (everything else needs the object's picture).
_CREATING = {"account_opened", "transfer_initiated"}
# The fraud module's topics, by name: application never imports fraud/ (its events are read
# generically, by attribute, from the fraud mapper's domain events).
FRAUD_ALERT_OPENED_TOPIC = "fraud.app:Alert.Opened"
FRAUD_ALERT_REVIEWED_TOPIC = "fraud.app:Alert.Reviewed"
FRAUD_TOPICS = (FRAUD_ALERT_OPENED_TOPIC, FRAUD_ALERT_REVIEWED_TOPIC)


def ledger_decoders() -> dict[str, SeenDecoder]:
    """Stored topic -> decoder of its plaintext state (upcasting evolved classes, like the views')."""
    return {get_topic(cls): seen_decoder(cls, struct) for cls, (struct, _) in _LEDGER.items()}


def ledger_needs_lookup(topic: str) -> bool:
    """Whether an event of `topic` needs its object's picture (it does not create the object)."""
    action = LEDGER_TOPICS.get(topic)
    return action is not None and action not in _CREATING


# ---- the fold -----------------------------------------------------------------------------------


class FeedObject(msgspec.Struct):
    """The public picture of one object the feed has seen, keyed by its storage key."""

    tenant: str
    data: dict[str, Any]


class FeedRow(msgspec.Struct, frozen=True):
    id: int
    tenant: str
    type: str
    body: bytes  # the event as the feed serves it: {id, type, occurred_at, recorded_at, data, cursor}


class FeedEnvelope(msgspec.Struct, frozen=True):
    """One event of a tenant's feed (the body of GET /v1/events items and of webhook deliveries)."""

    id: UUID
    type: str
    occurred_at: str
    recorded_at: str
    data: dict[str, Any]
    cursor: str


_encode = msgspec.json.Encoder()


class FeedFold:
    """Folds log events into feed rows. `objects` is the picture of every object seen so far that
    the caller has loaded or the fold has made; `changed` names the ones to store."""

    def __init__(self, next_id: int) -> None:
        assert next_id >= 1, "feed ids start at 1"
        self.next_id = next_id
        self.rows: list[FeedRow] = []
        self.objects: dict[str, FeedObject] = {}
        self.changed: set[str] = set()

    def _emit(self, tenant: str, type_: str, source: str, position: int, seq: int, recorded: datetime,
              occurred: datetime | None, data: dict[str, Any]) -> None:  # fmt: skip
        feed_id = self.next_id
        self.next_id += 1
        envelope = FeedEnvelope(
            id=event_id(source, position, seq),
            type=type_,
            occurred_at=(occurred or recorded).isoformat(),
            recorded_at=recorded.isoformat(),
            data=data,
            cursor=encode_cursor(feed_id),
        )
        self.rows.append(FeedRow(id=feed_id, tenant=tenant, type=type_, body=_encode.encode(envelope)))

    def _put(self, key: str, tenant: str, data: dict[str, Any]) -> FeedObject:
        obj = FeedObject(tenant=tenant, data=data)
        self.objects[key] = obj
        self.changed.add(key)
        return obj

    def ledger(self, position: int, topic: str, event: Any) -> None:
        """One ledger event (decoded by `ledger_decoders()`), in log order. An event whose object
        the fold has no picture of (made before the feed existed, or not loaded) is skipped."""
        action = LEDGER_TOPICS.get(topic)
        if action is None:
            return
        key = event.originator_id
        recorded, occurred = event.timestamp, event.occurred_at
        if action == "account_opened":
            data = {
                "id": event.public_id, "currency": event.currency, "kind": event.kind, "status": "open",
                "overdraft_limit": event.overdraft_limit_minor,
            }  # fmt: skip
            self._put(key, event.tenant, data)
            self._emit(event.tenant, ACCOUNT_OPENED, LEDGER_SOURCE, position, 0, recorded, occurred, dict(data))
            return
        if action == "transfer_initiated":
            data = {
                "id": event.public_id, "kind": event.kind,
                "debit_account_id": event.debit_public_id, "credit_account_id": event.credit_public_id,
                "amount": event.amount_minor, "currency": event.currency, "reference": event.reference,
                "pending": event.pending, "status": "pending" if event.pending else "posted",
                "posted_amount": None if event.pending else event.amount_minor,
                "reverses_id": event.reverses_public_id, "reversed_by_id": None,
            }  # fmt: skip
            self._put(key, event.tenant, data)
            created = {"deposit": DEPOSIT_CREATED, "withdrawal": WITHDRAWAL_CREATED}.get(event.kind, TRANSFER_CREATED)
            self._emit(event.tenant, created, LEDGER_SOURCE, position, 0, recorded, occurred, dict(data))
            if not event.pending and event.kind in ("transfer", "reversal"):
                self._emit(event.tenant, TRANSFER_POSTED, LEDGER_SOURCE, position, 1, recorded, occurred, dict(data))
            return
        obj = self.objects.get(key)
        if obj is None:
            return
        data = dict(obj.data)
        if action == ACCOUNT_FROZEN:
            data["status"] = "frozen"
        elif action == ACCOUNT_UNFROZEN:
            data["status"] = "open"
        elif action == ACCOUNT_CLOSED:
            data["status"] = "closed"
        elif action == TRANSFER_POSTED:
            data.update(status="posted", posted_amount=event.amount_minor)
        elif action == TRANSFER_VOIDED:
            data.update(status="voided", posted_amount=0)
        elif action == TRANSFER_EXPIRED:
            data.update(status="expired", posted_amount=0)
        elif action == TRANSFER_REVERSED:
            data["reversed_by_id"] = event.reversal_public_id
        self._put(key, obj.tenant, data)
        self._emit(obj.tenant, action, LEDGER_SOURCE, position, 0, recorded, occurred, dict(data))

    def fraud(self, position: int, topic: str, event: Any) -> None:
        """One fraud-module event (a domain event of the fraud mapper, read by attribute)."""
        key = str(event.originator_id)
        if topic == FRAUD_ALERT_OPENED_TOPIC:
            data = {
                "transfer_id": str(event.public_id), "score": float(event.score), "reasons": list(event.reasons),
                "model_version": str(event.model_version), "status": "open",
            }  # fmt: skip
            self._put(key, event.tenant, data)
            self._emit(event.tenant, FRAUD_ALERT_OPENED, FRAUD_SOURCE, position, 0, event.timestamp, None, dict(data))
        elif topic == FRAUD_ALERT_REVIEWED_TOPIC:
            obj = self.objects.get(key)
            if obj is None:
                return
            # The label only: an analyst's note is free text and stays with the analysts.
            data = {**obj.data, "status": "reviewed", "label": str(event.label)}
            self._put(key, obj.tenant, data)
            self._emit(obj.tenant, FRAUD_ALERT_REVIEWED, FRAUD_SOURCE, position, 0, event.timestamp, None, dict(data))


def fold_batch(
    fold: FeedFold,
    ledger_events: Sequence[tuple[int, str, Any]],
    fraud_events: Sequence[tuple[int, str, Any]],
    load: Callable[[set[str]], dict[str, FeedObject]],
) -> None:
    """Folds one batch of each log (ledger first, then fraud: each in its own log order), loading
    in one call the pictures of the objects the batch needs and the fold does not have."""
    needed = {e.originator_id for _, topic, e in ledger_events if ledger_needs_lookup(topic)}
    needed |= {str(e.originator_id) for _, topic, e in fraud_events if topic == FRAUD_ALERT_REVIEWED_TOPIC}
    created = {e.originator_id for _, topic, e in ledger_events if topic in LEDGER_TOPICS and not ledger_needs_lookup(topic)}
    missing = {k for k in needed - created if k not in fold.objects}
    if missing:
        fold.objects.update(load(missing))
    previous = 0
    for position, topic, event in ledger_events:
        assert position > previous, f"ledger positions must increase: {position} after {previous}"
        previous = position
        fold.ledger(position, topic, event)
    previous = 0
    for position, topic, event in fraud_events:
        assert position > previous, f"fraud positions must increase: {position} after {previous}"
        previous = position
        fold.fraud(position, topic, event)
