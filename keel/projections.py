"""Composition of the read models: the projection worker, the read side, and `keel replay`.

On PostgreSQL the worker follows the log with LISTEN/NOTIFY on its own connection (never one of
the pool's, so a small pool cannot stall it) plus catch-up reads; on SQLite it polls. It must
never write anything but view rows together with their tracking position.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import psycopg
from prometheus_client import Gauge, Histogram

from application.projections import READ_BATCH_MAX, VIEWS, ViewFollower, project
from infrastructure.readmodels import (
    LIVE,
    SCRATCH,
    Database,
    LogReader,
    SqlViewStore,
    Tables,
    compare,
    create_scratch,
    drop_scratch,
    replace_live,
    view_tx,
)
from infrastructure.readside import ReadSide
from infrastructure.settings import Settings
from keel.bootstrap import Container, build_ledger

log = logging.getLogger(__name__)

SQLITE_POLL_S = 0.02
# At most one view commit per this interval when the log is busy: each commit then carries more
# events (one fsync and a few statements for dozens of ledger commits, not one each); at most
# this much lag is added. Like the fraud consumer's KEEL_FRAUD_POLL_INTERVAL_MS.
STEP_INTERVAL_MIN_S = 0.02
LISTEN_TIMEOUT_S = 0.5
LISTEN_CONNECT_TIMEOUT_S = 10
GAUGE_INTERVAL_S = 1.0
ERROR_BACKOFF_S = 1.0
REBUILD_BATCH_MAX = 50_000
CHECK_CHASE_MAX = 20

POSITION = Gauge("keel_projection_position", "Last log position applied to the views", ["projection"])
LAG_EVENTS = Gauge("keel_projection_lag_events", "Events in the log not yet applied to the views", ["projection"])
LAG_MS = Gauge("keel_projection_lag_ms", "Age of the oldest event in the last applied batch, at commit", ["projection"])
APPLY_LAG = Histogram(
    "keel_projection_apply_lag_seconds",
    "Event time to view commit, per event",
    ["projection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def database(container: Container) -> Database:
    return Database(container.settings, container.ledger.recorder.datastore)  # type: ignore[attr-defined]


def log_reader(ledger: Any, db: Database) -> LogReader:
    return LogReader(db, ledger.recorder, ledger.mapper.keyring)


def read_side(container: Container) -> ReadSide:
    """The container's ReadSide (made once, kept in `container.extras["read_side"]`)."""
    rs = container.extras.get("read_side")
    if rs is None:
        ledger = container.ledger

        def event_time_after(position: int) -> datetime | None:
            notes = ledger.recorder.select_notifications(position, 1, inclusive_of_start=False)
            return ledger.mapper.to_domain_event(notes[0]).timestamp if notes else None

        db = database(container)
        rs = ReadSide(db, ledger.recorder.max_notification_id, event_time_after, log_reader(ledger, db).last_position)
        container.extras["read_side"] = rs
    return rs


class ProjectionLagCollector:
    """Projection position and lag read from the database at scrape time, for the API's /metrics.

    The worker may be another process (PostgreSQL), so the API reports what the views hold.
    """

    def __init__(self, container: Container) -> None:
        self.container = container

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        try:
            status = read_side(self.container).projections()
        except Exception:  # a scrape must not fail because the database is restarting
            log.warning("projection status unavailable for /metrics", exc_info=True)
            return
        families = {
            "position": GaugeMetricFamily("keel_projection_position", "Last log position applied to the views", labels=["projection"]),
            "lag_events": GaugeMetricFamily("keel_projection_lag_events", "Log events not yet in the views", labels=["projection"]),
            "lag_ms": GaugeMetricFamily("keel_projection_lag_ms", "Age of the oldest event not yet in the views", labels=["projection"]),
        }
        for p in status["projections"]:
            for key, family in families.items():
                family.add_metric([p["name"]], p[key])
        head = GaugeMetricFamily("keel_event_log_head", "Highest notification position in the ledger's log")
        head.add_metric([], status["head"])
        yield from families.values()
        yield head


LAG_SAMPLES_MAX = 1_000_000


def _observe(position: int, events: Sequence[tuple[int, Any]], samples: deque[float] | None = None) -> None:
    """Metrics after a commit; `samples` collects each event's lag in ms (event time to commit)."""
    now = datetime.now(tz=timezone.utc)
    POSITION.labels(VIEWS).set(position)
    hist = APPLY_LAG.labels(VIEWS)
    oldest = None
    for _, e in events:
        if e is not None:
            lag_s = (now - e.timestamp).total_seconds()
            hist.observe(lag_s)
            if samples is not None:
                samples.append(lag_s * 1000)
            oldest = oldest or e.timestamp
    if oldest is not None:
        LAG_MS.labels(VIEWS).set(max(0.0, (now - oldest).total_seconds() * 1000))


def lag_summary(samples: Sequence[float]) -> str:
    if not samples:
        return "projection lag: no events applied"
    s = sorted(samples)

    def q(x: float) -> float:
        return s[min(len(s) - 1, int(x * len(s)))]

    return f"projection lag over {len(s)} events: p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {s[-1]:.1f} ms"


class ProjectionWorker:
    """Follows the ledger's log into the views until stopped (a daemon thread)."""

    name = "projections"

    def __init__(self, container: Container, *, batch_max: int = READ_BATCH_MAX) -> None:
        self.container = container
        self.ledger = container.ledger
        self.store = SqlViewStore(database(container), LIVE)
        self.batch_max = batch_max
        self._stop = threading.Event()
        # Each applied event's lag (event time to view commit), reported when the worker stops.
        self.lag_samples_ms: deque[float] = deque(maxlen=LAG_SAMPLES_MAX)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keel-projections", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        log.info("%s", lag_summary(self.lag_samples_ms))

    def _listener(self) -> psycopg.Connection | None:
        if not self.container.settings.is_postgres:
            return None
        pg = self.container.settings.postgres()
        conn = psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password or None, dbname=pg.dbname,
            autocommit=True, connect_timeout=LISTEN_CONNECT_TIMEOUT_S,
        )  # fmt: skip
        channel = self.ledger.recorder.channel_name  # type: ignore[attr-defined]
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        return conn

    def _run(self) -> None:
        follower: ViewFollower | None = None
        listener: psycopg.Connection | None = None
        gauges_due = 0.0
        while not self._stop.is_set():
            try:
                if listener is None and self.container.settings.is_postgres:
                    listener = self._listener()
                if follower is None:
                    follower = ViewFollower(
                        log_reader(self.ledger, self.store.db), self.store, batch_max=self.batch_max,
                        on_applied=lambda p, ev: _observe(p, ev, self.lag_samples_ms),
                    )
                    log.info("projection %s resuming after position %d", VIEWS, follower.position)
                stepped_at = time.monotonic()
                n = follower.step()
                if time.monotonic() >= gauges_due:
                    gauges_due = time.monotonic() + GAUGE_INTERVAL_S
                    head = self.ledger.recorder.max_notification_id() or 0
                    LAG_EVENTS.labels(VIEWS).set(max(0, head - follower.position))
                if n >= self.batch_max:
                    continue  # more is waiting: read on before anything else
                if n == 0:
                    LAG_MS.labels(VIEWS).set(0)
                # Everything committed before the read is applied. A commit after it has sent
                # a NOTIFY that is already queued on the listener, so the wait below returns
                # at once: no head query is needed on the hot path.
                if n > 0:
                    self._stop.wait(max(0.0, stepped_at + STEP_INTERVAL_MIN_S - time.monotonic()))
                if listener is not None:
                    for _ in listener.notifies(timeout=LISTEN_TIMEOUT_S, stop_after=1):
                        pass
                else:
                    self._stop.wait(SQLITE_POLL_S)
            except Exception:
                # Nothing half-applied survives a failed transaction; start again from the
                # committed position after a pause (the database may be restarting).
                log.exception("projection %s failed; retrying", VIEWS)
                follower = None
                if listener is not None:
                    listener.close()
                    listener = None
                self._stop.wait(ERROR_BACKOFF_S)
        if listener is not None:
            listener.close()


def projection_worker(container: Container) -> ProjectionWorker:
    return ProjectionWorker(container)


# ---- keel replay --------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str) -> None:
        self.total = max(total, 1)
        self.label = label
        self.started = time.monotonic()
        self.done_events = 0
        self.last_draw = 0.0

    def __call__(self, position: int, events: int) -> None:
        self.done_events = events
        now = time.monotonic()
        if now - self.last_draw < 0.2 and position < self.total:
            return
        self.last_draw = now
        width = 30
        filled = int(width * min(position, self.total) / self.total)
        rate = events / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {position:,}/{self.total:,} ({rate:,.0f} events/s)"
        )
        sys.stderr.flush()

    def finish(self) -> float:
        sys.stderr.write("\n")
        return self.done_events / max(time.monotonic() - self.started, 1e-9)


def _rebuild_scratch(ledger: Any, db: Database, stop: int | None, label: str) -> tuple[ViewFollower, float]:
    scratch = create_scratch(db)
    follower = ViewFollower(log_reader(ledger, db), scratch, batch_max=REBUILD_BATCH_MAX)
    target = stop if stop is not None else (ledger.recorder.max_notification_id() or 0)
    bar = _Progress(target, label)
    applied = 0
    while follower.position < target:
        n = follower.step(target)
        if n == 0:
            break
        applied += n
        bar(follower.position, applied)
    return follower, bar.finish() if applied else 0.0


def replay_check(settings: Settings, out: Any = sys.stdout) -> int:
    """Rebuilds every view into scratch tables and compares them with the live ones.

    Returns the number of differences (0: identical). The comparison runs in one snapshot
    taken when the live tracking position equals the replayed one.
    """
    ledger = build_ledger(settings)
    db = Database(settings, ledger.recorder.datastore)  # type: ignore[attr-defined]
    live = SqlViewStore(db, LIVE)
    try:
        follower, rate = _rebuild_scratch(ledger, db, live.position(), "replaying")
        diffs: list[str] = []
        for _ in range(CHECK_CHASE_MAX):
            with db.transaction(commit=False) as cur:
                if db.is_pg:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute(db.sql(f"SELECT position FROM {live.t.tracking} WHERE name = %s"), (VIEWS,))
                live_position = int(cur.fetchone()[0])
                if live_position == follower.position:
                    diffs = compare(db, Tables(db, LIVE), Tables(db, SCRATCH), cur)
                    break
            if live_position < follower.position or follower.catch_up(stop=live_position) == 0:
                diffs = [f"tracking: live views claim position {live_position}, the log replays to {follower.position}"]
                break
        else:
            diffs = ["tracking: the live views kept moving; stop the projection worker and check again"]
        print(f"replayed {follower.position:,} positions ({rate:,.0f} events/s)", file=out)
        for line in diffs:
            print(line, file=out)
        print("read models match the log" if not diffs else f"read models DIFFER from the log ({len(diffs)} line(s))", file=out)
        return len(diffs)
    finally:
        drop_scratch(db)
        ledger.close()


def scratch_catch_up(ledger: Any, db: Database, scratch_position: int) -> Callable[[Any, int], int]:
    """For replace_live: applies to the scratch tables, inside the swap transaction, the events
    the live views already hold beyond `scratch_position`, so the live position never goes back."""

    def catch_up(cur: Any, live_position: int) -> int:
        position = scratch_position
        tx = view_tx(db, cur, SCRATCH)
        read = log_reader(ledger, db)
        while position < live_position:
            events = read(position, REBUILD_BATCH_MAX, live_position, tx)
            if not events:
                break
            tx.advance(position, events[-1][0])
            tx.write(project(events, tx.transfer_currencies))
            position = events[-1][0]
        return position

    return catch_up


def replay_rebuild(settings: Settings, out: Any = sys.stdout) -> float:
    """Rebuilds every view from the log and swaps it in; returns the rebuild rate in events/s."""
    ledger = build_ledger(settings)
    db = Database(settings, ledger.recorder.datastore)  # type: ignore[attr-defined]
    try:
        follower, rate = _rebuild_scratch(ledger, db, None, "rebuilding")
        position = replace_live(db, follower.position, scratch_catch_up(ledger, db, follower.position))
        print(f"rebuilt read models to position {position:,} ({rate:,.0f} events/s)", file=out)
        return rate
    finally:
        drop_scratch(db)
        ledger.close()
