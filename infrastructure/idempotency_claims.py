"""Claims on Idempotency-Keys across processes: who is running a key right now.

The stored response itself is written with the effect, in the same commit (recorders). A claim
only keeps two API processes from running the same key at once, so that the second can answer
409 `idempotency_key_in_flight` (or replay the stored response) instead of re-running the
command against changed state. Claims are ephemeral: on PostgreSQL the table is UNLOGGED (no
WAL flush per claim; a crash simply forgets every claim; infrastructure/schema.py), and a claim
older than the stale age can be taken over, so a killed process never blocks a key for long.
Never stores a response.
"""
from __future__ import annotations

from infrastructure.schema import IDEMPOTENCY_CLAIMS
from infrastructure.sql import Sql


class SqlClaims:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        table = sql.table(IDEMPOTENCY_CLAIMS)
        # A claim is taken when the key is free or its holder's claim is stale (older than the bound).
        self._claim = (
            f"INSERT INTO {table} (scope, key, claimed_at_ms) VALUES (%s, %s, %s)"
            " ON CONFLICT (scope, key) DO UPDATE SET claimed_at_ms = excluded.claimed_at_ms"
            f" WHERE {table}.claimed_at_ms < %s"
        )
        self._release = f"DELETE FROM {table} WHERE scope = %s AND key = %s"
        self._expire = f"DELETE FROM {table} WHERE claimed_at_ms < %s"

    def claim(self, scope: str, key: str, now_ms: int, stale_before_ms: int) -> bool:
        return self.sql.execute(self._claim, (scope, key, now_ms, stale_before_ms)) == 1

    def release(self, scope: str, key: str) -> None:
        self.sql.execute(self._release, (scope, key))

    def delete_older_than(self, cutoff_ms: int) -> int:
        return self.sql.execute(self._expire, (cutoff_ms,))
