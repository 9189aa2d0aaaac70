"""Version 1: the schema `keel migrate` made before migrations were numbered — the ledger's side
tables (idempotency, account ids, chain, checkpoints, holder keys, access log, API keys, claims),
the read models with their tracking row, and the fraud module's tables beside the library's.

Every statement is idempotent (IF NOT EXISTS, ON CONFLICT DO NOTHING), so a store made by that
unnumbered `keel migrate` takes this migration as a no-op and is recorded at version 1.
"""
from __future__ import annotations

from infrastructure import schema
from infrastructure.sql import Cursor, Sql


def up(sql: Sql, cur: Cursor) -> None:
    for statement in [*schema.keel_tables(sql), *schema.read_model_tables(sql, schema.LIVE), *schema.fraud_tables(sql)]:
        cur.execute(statement)
