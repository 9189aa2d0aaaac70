"""Following the ledger's log into the read-model views: `ViewFollower` reads batches from the
store's tracking position, folds them (application/projections.py `project`) and hands rows and
the new position to a `ViewStore` that writes both in ONE transaction. The ports a store
implements (`ViewStore`, `ViewTransaction`) are here; it never writes to the event store.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from application.projections import Changes, project
from application.seen_events import SeenEvent

log = logging.getLogger(__name__)

# Events one view transaction applies at most, unless the follower is given another `batch_max`.
READ_BATCH_MAX = 20_000


class PositionMoved(Exception):
    """The tracking row was not where this follower left it (another runner, or a rebuild)."""


class ViewTransaction(Protocol):
    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]: ...

    def write(self, changes: Changes) -> None: ...

    def advance(self, expected: int, position: int) -> None:
        """Moves the tracking row from `expected` to `position`; PositionMoved if it was elsewhere."""


class ViewStore(Protocol):
    reads_in_transaction: bool

    def position(self) -> int: ...

    def transaction(self) -> AbstractContextManager[ViewTransaction]: ...


# Reads the log: up to `limit` positions after `after` (and not beyond `stop`), in order, each
# with its decoded event, or None where the event changes no view. The last argument is the
# open view transaction when the store reads inside it (saves round trips), else None.
LogReader = Callable[[int, int, "int | None", Any], Sequence[tuple[int, SeenEvent | None]]]


class ViewFollower:
    """Applies the log to a ViewStore, one transaction per batch of up to `batch_max` events.

    `step()` never skips or repeats an event: the position it starts from is the one committed
    with the rows, and positions must strictly increase (asserted).
    """

    def __init__(
        self,
        read: LogReader,
        store: ViewStore,
        *,
        batch_max: int = READ_BATCH_MAX,
        on_applied: Callable[[int, Sequence[tuple[int, Any]]], None] | None = None,
    ) -> None:
        if not 0 < batch_max <= 100_000:
            raise ValueError("batch_max must be 1..100000")
        self.read = read
        self.store = store
        self.batch_max = batch_max
        self.on_applied = on_applied
        self.position = store.position()

    def step(self, stop: int | None = None) -> int:
        """Applies the next batch (not beyond `stop`); returns how many events it applied."""
        start = self.position
        events: Sequence[tuple[int, SeenEvent | None]] = ()
        try:
            if self.store.reads_in_transaction:
                with self.store.transaction() as tx:
                    events = self.read(start, self.batch_max, stop, tx)
                    if events:
                        self._apply(tx, start, events)
            else:
                # Read before taking the write transaction (SQLite has one writer at a time).
                events = self.read(start, self.batch_max, stop, None)
                if events:
                    with self.store.transaction() as tx:
                        self._apply(tx, start, events)
        except PositionMoved:
            self.position = self.store.position()
            log.warning("view tracking moved under us (rebuild or second runner); resuming at %d", self.position)
            return 0
        if not events:
            return 0
        self.position = events[-1][0]
        if self.on_applied is not None:
            self.on_applied(self.position, events)
        return len(events)

    @staticmethod
    def _apply(tx: ViewTransaction, start: int, events: Sequence[tuple[int, SeenEvent | None]]) -> None:
        previous = start
        for position, _ in events:
            assert position > previous, f"log positions must increase: {position} after {previous}"
            previous = position
        # Tracking first: a second runner blocks there and then finds the row moved, before
        # it has written a single view row.
        tx.advance(start, previous)
        tx.write(project(events, tx.transfer_currencies))

    def catch_up(self, stop: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Applies batches until the log (or `stop`) is reached; returns the events applied."""
        total = 0
        while stop is None or self.position < stop:
            n = self.step(stop)
            if n == 0:
                break
            total += n
            if progress is not None:
                progress(self.position)
        return total
