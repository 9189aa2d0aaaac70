"""The writer's cache of current aggregates, kept coherent with other processes' commits.

Only the thread that runs the ledger's batches touches it. Before each batch `refresh` reads
the log after the last position it accounted for: an event that is not one of our own commits
is applied to our cached copy of its aggregate when it is the next version (cheap replication,
no reload) and evicts the copy otherwise. It never writes to the store.

Readers on other threads never see the cached objects (a batch changes them before it commits).
They see `committed(key, head)`: a copy of each cached account as last committed, with the log
position of its latest event where known, answered only when the copies are known to hold every
event up to `head` (a log head the reader read after it asked). That is read-your-writes and
strong consistency without reading the store, as long as nothing but this writer wrote since
(another process's commit makes `committed` answer None until this writer's next batch has read it
from the log; the caller then reads the store).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID

from domain.account import Account
from domain.transfer import Transfer

log = logging.getLogger(__name__)

# More foreign events than this since the last batch: drop the whole cache instead.
CACHE_TAIL_MAX = 20_000
AGGREGATE_CACHE_MAX = 200_000
# Committed copies kept for readers (≈ 0.5 KB each: at most ≈ 50 MB); beyond it the earliest
# published go, and reads of those accounts go to the store.
COMMITTED_COPIES_MAX = 100_000

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
        # For readers: (copy as committed, position of its latest event or None) per cached
        # account, and the log position through which all of them are current. Entries are
        # only ever replaced by later committed states, or removed; `committed_through` moves
        # only after the entries it covers are in place.
        self._committed: dict[UUID, tuple[Account, int | None]] = {}
        self.committed_through = 0

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
            dropped, _ = self._items.popitem(last=False)
            self._committed.pop(dropped, None)

    def evict(self, key: UUID) -> None:
        self._items.pop(key, None)
        self._committed.pop(key, None)

    def _clear(self) -> None:
        self._committed.clear()
        self._items.clear()

    # ---- for readers on any thread -----------------------------------------------------------

    def committed(self, key: UUID, head: int) -> tuple[Account, int | None] | None:
        """(the account stored at `key` as last committed, the log position of its latest event
        if known) when that is known to include every event up to `head`; else None (read the
        store). The account returned is a copy no one changes: do not change it either."""
        if self.committed_through < head:
            return None
        return self._committed.get(key)

    def has_committed(self, key: UUID) -> bool:
        """Whether a copy of `key` is kept at all (before a caller reads a log head for it)."""
        return key in self._committed

    def _publish(self, agg: Account, position: int | None) -> None:
        copy = object.__new__(Account)
        copy.__dict__.update(agg.__dict__)
        copy.__dict__["_pending_events"] = []
        if position is None:
            previous = self._committed.get(agg.id)
            position = previous[1] if previous is not None else None
        self._committed[agg.id] = (copy, position)
        if len(self._committed) > COMMITTED_COPIES_MAX:
            self._committed.pop(next(iter(self._committed)))

    def refresh(self) -> None:
        """Brings the cache up to date with what other processes committed since our last batch."""
        if self._seen is None:
            self._clear()
            self._seen = self.committed_through = self._log.max_notification_id() or 0
            return
        tail = self._log.select_notifications(start=self._seen, limit=CACHE_TAIL_MAX, inclusive_of_start=False)
        if len(tail) >= CACHE_TAIL_MAX:
            self._clear()
            self._own_positions.clear()
            self._seen = self.committed_through = self._log.max_notification_id() or 0
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
                    if n.originator_id in self._committed and type(cached) is Account:
                        self._publish(cached, n.id)
                    continue
                except Exception:  # noqa: BLE001 - any doubt: reload from the store instead
                    log.warning("could not apply foreign event at %d; evicting", n.id)
            self.evict(n.originator_id)
        self._own_positions = {p for p in self._own_positions if p > self._seen}
        self.committed_through = self._seen

    def note_own_commit(self, positions: list[int], committed: Iterable[Aggregate] = (),
                        latest: dict[UUID, int] | None = None) -> None:
        """After our commit: `positions`, its log positions (directly after what we have seen
        means nobody else committed in between — positions are handed out under the events
        table lock — so the tail can skip them); `committed`, the aggregates it leaves cached,
        now as committed, with `latest`, the position of each one's latest event in it."""
        latest = latest or {}
        for agg in committed:
            if type(agg) is Account and agg.id in self._items:
                self._publish(agg, latest.get(agg.id))
        if not positions:
            return
        contiguous = positions[-1] - positions[0] == len(positions) - 1
        if self._seen is not None and contiguous and positions[0] == self._seen + 1 and not self._own_positions:
            self._seen = self.committed_through = positions[-1]
        else:
            self._own_positions.update(positions)


class LogHead:
    """The log's head for readers, read by one query at a time however many ask: each caller gets
    a value read by a query that started after it asked, so it includes every commit acknowledged
    before the caller's request. None when the store could not be read."""

    def __init__(self, read: Callable[[], int | None]) -> None:
        self._read = read
        self._cond = threading.Condition()
        self._started = 0
        self._finished = 0
        self._value: int | None = None

    def current(self) -> int | None:
        with self._cond:
            ticket = self._started + 1  # the first query to start from now on
            while self._finished < ticket:
                if self._started > self._finished:
                    self._cond.wait()
                    continue
                self._started += 1
                mine = self._started
                self._cond.release()
                try:
                    value: int | None = self._read() or 0
                except Exception:  # noqa: BLE001 - the caller reads the store, which says what is wrong
                    value = None
                finally:
                    self._cond.acquire()
                self._finished, self._value = mine, value
                self._cond.notify_all()
            return self._value


class AsyncLogHead:
    """LogHead for readers on an event loop: one query at a time for all of them, each caller's
    value read by a query that started after it asked; None when the store could not answer.
    Only ever used from one event loop (the connection behind `read` belongs to it)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[int]],
        close: Callable[[], Awaitable[None]] | None = None,
        fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]] | None = None,
    ) -> None:
        self._read = read
        self._close = close
        # Other reads on the same loop and connection (the history page), when the store has them.
        self.fetchall = fetchall
        self._waiting: list[asyncio.Future[int | None]] = []
        self._pumping = False

    async def current(self) -> int | None:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if not self._pumping:
            self._pumping = True
            asyncio.get_running_loop().create_task(self._pump())
        return await asyncio.shield(future)

    async def _pump(self) -> None:
        asked: list[asyncio.Future[int | None]] = []
        try:
            while self._waiting:
                asked, self._waiting = self._waiting, []  # those who ask from now on wait for the next
                try:
                    value: int | None = await self._read()
                except Exception:  # noqa: BLE001 - the caller reads the store, which says what is wrong
                    value = None
                for f in asked:
                    if not f.done():
                        f.set_result(value)
        finally:
            self._pumping = False
            # Cancelled while pumping (the loop shutting down): nobody is left to answer these.
            for f in [*asked, *self._waiting]:
                if not f.done():
                    f.set_result(None)
            self._waiting = []

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
