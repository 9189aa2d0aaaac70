"""The access log (PCI DSS 10.2 style): every write and every audit read, who, what, outcome.

Recorded by api.observe (an ASGI middleware, outermost, so it also sees requests that
authentication refused, 401/403) and by api.fastpath.
Entries are buffered and written in batches by one background thread (one INSERT per batch, not
one commit per request), so logging never adds a database round trip to a request. The cost:
on a crash the last flush interval (at most ACCESS_FLUSH_INTERVAL_S) of entries can be lost.
It must never log tokens, bodies or query values other than the audit cursor parameters.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

from eventsourcing.persistence import ConnectionPoolClosedError
from litestar.types import Scope

log = logging.getLogger(__name__)

ACCESS_FLUSH_INTERVAL_S = 0.2
ACCESS_BUFFER_MAX = 100_000  # beyond this, entries are dropped and the drop is logged
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
AUDITED_READ_PREFIXES = ("/v1/audit",)
QUERY_MAX_CHARS = 200


class AccessLogBuffer:
    """Collects entries; a daemon thread appends them to the audit store in batches."""

    def __init__(self, audit: Any) -> None:
        self.audit = audit
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str, str, str, str, str]] = []
        self._dropped = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keel-access-log", daemon=True)
        self._thread.start()

    def add(self, key_id: str, role: str, route: str, target: str, outcome: str) -> None:
        at = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
        with self._lock:
            if len(self._entries) >= ACCESS_BUFFER_MAX:
                self._dropped += 1
                return
            self._entries.append((at, key_id, role, route, target, outcome))

    def flush(self) -> None:
        with self._lock:
            entries, self._entries = self._entries, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.error("access log buffer overflowed: %d entries dropped", dropped)
        if entries:
            try:
                self.audit.record_access_many(entries)
            except Exception as e:
                if not _store_closed(e):
                    log.exception("access log write failed; %d entries retried next flush", len(entries))
                    with self._lock:
                        self._entries[:0] = entries[: ACCESS_BUFFER_MAX - len(self._entries)]
                    return
                # The store was closed without close_access_log (an app not shut down through
                # its lifespan): nothing can be written any more.
                log.error("access log store closed: %d entries lost", len(entries))
                self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(ACCESS_FLUSH_INTERVAL_S)
            self._wake.clear()
            if not self._stopped.is_set():
                self.flush()

    def stop(self) -> None:
        """Writes what is buffered, then stops the thread (before the store closes)."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(5)
        self.flush()


def _store_closed(e: BaseException) -> bool:
    """The store's connection pool is closed for good (not: the database is briefly away)."""
    while e is not None:
        if isinstance(e, ConnectionPoolClosedError) or type(e).__name__ == "PoolClosed":
            return True
        e = e.__cause__  # type: ignore[assignment]
    return False


def close_access_log(app: Any) -> None:
    """An on_shutdown hook: flush and stop the buffer while the store is still open."""
    buf = app.state.get("access_log_buffer")
    if buf is not None:
        buf.stop()


def _buffer(scope: Scope) -> AccessLogBuffer | None:
    state = scope["app"].state
    buf = state.get("access_log_buffer")
    if buf is None:
        audit = state.get("audit")
        if audit is None:
            return None
        with _create_lock:
            buf = state.get("access_log_buffer")
            if buf is None:
                buf = AccessLogBuffer(audit)
                state["access_log_buffer"] = buf
    return buf


_create_lock = threading.Lock()


def logs_access(method: str, path: str) -> bool:
    """Whether a request gets an entry: every write, and reads of the audit routes."""
    return method not in READ_METHODS or path.startswith(AUDITED_READ_PREFIXES)


def record_access(scope: Scope, status: int) -> None:
    """One entry for a request that must be logged (a write, or an audit read)."""
    buf = _buffer(scope)
    if buf is None:
        return
    method, path = scope["method"], scope["path"]
    user = scope.get("user")
    template = scope.get("path_template") or path
    target = path
    query = scope.get("query_string", b"").decode("latin-1")
    if query and path.startswith(AUDITED_READ_PREFIXES):
        target += "?" + query[:QUERY_MAX_CHARS]
    buf.add(getattr(user, "key_id", "-"), getattr(user, "role", "-"), f"{method} {template}", target, str(status))
