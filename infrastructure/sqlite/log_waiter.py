"""How a follower of the ledger's log waits for new events on SQLite: by polling (the library's
SQLite recorder has no subscription, and a follower runs in the writer's own process)."""
from __future__ import annotations

import threading

POLL_S = 0.02


class PollingLogWaiter:
    def wait(self, stop: threading.Event) -> None:
        stop.wait(POLL_S)

    def close(self) -> None:
        return None
