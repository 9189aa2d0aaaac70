"""Background workers as the application runs them: something that starts and stops, and the
plain kind that calls a function every so often on a daemon thread (hold expiry, checkpoints,
the fraud consumer, idempotency cleanup). A tick that fails is logged and retried at the next
interval; whatever a tick writes carries its own tracking, so a restart resumes without loss.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

STOP_JOIN_S = 10.0


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
            except Exception:  # noqa: BLE001 - keep going: the next tick retries from the same position
                log.exception("worker %s tick failed", self.name)
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
