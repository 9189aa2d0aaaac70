"""Background workers: long-running loops that follow the log or keep time.

Each entry of `WORKERS` builds a Worker for a Container. On PostgreSQL each runs as its own
process (`keel worker NAME`); in the embedded SQLite default `keel serve` runs all of them in
its own process. A Worker must survive SIGKILL at any point: whatever it writes carries its
tracking position in the same transaction, so a restart resumes without loss or repetition.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from application.expiry import HoldExpiry
from keel.bootstrap import Container

log = logging.getLogger(__name__)


class Worker(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class PollingWorker:
    """Calls `tick()` every `interval_s` on a daemon thread until stopped."""

    def __init__(self, name: str, tick: Callable[[], object], interval_s: float) -> None:
        self.name = name
        self._tick = tick
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"keel-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # keep going: the next tick retries from the same position
                log.exception("worker %s tick failed", self.name)
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


HOLD_EXPIRY_INTERVAL_S = 1.0


def hold_expiry_worker(c: Container) -> Worker:
    expiry = HoldExpiry(c.ledger, c.writer.submit)
    return PollingWorker("expiry", expiry.expire_due, HOLD_EXPIRY_INTERVAL_S)


def projection_worker(c: Container) -> Worker:
    """Read models (keel/projections.py): follows the log into the views, tracking in the same commit."""
    from keel.projections import ProjectionWorker

    return ProjectionWorker(c)


# name -> factory. Other modules add their workers here (projections, fraud, checkpoints, ...).
WORKERS: dict[str, Callable[[Container], Worker]] = {
    "expiry": hold_expiry_worker,
    "projections": projection_worker,
}


IDEMPOTENCY_CLEANUP_INTERVAL_S = 60.0
IDEMPOTENCY_KEEP_S = 24 * 3600  # SPEC §5: stored responses are kept at least 24 hours
IDEMPOTENCY_CLAIM_MAX_S = 3600  # claims of killed processes (live ones last seconds)


def idempotency_cleanup_worker(c: Container) -> Worker:
    import time

    from keel.bootstrap import idempotency_claims

    claims = idempotency_claims(c)

    def tick() -> None:
        claims.delete_older_than(int((time.time() - IDEMPOTENCY_CLAIM_MAX_S) * 1000))
        deleted = c.idempotency.delete_older_than(int((time.time() - IDEMPOTENCY_KEEP_S) * 1000))
        if deleted:
            log.info("deleted %d idempotency records older than %d s", deleted, IDEMPOTENCY_KEEP_S)

    return PollingWorker("idempotency_cleanup", tick, IDEMPOTENCY_CLEANUP_INTERVAL_S)


WORKERS["idempotency_cleanup"] = idempotency_cleanup_worker
