"""Ports: what the application needs from storage beyond the event store.

`infrastructure` implements them; the application depends only on these shapes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """The answer a caller gave to a command under its idempotency key, stored in the same
    database transaction as the command's effect, so a retry gets the same answer and no second
    effect. `answer` is the caller's own rendering of the outcome (the HTTP API packs its status
    and body into it): opaque here."""

    scope: str  # the caller's identity (the API key id): keys of different callers never collide
    key: str
    request_hash: str  # what the first request was; the same key with another request is refused
    answer: bytes
    created_at_ms: int


class IdempotencyStore(Protocol):
    """Reads and cleans up stored answers (the recorders write them with the effects)."""

    def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    def delete_older_than(self, cutoff_ms: int) -> int: ...


class IdempotencyClaims(Protocol):
    """Marks an idempotency key as being worked on across processes (a claim older than
    `stale_before_ms` is taken over: its holder died)."""

    def claim(self, scope: str, key: str, now_ms: int, stale_before_ms: int) -> bool: ...

    def release(self, scope: str, key: str) -> None: ...

    def delete_older_than(self, cutoff_ms: int) -> int: ...


class WriteLease(Protocol):
    """Mutual exclusion of ledger writers across processes (one database, many API processes).

    Holding it while refreshing, applying and committing a batch means no other process commits
    in between, so batches do not fail optimistic concurrency and re-run. It is an optimisation,
    never a correctness requirement: `acquire` may give up (False) and the batch then runs
    optimistically, as without a lease.
    """

    def acquire(self, timeout_s: float) -> bool: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class NoLease:
    """For a single writer (SQLite, tests): always granted, nothing to release."""

    def acquire(self, timeout_s: float) -> bool:
        return True

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


class AggregateLoader(Protocol):
    """Many aggregates' stored events in one database round trip: for each id found, its latest
    snapshot (if any) followed by its later events, in version order. What a batch's writer
    needs when most of the aggregates it touches are not cached (after a start, or a batch of
    1,000 transfers over 2,000 accounts): one query instead of one per aggregate."""

    def load(self, ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]]: ...


class OutcomeRecorder(Protocol):
    """Stores a command's answer with its effect (an Idempotency-Key's response): the ledger
    asks it to render each outcome into a record saved in the same transaction."""

    def recorded(self) -> bool:
        """True when another writer has stored this key's answer meanwhile: the command is then
        skipped (asked only before a re-run after a conflict)."""
        ...

    def render(self, outcome: object) -> IdempotencyRecord | None:
        """The record to store with this attempt's commit, or None to store nothing."""
        ...


class AccountDirectory(Protocol):
    """Public id -> storage keys of the accounts (of any tenant) that carry it. Rows are written in
    the same transaction as the accounts' Account.Opened, so it is never behind the log."""

    def keys_of(self, public_id: UUID) -> list[UUID]: ...
