"""Server-Sent Events over the feed: one `FeedHub` per API process follows keel_feed (every POLL_S,
while any stream is open) and hands each new row to the open streams of its tenant; each stream
catches up from the database first and dedupes by feed id, so nothing is missed between the two.

Guarantees: a stream sends its tenant's events in feed order, each once, from its resume point
(`Last-Event-ID` or `after`); a stream that falls QUEUE_MAX rows behind (a slow client) drops its
queue and catches up from the database again — never a gap, never unbounded memory. Streams per
API key (or OAuth client) are bounded (KEEL_SSE_STREAMS_PER_KEY: 429 beyond), and so are streams
per process (STREAMS_MAX: 503). A comment line goes out every HEARTBEAT_S so proxies keep the
connection open and clients notice a dead one. Never sends another tenant's row: rows are routed
by the tenant column the feed wrote, and the catch-up reads only the caller's tenant.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator

import anyio
from litestar.response.sse import ServerSentEventMessage

from api.errors import ApiError
from application.feed import encode_cursor
from infrastructure.feed import FeedStore

log = logging.getLogger(__name__)

POLL_S = 0.02
HEARTBEAT_S = 15.0
QUEUE_MAX = 10_000
STREAMS_MAX = 1_000
CATCH_UP_PAGE = 500
HUB_READ_MAX = 5_000
ERROR_BACKOFF_S = 1.0
RETRY_MS = 2_000  # the reconnection delay clients are told


class _Stream:
    __slots__ = ("key", "overflowed", "queue", "tenant")

    def __init__(self, key: str, tenant: str) -> None:
        self.key = key
        self.tenant = tenant
        self.queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self.overflowed = False


class Reservation:
    """One stream's place under the limits; released once."""

    __slots__ = ("__weakref__", "_hub", "key", "released")

    def __init__(self, hub: FeedHub, key: str) -> None:
        self._hub = hub
        self.key = key
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._hub._release(self.key)


class FeedHub:
    def __init__(self, feed: FeedStore, streams_per_key: int, *, poll_s: float = POLL_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:  # fmt: skip
        self.feed = feed
        self.streams_per_key = streams_per_key
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self._streams: dict[str, set[_Stream]] = {}
        self._per_key: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def open_streams(self) -> int:
        return sum(self._per_key.values())

    def reserve(self, key: str) -> Reservation:
        """Counts a new stream of `key` against the limits (ApiError 429/503 beyond them) before the
        response starts; `events()` takes it over and releases it when the stream ends."""
        if self._closed:
            raise ApiError("shutting_down", "the service is restarting; reconnect shortly")
        if self._per_key[key] >= self.streams_per_key:
            raise ApiError("rate_limited", f"at most {self.streams_per_key} open event streams per API key",
                           headers={"Retry-After": "5"})  # fmt: skip
        if self.open_streams >= STREAMS_MAX:
            raise ApiError("overloaded", "this API process serves as many event streams as it can; retry shortly")
        self._per_key[key] += 1
        return Reservation(self, key)

    def _release(self, key: str) -> None:
        self._per_key[key] -= 1
        if self._per_key[key] <= 0:
            del self._per_key[key]

    async def _open(self, key: str, tenant: str) -> _Stream:
        stream = _Stream(key, tenant)
        self._streams.setdefault(tenant, set()).add(stream)
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="keel-feed-hub")
        try:
            await self._ready.wait()  # the hub's position is read: every later row reaches the queue
        except BaseException:
            self._close(stream)
            raise
        return stream

    def _close(self, stream: _Stream) -> None:
        streams = self._streams.get(stream.tenant)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.tenant]

    async def _follow(self) -> None:
        position: int | None = None
        try:
            while self._streams and not self._closed:
                try:
                    if position is None:
                        position = await anyio.to_thread.run_sync(self.feed.head)
                        self._ready.set()
                    rows = await anyio.to_thread.run_sync(self.feed.after, position, HUB_READ_MAX)
                except Exception:
                    log.exception("event stream hub: reading the feed failed; retrying")
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                for feed_id, tenant, type_, body in rows:
                    for stream in self._streams.get(tenant, ()):
                        if stream.overflowed:
                            continue
                        try:
                            stream.queue.put_nowait((feed_id, type_, body))
                        except asyncio.QueueFull:
                            stream.overflowed = True  # it catches up from the database instead
                    position = feed_id
                if len(rows) < HUB_READ_MAX:
                    await asyncio.sleep(self.poll_s)
        finally:
            self._task = None  # no await between the loop's last check and here: no stream is stranded
            self._ready.set()  # wake any opener of a closing hub (it finds _task None next time)

    def stream(self, reservation: Reservation, tenant: str, types: frozenset[str] | None,
               after: int) -> AsyncIterator[ServerSentEventMessage]:  # fmt: skip
        """The messages of a reserved stream, from feed id `after` on, until the client goes away.
        The reservation is released when the stream ends, or when it is dropped unstarted."""
        messages = self._events(reservation, tenant, types, after)
        weakref.finalize(messages, reservation.release)
        return messages

    async def _events(self, reservation: Reservation, tenant: str, types: frozenset[str] | None,
                      after: int) -> AsyncIterator[ServerSentEventMessage]:  # fmt: skip
        last = after
        try:
            stream = await self._open(reservation.key, tenant)
        except BaseException:
            reservation.release()
            raise
        try:
            yield ServerSentEventMessage(data=None, comment="keel event stream", retry=RETRY_MS)
            while not self._closed:
                stream.overflowed = False
                while not stream.queue.empty():
                    stream.queue.get_nowait()
                # Catch up from the database: everything up to the hub's position and beyond.
                while True:
                    page = await anyio.to_thread.run_sync(self.feed.page, tenant, last, types, CATCH_UP_PAGE)
                    for feed_id, body in zip(page.ids, page.bodies):
                        yield _message(feed_id, body)
                    last = max(last, page.last_id)
                    if not page.more:
                        break
                # Live: rows from the hub, deduped against what the catch-up sent.
                while not stream.overflowed and not self._closed:
                    try:
                        feed_id, type_, body = await asyncio.wait_for(stream.queue.get(), self.heartbeat_s)
                    except TimeoutError:
                        yield ServerSentEventMessage(data=None, comment="heartbeat")
                        continue
                    if feed_id <= last:
                        continue
                    last = feed_id
                    if types is None or type_ in types:
                        yield _message(feed_id, body)
        finally:
            self._close(stream)
            reservation.release()

    def close(self) -> None:
        """At shutdown: open streams end (clients reconnect with Last-Event-ID elsewhere)."""
        self._closed = True


def _message(feed_id: int, body: bytes) -> ServerSentEventMessage:
    # The event's type is in its JSON; no `event:` field, so EventSource's onmessage sees every event.
    return ServerSentEventMessage(data=body.decode(), id=encode_cursor(feed_id))
