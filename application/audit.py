"""Audit use cases: the global log with hashes, histories, point-in-time balances, verification,
signed checkpoints and the access log.

Point-in-time state is always rebuilt from events (snapshots allowed), never from a read model.
Payloads are shown decoded, but holder personal data only as encrypted/erased: an auditor sees
that it exists, never what it is. This module must never write to the event store or the chain.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol
from uuid import UUID

import msgspec

from application.chain import ChainRecord, Checkpoint, SignatureCheck, VerifyReport, verify
from application.privacy import HolderVault
from domain.account import Account
from domain.errors import NotFound, ValidationFailed

EVENTS_PAGE_MAX = 1000
EVENTS_PAGE_DEFAULT = 100
ACCESS_PAGE_MAX = 1000
CHECKPOINTS_PAGE_MAX = 1000
FIELD_MAX_CHARS = 512  # access-log strings are truncated, never rejected: logging must not fail


class AuditStore(Protocol):
    def records(self, after: int = 0, stop: int | None = None) -> Iterator[ChainRecord]: ...
    def hashes(self, positions: Sequence[int]) -> dict[int, bytes]: ...
    def hash_before(self, position: int) -> bytes | None: ...
    def positions_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, int]: ...
    def head(self) -> tuple[int, bytes] | None: ...
    def add_checkpoint(self, cp: Checkpoint) -> None: ...
    def list_checkpoints(self, after_id: int = 0, limit: int | None = None) -> list[tuple[int, Checkpoint]]: ...
    def last_checkpoint(self) -> Checkpoint | None: ...
    def append_access(self, at: str, key_id: str, role: str, route: str, target: str, outcome: str) -> None: ...
    def append_access_many(self, rows: Sequence[tuple[str, str, str, str, str, str]]) -> None: ...
    def access_entries(self, after_id: int, limit: int, key_id: str | None = None) -> list[tuple[Any, ...]]: ...


class CheckpointSigner(Protocol):
    key_id: str

    def checkpoint(self, position: int, head_hash_hex: str) -> Checkpoint: ...


class LogEntry(msgspec.Struct, frozen=True):
    position: int
    aggregate_id: UUID
    version: int
    event_type: str
    timestamp: str | None
    payload: dict[str, Any]
    hash: str | None
    prev_hash: str | None


EVENT_TIME_PAGE = 1000  # events per read when balancing by event time


class PointInTime(msgspec.Struct, frozen=True):
    account_id: UUID  # the public id, within `tenant`
    key: UUID  # the storage key (aggregate id in the log)
    tenant: str
    version: int
    as_of: str | None  # the timestamp of the last event applied
    currency: str
    status: str
    posted_minor: int
    pending_debits_minor: int
    pending_credits_minor: int
    available_minor: int


class AccessEntry(msgspec.Struct, frozen=True):
    id: int
    at: str
    key_id: str
    role: str
    route: str
    target: str
    outcome: str


def parse_instant(text: str) -> datetime:
    """RFC 3339 with an explicit offset ('Z' allowed); naive times are ambiguous and refused."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationFailed("at must be an RFC 3339 timestamp", at=text[:64]) from None
    if t.tzinfo is None:
        raise ValidationFailed("at must carry a UTC offset (e.g. Z)", at=text[:64])
    return t


def event_type_of(topic: str) -> str:
    return topic.rpartition(":")[2]


class Audit:
    """The auditor's application service over the Ledger's store."""

    def __init__(
        self,
        ledger: Any,  # application.ledger.Ledger (duck-typed: recorder, mapper, repository)
        store: AuditStore,
        vault: HolderVault | None,
        signature_check: SignatureCheck,
        signer: CheckpointSigner | None = None,
        public_key: dict[str, str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.vault = vault
        self.signature_check = signature_check
        self.signer = signer
        self.public_key = public_key

    # ---- log and histories -----------------------------------------------------------------

    def _payload(self, domain_event: Any) -> dict[str, Any]:
        state = {k: v for k, v in vars(domain_event).items() if k not in ("originator_id", "originator_version", "timestamp")}
        holder = state.get("holder")
        if isinstance(holder, dict):
            state["holder"] = self.vault.describe(holder) if self.vault is not None else {"redacted": True}
        return msgspec.to_builtins(state)

    def _entry(self, n: Any, hash_: bytes | None, prev: bytes | None) -> LogEntry:
        try:
            event = self.ledger.mapper.to_domain_event(n)
            payload = self._payload(event)
            timestamp = event.timestamp.isoformat()
        except Exception as e:  # noqa: BLE001 - an unreadable event is shown as such, not a 500
            payload, timestamp = {"unreadable": type(e).__name__}, None
        return LogEntry(
            position=n.id,
            aggregate_id=n.originator_id,
            version=n.originator_version,
            event_type=event_type_of(n.topic),
            timestamp=timestamp,
            payload=payload,
            hash=hash_.hex() if hash_ else None,
            prev_hash=prev.hex() if prev else None,
        )

    def events(self, after: int = 0, limit: int = EVENTS_PAGE_DEFAULT) -> list[LogEntry]:
        """The global log after position `after` (a cursor), with each event's hash and prev_hash."""
        if after < 0 or not 0 < limit <= EVENTS_PAGE_MAX:
            raise ValidationFailed(f"after must be >= 0 and limit 1..{EVENTS_PAGE_MAX}", after=after, limit=limit)
        notifications = self.ledger.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        if not notifications:
            return []
        hashes = self.store.hashes([n.id for n in notifications])
        prev = self.store.hash_before(notifications[0].id)
        out = []
        for n in notifications:
            h = hashes.get(n.id)
            out.append(self._entry(n, h, prev))
            prev = h
        return out

    def account_events(self, account_id: UUID, after_version: int = 0, limit: int = EVENTS_PAGE_DEFAULT) -> list[LogEntry]:
        if after_version < 0 or not 0 < limit <= EVENTS_PAGE_MAX:
            raise ValidationFailed(f"after must be >= 0 and limit 1..{EVENTS_PAGE_MAX}", after=after_version, limit=limit)
        self._account(account_id)
        stored = self.ledger.recorder.select_events(account_id, gt=after_version or None, limit=limit)
        positions = self.store.positions_of(account_id, [s.originator_version for s in stored])
        hashes = self.store.hashes(list(positions.values()))
        # prev_hash is left out here: it belongs to the global log (another aggregate's event).
        return [
            self._entry(_Positioned(s, positions.get(s.originator_version, 0)), hashes.get(positions.get(s.originator_version, 0)), None)
            for s in stored
        ]

    # ---- point in time ---------------------------------------------------------------------

    def _account(self, account_id: UUID, version: int | None = None) -> Account:
        try:
            agg = self.ledger.repository.get(account_id, version=version)
        except Exception:  # AggregateNotFoundError, or a version before the account existed
            raise NotFound("account not found", account_id=str(account_id)) from None
        if not isinstance(agg, Account):
            raise NotFound("account not found", account_id=str(account_id))
        return agg

    def balance_at_version(self, account_id: UUID, version: int) -> PointInTime:
        if version < 1:
            raise ValidationFailed("version must be >= 1", version=version)
        current = self._account(account_id)
        if version > current.version:
            raise NotFound("the account has no such version", account_id=str(account_id), version=version)
        return self._point(self._account(account_id, version))

    def balance_at(self, account_id: UUID, at: datetime) -> PointInTime:
        """The account as it was at instant `at`: its events with timestamp <= at applied.

        An aggregate's event timestamps grow with its versions (one writer orders them), so the
        last version at or before `at` is found by binary search: ~log2(versions) one-event
        reads, however long the history (a settlement account may have millions).
        """
        current = self._account(account_id)
        lo, hi = 0, current.version  # invariant: ts(lo) <= at (version 0: before the account), ts(hi+1) > at
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._timestamp(account_id, mid) <= at:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise NotFound("the account did not exist at that time", account_id=str(account_id), at=at.isoformat())
        return self._point(self._account(account_id, lo))

    def balance_at_event_time(self, account_id: UUID, at: datetime) -> PointInTime:
        """The account's balances counting what had *happened* by `at` (event time: each movement's
        `occurred_at` when the client gave one, else its recording time), whenever it was recorded:
        for history imported or backfilled after the fact (README, "History and event time").

        Event times are not monotone in the log (a tolerance per account), so every event of the
        account is read (in pages); `version` and `as_of` are those of the last event counted.
        """
        current = self._account(account_id)
        posted = pending_debits = pending_credits = 0
        status, version, as_of, opened = "open", 0, None, False
        after = 0
        while after < current.version:
            page = self.ledger.recorder.select_events(account_id, gt=after, limit=EVENT_TIME_PAGE)
            if not page:
                break
            for stored in page:
                e = self.ledger.mapper.to_domain_event(stored)
                after = e.originator_version
                when = getattr(e, "occurred_at", None) or e.timestamp
                if when > at:
                    continue
                version, as_of = e.originator_version, when
                if isinstance(e, Account.Opened):
                    opened = True
                elif isinstance(e, Account.Debited):
                    posted -= e.amount_minor
                elif isinstance(e, Account.Credited):
                    posted += e.amount_minor
                elif isinstance(e, Account.DebitHeld):
                    pending_debits += e.amount_minor
                elif isinstance(e, Account.CreditHeld):
                    pending_credits += e.amount_minor
                elif isinstance(e, Account.DebitHoldSettled):
                    pending_debits -= e.held_minor
                    posted -= e.posted_minor
                elif isinstance(e, Account.CreditHoldSettled):
                    pending_credits -= e.held_minor
                    posted += e.posted_minor
                elif isinstance(e, (Account.Frozen, Account.Unfrozen, Account.Closed)):
                    status = {Account.Frozen: "frozen", Account.Unfrozen: "open", Account.Closed: "closed"}[type(e)]
        if not opened:
            raise NotFound("the account did not exist at that time", account_id=str(account_id), at=at.isoformat())
        return PointInTime(
            account_id=current.public_id, key=current.id, tenant=current.tenant, version=version,
            as_of=as_of.isoformat() if as_of else None, currency=current.currency, status=status,
            posted_minor=posted, pending_debits_minor=pending_debits, pending_credits_minor=pending_credits,
            available_minor=posted - pending_debits + current.overdraft_limit_minor,
        )  # fmt: skip

    def _timestamp(self, account_id: UUID, version: int) -> datetime:
        (stored,) = self.ledger.recorder.select_events(account_id, gt=version - 1, lte=version)
        return self.ledger.mapper.to_domain_event(stored).timestamp

    def _point(self, a: Account) -> PointInTime:
        ts = getattr(a, "modified_on", None)
        # An aggregate restored from a snapshot carries its timestamps as stored (RFC 3339 text).
        as_of = ts.isoformat() if isinstance(ts, datetime) else parse_instant(ts).isoformat() if ts else None
        return PointInTime(
            account_id=a.public_id,
            key=a.id,
            tenant=a.tenant,
            version=a.version,
            as_of=as_of,
            currency=a.currency,
            status=a.status,
            posted_minor=a.posted_minor,
            pending_debits_minor=a.pending_debits_minor,
            pending_credits_minor=a.pending_credits_minor,
            available_minor=a.available_minor,
        )

    # ---- verification and checkpoints ------------------------------------------------------

    def verify(self) -> VerifyReport:
        checkpoints = [cp for _, cp in self.store.list_checkpoints()]
        return verify(self.store.records(), checkpoints, self.signature_check)

    def checkpoint(self, *, only_if_advanced: bool = False) -> Checkpoint | None:
        """Signs the current chain head. The periodic worker skips it when nothing was written."""
        if self.signer is None:
            raise ValidationFailed("no audit signing key is configured (keel keys audit-init)")
        head = self.store.head()
        position, head_hash = head if head is not None else (0, bytes(32))
        if only_if_advanced:
            last = self.store.last_checkpoint()
            if last is not None and last.position == position:
                return None
        cp = self.signer.checkpoint(position, head_hash.hex())
        self.store.add_checkpoint(cp)
        return cp

    def checkpoints(self, after_id: int = 0, limit: int = CHECKPOINTS_PAGE_MAX) -> list[tuple[int, Checkpoint]]:
        if after_id < 0 or not 0 < limit <= CHECKPOINTS_PAGE_MAX:
            raise ValidationFailed(f"after must be >= 0 and limit 1..{CHECKPOINTS_PAGE_MAX}")
        return self.store.list_checkpoints(after_id, limit)

    # ---- access log (PCI DSS 10.2 style) ---------------------------------------------------

    def record_access(
        self, key_id: str, role: str, route: str, target: str, outcome: str, at: datetime | None = None
    ) -> None:
        when = (at or datetime.now(tz=timezone.utc)).isoformat(timespec="microseconds")
        f = FIELD_MAX_CHARS
        self.store.append_access(when, key_id[:f], role[:f], route[:f], target[:f], outcome[:f])

    def record_access_many(self, entries: Sequence[tuple[str, str, str, str, str, str]]) -> None:
        """Appends (at, key_id, role, route, target, outcome) rows in one write."""
        f = FIELD_MAX_CHARS
        self.store.append_access_many([tuple(v[:f] for v in e) for e in entries])  # type: ignore[misc]

    def access_log(self, after_id: int = 0, limit: int = 100, key_id: str | None = None) -> list[AccessEntry]:
        if after_id < 0 or not 0 < limit <= ACCESS_PAGE_MAX:
            raise ValidationFailed(f"after must be >= 0 and limit 1..{ACCESS_PAGE_MAX}")
        return [AccessEntry(*r) for r in self.store.access_entries(after_id, limit, key_id)]


class _Positioned:
    """A stored event seen through the shape of a notification, with its log position."""

    __slots__ = ("originator_id", "originator_version", "topic", "state", "id")

    def __init__(self, s: Any, position: int) -> None:
        self.originator_id = s.originator_id
        self.originator_version = s.originator_version
        self.topic = s.topic
        self.state = s.state
        self.id = position

