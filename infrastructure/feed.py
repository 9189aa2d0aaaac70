"""The event feed's storage and its follower: `keel_feed` rows, one per business event of a tenant,
written by one follower of the ledger's and the fraud module's logs (`FeedWorker`), read by tenant
(GET /v1/events), by id across tenants (the SSE hub of each API process, the webhook worker).

Why a follower, not the recorders: the feed costs the ledger's commit nothing (no extra statement
under the events table lock, no extra bytes in its transaction), and a tenant's page is a range
read of its own rows (index on tenant, id) instead of a scan of the global log. The price is the
follower's delay: one batch interval plus a commit (docs/realtime.md has the measured figures).

The follower writes rows, object pictures and its tracking (both logs' positions and the last
feed id) in ONE transaction: a SIGKILL at any point loses and repeats nothing, and two followers
on one database cannot both commit a batch (the tracking update is conditional on the position
read). Feed ids are therefore strictly increasing in commit order. This module never decodes
holder data and never writes to the event store.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from eventsourcing.persistence import StoredEvent

from application.feed import (
    FEED,
    FRAUD_SOURCE,
    FRAUD_TOPICS,
    LEDGER_SOURCE,
    LEDGER_TOPICS,
    FeedFold,
    FeedObject,
    FeedRow,
    fold_batch,
    ledger_decoders,
)
from infrastructure.schema import FEED as FEED_TABLE
from infrastructure.schema import FEED_OBJECTS, FEED_TRACKING, FRAUD_EVENTS, LEDGER_EVENTS
from infrastructure.sql import Sql
from infrastructure.store import LogWaiter

log = logging.getLogger(__name__)

READ_BATCH_MAX = 5_000  # log events per feed transaction
FRAUD_BATCH_MAX = 1_000
# At most one feed commit per this interval while the log is busy (each commit carries more
# events); the SSE latency budget (250 ms p99) has room for it.
STEP_INTERVAL_MIN_S = 0.01
ERROR_BACKOFF_S = 1.0
STOP_JOIN_S = 15.0
OBJECT_CACHE_MAX = 200_000
SCAN_MAX = 2_000  # feed rows one page request reads at most (type filters skip the rest)
HUB_READ_MAX = 5_000
_ENCRYPTED = b"K1"


class PositionMoved(Exception):
    """The feed's tracking was not where this follower left it (a second follower won)."""


class FeedPage(msgspec.Struct, frozen=True):
    bodies: list[bytes]  # the events, rendered (application.feed.FeedEnvelope JSON)
    ids: list[int]  # their feed ids
    last_id: int  # the last feed id read (an event's, or one passed over by the type filter); the `after` when none
    more: bool  # more rows of this tenant may follow


class FeedStore:
    """Reads and writes of keel_feed on the store's SQL helper."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        feed, tracking, objects = sql.table(FEED_TABLE), sql.table(FEED_TRACKING), sql.table(FEED_OBJECTS)
        self._tracking = f"SELECT name, position FROM {tracking}"
        self._head = f"SELECT position FROM {tracking} WHERE name = %s"
        self._advance = f"UPDATE {tracking} SET position = %s WHERE name = %s AND position = %s"
        self._insert = f"INSERT INTO {feed} (id, tenant, type, body) VALUES (%s, %s, %s, %s)"
        self._page = f"SELECT id, type, body FROM {feed} WHERE tenant = %s AND id > %s AND id <= %s ORDER BY id LIMIT %s"
        self._after = f"SELECT id, tenant, type, body FROM {feed} WHERE id > %s ORDER BY id LIMIT %s"
        self._objects = f"SELECT object_key, tenant, data FROM {objects} WHERE object_key IN "
        self._put_object = (
            f"INSERT INTO {objects} (object_key, tenant, data) VALUES (%s, %s, %s)"
            " ON CONFLICT (object_key) DO UPDATE SET data = excluded.data"
        )

    # ---- reading ---------------------------------------------------------------------------

    def tracking(self) -> dict[str, int]:
        return {name: int(pos) for name, pos in self.sql.fetchall(self._tracking)}

    def head(self) -> int:
        """The last feed id written (0: none yet)."""
        row = self.sql.fetchone(self._head, (FEED,))
        if row is None:
            raise RuntimeError("the feed's tracking rows are missing: run `keel migrate`")
        return int(row[0])

    def page(self, tenant: str, after: int, types: frozenset[str] | None, limit: int, upto: int | None = None) -> FeedPage:
        """Up to `limit` of the tenant's events after feed id `after` (of `types`, None: all), reading
        at most SCAN_MAX rows; not beyond `upto`."""
        scan = limit if types is None else max(limit, SCAN_MAX)
        rows = self.sql.fetchall(self._page, (tenant, after, upto if upto is not None else 2**63 - 1, scan))
        bodies: list[bytes] = []
        ids: list[int] = []
        last = after
        for feed_id, type_, body in rows:
            if types is None or type_ in types:
                if len(bodies) == limit:
                    return FeedPage(bodies, ids, last, True)
                bodies.append(bytes(body))
                ids.append(int(feed_id))
            last = int(feed_id)
        return FeedPage(bodies, ids, last, len(rows) == scan)

    def after(self, feed_id: int, limit: int = HUB_READ_MAX) -> list[tuple[int, str, str, bytes]]:
        """Every tenant's rows after `feed_id`, in order: (id, tenant, type, body)."""
        return [(int(i), t, ty, bytes(b)) for i, t, ty, b in self.sql.fetchall(self._after, (feed_id, limit))]

    def load_objects(self, keys: set[str]) -> dict[str, FeedObject]:
        found: dict[str, FeedObject] = {}
        ordered = sorted(keys)
        for i in range(0, len(ordered), 500):
            chunk = ordered[i : i + 500]
            statement = self._objects + "(" + ", ".join("%s" for _ in chunk) + ")"
            for key, tenant, data in self.sql.fetchall(statement, chunk):
                found[key] = FeedObject(tenant=tenant, data=msgspec.json.decode(data))
        return found

    # ---- writing (the follower) ------------------------------------------------------------

    def commit(self, expected: dict[str, int], moved: dict[str, int], rows: Sequence[FeedRow],
               objects: Sequence[tuple[str, FeedObject]]) -> None:  # fmt: skip
        """Moves the tracking rows from `expected` to `moved` and writes the rows and objects, in
        one transaction; PositionMoved (and nothing written) if a tracking row was elsewhere."""
        with self.sql.transaction() as cur:
            for name, position in moved.items():
                # Tracking first: a second follower blocks here and then finds the row moved.
                cur.execute(self._advance, (position, name, expected[name]))
                if cur.rowcount != 1:
                    raise PositionMoved(name)
            if rows:
                cur.executemany(self._insert, [(r.id, r.tenant, r.type, r.body) for r in rows])
            if objects:
                encode = msgspec.json.encode
                cur.executemany(self._put_object, [(k, o.tenant, encode(o.data).decode()) for k, o in objects])


class LogSource:
    """One log as the feed reads it: (position, topic, decoded event) after a position, decoding
    only the topics the feed shows (the account legs of a transfer are skipped undecoded)."""

    def __init__(self, sql: Sql, table: str, mapper: Any, topics: Sequence[str], *, typed: bool) -> None:
        self.sql = sql
        self.mapper = mapper
        self.typed = typed
        pos = sql.position_column
        filtered = "" if typed else " AND topic IN (" + ", ".join("%s" for _ in topics) + ")"
        self._topics = list(topics)
        self._select = (
            f"SELECT {pos}, originator_id, originator_version, topic, state FROM {sql.table(table)}"
            f" WHERE {pos} > %s{filtered} ORDER BY {pos} LIMIT %s"
        )
        self._decoders = ledger_decoders() if typed else {}

    def read(self, after: int, limit: int) -> tuple[list[tuple[int, str, Any]], int, int]:
        """The decoded events after `after`, the last position read (`after` when none) and how
        many rows were read (`limit`: more may be waiting)."""
        params: list[Any] = [after, *([] if self.typed else self._topics), limit]
        rows = self.sql.fetchall(self._select, params)
        out: list[tuple[int, str, Any]] = []
        for position, originator_id, version, topic, state in rows:
            if self.typed:
                decoder = self._decoders.get(topic)
                if decoder is None:
                    continue
                event = decoder.decode(self._open(bytes(state)))
                event.originator_id = self.sql.event_id_text(originator_id)
            else:
                stored = StoredEvent(
                    originator_id=self.sql.to_uuid(originator_id), originator_version=int(version), topic=topic,
                    state=bytes(state),
                )  # fmt: skip
                event = self.mapper.to_domain_event(stored)
            out.append((int(position), topic, event))
        return out, (int(rows[-1][0]) if rows else after), len(rows)

    def _open(self, state: bytes) -> bytes:
        m = self.mapper
        if any(getattr(m, a, None) is not None for a in ("keyring", "cipher", "compressor")):
            return m.open_state(state)
        if state[:2] == _ENCRYPTED:
            raise RuntimeError("stored event is encrypted but no KEEL_DATA_KEY is configured")
        return state


class FeedFollower:
    """Applies both logs to the feed, one transaction per step."""

    def __init__(self, store: FeedStore, ledger: LogSource, fraud: LogSource | None) -> None:
        self.store = store
        self.ledger = ledger
        self.fraud = fraud
        self.objects: OrderedDict[str, FeedObject] = OrderedDict()
        self.position = store.tracking()

    def step(self) -> tuple[int, bool]:
        """Applies the next batch; returns how many log rows it read (0: caught up) and whether a
        log had more than one batch waiting."""
        start = dict(self.position)
        ledger_events, ledger_to, ledger_rows = self.ledger.read(start["ledger"], READ_BATCH_MAX)
        fraud_events: list[tuple[int, str, Any]] = []
        fraud_to, fraud_rows = start["fraud"], 0
        if self.fraud is not None:
            fraud_events, fraud_to, fraud_rows = self.fraud.read(start["fraud"], FRAUD_BATCH_MAX)
        if ledger_rows == 0 and fraud_rows == 0:
            return 0, False
        fold = FeedFold(start["feed"] + 1)
        fold.objects = self.objects  # the cache itself: it is dropped whole if the commit fails
        try:
            fold_batch(fold, ledger_events, fraud_events, self.store.load_objects)
            moved = {"ledger": ledger_to, "fraud": fraud_to, "feed": fold.next_id - 1}
            changed = [(k, fold.objects[k]) for k in sorted(fold.changed)]
            self.store.commit(start, moved, fold.rows, changed)
        except PositionMoved:
            log.warning("feed tracking moved under us (a second feed worker?); resuming from the database")
            self.position = self.store.tracking()
            self.objects.clear()
            return 0, False
        except BaseException:
            self.objects.clear()
            raise
        self.position = moved
        for key in fold.changed:
            self.objects.move_to_end(key)
        while len(self.objects) > OBJECT_CACHE_MAX:
            self.objects.popitem(last=False)
        return ledger_rows + fraud_rows, ledger_rows >= READ_BATCH_MAX or fraud_rows >= FRAUD_BATCH_MAX


class FeedWorker:
    """`keel worker feed`: follows the logs into the feed until stopped (a daemon thread)."""

    name = "feed"

    def __init__(self, store: FeedStore, ledger: LogSource, fraud: LogSource | None,
                 open_waiter: Callable[[], LogWaiter]) -> None:  # fmt: skip
        self.store = store
        self.ledger = ledger
        self.fraud = fraud
        self.open_waiter = open_waiter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_step: Callable[[], None] | None = None  # after each commit (tests, the embedded hub)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keel-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)

    def _run(self) -> None:
        follower: FeedFollower | None = None
        waiter: LogWaiter | None = None
        while not self._stop.is_set():
            try:
                if waiter is None:
                    waiter = self.open_waiter()  # before the read: no commit after it is waited past
                if follower is None:
                    follower = FeedFollower(self.store, self.ledger, self.fraud)
                    log.info("feed resuming after ledger position %d", follower.position["ledger"])
                stepped_at = time.monotonic()
                n, more = follower.step()
                if n > 0:
                    if self.on_step is not None:
                        self.on_step()
                    if more:
                        continue
                    self._stop.wait(max(0.0, stepped_at + STEP_INTERVAL_MIN_S - time.monotonic()))
                    continue
                waiter.wait(self._stop)
            except Exception:
                log.exception("feed worker failed; retrying")
                follower = None
                if waiter is not None:
                    waiter.close()
                    waiter = None
                self._stop.wait(ERROR_BACKOFF_S)
        if waiter is not None:
            waiter.close()


def feed_worker(sql: Sql, ledger: Any, fraud_app: Any, fraud_sql: Sql | None,
                open_waiter: Callable[[], LogWaiter]) -> FeedWorker:  # fmt: skip
    """The feed worker over the ledger's log (`ledger_events`) and the fraud module's (its alerts)."""
    ledger_source = LogSource(sql, LEDGER_EVENTS, ledger.mapper, list(LEDGER_TOPICS), typed=True)
    fraud_source = None
    if fraud_app is not None:
        fraud_source = LogSource(fraud_sql or sql, FRAUD_EVENTS, fraud_app.mapper, FRAUD_TOPICS, typed=False)
    return FeedWorker(FeedStore(sql), ledger_source, fraud_source, open_waiter)


__all__ = ["FRAUD_SOURCE", "LEDGER_SOURCE", "FeedPage", "FeedStore", "FeedWorker", "LogSource", "feed_worker"]
