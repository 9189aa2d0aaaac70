"""The projection worker: follows the ledger's log into the read models (views), one transaction
per batch that writes the rows and the tracking position together. It must never write anything
else. How it waits for new events is the store's (`Store.open_log_waiter`: LISTEN/NOTIFY on
PostgreSQL, polling on SQLite); what it writes is application/projections.py's fold.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Gauge, Histogram

from application.projections import VIEWS
from application.view_follower import READ_BATCH_MAX, ViewFollower
from infrastructure.readmodels import LIVE, LogReader, SqlViewStore, ViewDatabase
from infrastructure.store import LogWaiter

log = logging.getLogger(__name__)

# At most one view commit per this interval when the log is busy: each commit then carries more
# events (one fsync and a few statements for dozens of ledger commits, not one each); at most
# this much lag is added. Like the fraud consumer's KEEL_FRAUD_POLL_INTERVAL_MS.
STEP_INTERVAL_MIN_S = 0.02
GAUGE_INTERVAL_S = 1.0
ERROR_BACKOFF_S = 1.0
STOP_JOIN_S = 15.0
LAG_SAMPLES_MAX = 1_000_000

POSITION = Gauge("keel_projection_position", "Last log position applied to the views", ["projection"])
LAG_EVENTS = Gauge("keel_projection_lag_events", "Events in the log not yet applied to the views", ["projection"])
LAG_MS = Gauge("keel_projection_lag_ms", "Age of the oldest event in the last applied batch, at commit", ["projection"])
APPLY_LAG = Histogram(
    "keel_projection_apply_lag_seconds",
    "Event time to view commit, per event",
    ["projection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def log_reader(ledger: Any, db: ViewDatabase) -> LogReader:
    """The ledger's log as the views read it (its own decoder, through the ledger's mapper, so
    encrypted, compressed and upcast events read as they do everywhere)."""
    return LogReader(db, ledger.recorder, ledger.mapper)


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

    def __init__(
        self, ledger: Any, views: ViewDatabase, open_waiter: Callable[[], LogWaiter], *, batch_max: int = READ_BATCH_MAX
    ) -> None:
        self.ledger = ledger
        self.store = SqlViewStore(views, LIVE)
        self.open_waiter = open_waiter
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
            self._thread.join(STOP_JOIN_S)
        log.info("%s", lag_summary(self.lag_samples_ms))

    def _run(self) -> None:
        follower: ViewFollower | None = None
        waiter: LogWaiter | None = None
        gauges_due = 0.0
        while not self._stop.is_set():
            try:
                if waiter is None:
                    waiter = self.open_waiter()  # before the read: no commit after it is waited past
                if follower is None:
                    follower = ViewFollower(
                        log_reader(self.ledger, self.store.db), self.store, batch_max=self.batch_max,
                        on_applied=lambda p, ev: _observe(p, ev, self.lag_samples_ms),
                    )  # fmt: skip
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
                if n > 0:
                    self._stop.wait(max(0.0, stepped_at + STEP_INTERVAL_MIN_S - time.monotonic()))
                waiter.wait(self._stop)
            except Exception:  # noqa: BLE001 - keep following; the database may be restarting
                # Nothing half-applied survives a failed transaction; start again from the
                # committed position after a pause.
                log.exception("projection %s failed; retrying", VIEWS)
                follower = None
                if waiter is not None:
                    waiter.close()
                    waiter = None
                self._stop.wait(ERROR_BACKOFF_S)
        if waiter is not None:
            waiter.close()
