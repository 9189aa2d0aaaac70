"""The writer's cache of current aggregates, kept coherent with other processes' commits.

Only the thread that runs the ledger's batches touches it. Before each batch `refresh` reads
the log after the last position it accounted for: an event that is not one of our own commits
is applied to our cached copy of its aggregate when it is the next version (cheap replication,
no reload) and evicts the copy otherwise. It never writes to the store.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Protocol
from uuid import UUID

from domain.account import Account
from domain.transfer import Transfer

log = logging.getLogger(__name__)

# More foreign events than this since the last batch: drop the whole cache instead.
CACHE_TAIL_MAX = 20_000
AGGREGATE_CACHE_MAX = 200_000

Aggregate = Account | Transfer


class LogTail(Protocol):
    """What the cache reads of the event store: the log head and the notifications after a position."""

    def max_notification_id(self) -> int | None: ...

    def select_notifications(self, start: int, limit: int, *, inclusive_of_start: bool = ...) -> Any: ...


class EventDecoder(Protocol):
    def to_domain_event(self, stored: Any) -> Any: ...


class AggregateCache:
    def __init__(self, log_tail: LogTail, decoder: EventDecoder, max_size: int = AGGREGATE_CACHE_MAX) -> None:
        self._log = log_tail
        self._decoder = decoder
        self._max_size = max_size
        self._items: OrderedDict[UUID, Aggregate] = OrderedDict()
        # The log position up to which the cache is known to be current, and the positions of
        # our own commits after it (those need no eviction).
        self._seen: int | None = None
        self._own_positions: set[int] = set()

    def __contains__(self, key: UUID) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: UUID) -> Aggregate | None:
        agg = self._items.get(key)
        if agg is not None:
            self._items.move_to_end(key)
        return agg

    def put(self, agg: Aggregate) -> None:
        self._items[agg.id] = agg
        self._items.move_to_end(agg.id)
        while len(self._items) > self._max_size:
            self._items.popitem(last=False)

    def evict(self, key: UUID) -> None:
        self._items.pop(key, None)

    def refresh(self) -> None:
        """Brings the cache up to date with what other processes committed since our last batch."""
        if self._seen is None:
            self._seen = self._log.max_notification_id() or 0
            self._items.clear()
            return
        tail = self._log.select_notifications(start=self._seen, limit=CACHE_TAIL_MAX, inclusive_of_start=False)
        if len(tail) >= CACHE_TAIL_MAX:
            self._items.clear()
            self._own_positions.clear()
            self._seen = self._log.max_notification_id() or 0
            return
        for n in tail:
            assert n.id > self._seen, "notification log positions must increase"
            self._seen = n.id
            if n.id in self._own_positions:
                continue
            cached = self._items.get(n.originator_id)
            if cached is None:
                continue
            if n.originator_version == cached.version + 1:
                try:
                    self._decoder.to_domain_event(n).mutate(cached)
                    continue
                except Exception:  # noqa: BLE001 - any doubt: reload from the store instead
                    log.warning("could not apply foreign event at %d; evicting", n.id)
            self._items.pop(n.originator_id, None)
        self._own_positions = {p for p in self._own_positions if p > self._seen}

    def note_own_commit(self, positions: list[int]) -> None:
        """Our commit's positions: directly after what we have seen means nobody else committed
        in between (positions are handed out under the events table lock), so skip them."""
        if not positions:
            return
        contiguous = positions[-1] - positions[0] == len(positions) - 1
        if self._seen is not None and contiguous and positions[0] == self._seen + 1 and not self._own_positions:
            self._seen = positions[-1]
        else:
            self._own_positions.update(positions)
