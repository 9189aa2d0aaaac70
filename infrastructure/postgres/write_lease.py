"""A PostgreSQL advisory lock as the ledger's cross-process write lease (application.ports.WriteLease).

One dedicated connection per process holds a session-level advisory lock while the writer
refreshes, applies and commits a batch. If the connection is lost (PostgreSQL restarted, the
process paused), the lock goes with it and the ledger falls back to optimistic concurrency,
which is always correct on its own; the next acquire reconnects.
"""
from __future__ import annotations

import hashlib
import logging

import psycopg

from infrastructure.settings import PostgresParams

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2


class PostgresWriteLease:
    def __init__(self, params: PostgresParams, name: str = "ledger") -> None:
        self.params = params
        # One lock id per (schema, application): deployments sharing a server do not contend.
        digest = hashlib.sha256(f"keel-write-lease\x00{params.schema}\x00{name}".encode()).digest()
        self.lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection | None = None
        self._held = False
        self._timeout_s: float | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._timeout_s = None
            p = self.params
            self._conn = psycopg.connect(
                host=p.host, port=p.port, user=p.user, password=p.password or None, dbname=p.dbname,
                autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
            )  # fmt: skip
        return self._conn

    def acquire(self, timeout_s: float) -> bool:
        try:
            conn = self._connection()
            if self._timeout_s != timeout_s:
                conn.execute(f"SET lock_timeout = '{int(timeout_s * 1000)}ms'")
                self._timeout_s = timeout_s
            # Blocks in the server (no polling) until the other process releases, or times out.
            conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_id,), prepare=True)
            self._held = True
            return True
        except psycopg.errors.LockNotAvailable:
            log.warning("write lease busy for %.1f s; committing optimistically", timeout_s)
            return False
        except psycopg.Error as e:
            log.warning("write lease unavailable (%s); committing optimistically", type(e).__name__)
            self._drop()
            return False

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self._connection().execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,), prepare=True)
        except psycopg.Error:
            # The session is gone, and the lock with it.
            self._drop()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        self._drop()
