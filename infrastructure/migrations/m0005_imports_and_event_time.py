"""Version 5: history with its event time (issue #15).

- keel_imports: `keel import` progress, one row per (tenant, file digest) saying how many rows of
  that file have settled (infrastructure/schema.py `imports_table`). A new table.
- rm_entries and rm_transfers get `occurred_at_us`, the event time (what the client said in
  `occurred_at`, else the recording time), filled with the recording time for the rows already
  there: no event before this version carries an event time. (A store created at this version
  already has the column: the read models' DDL follows the projection's columns.)
"""
from __future__ import annotations

from infrastructure import schema
from infrastructure.sql import Cursor, Sql

EVENT_TIME_TABLES = ("entries", "transfers")


def _has_column(sql: Sql, cur: Cursor, table: str, column: str) -> bool:
    if sql.dialect == "postgresql":
        qualified = sql.table(table)  # schema.table
        schema_name = qualified.rsplit(".", 1)[0].strip('"') if "." in qualified else "public"
        cur.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = %s",
            (schema_name, table, column),
        )
        return cur.fetchone() is not None
    cur.execute(f"PRAGMA table_info({table})")
    return any(row[1] == column for row in cur.fetchall())


def up(sql: Sql, cur: Cursor) -> None:
    for statement in schema.imports_table(sql):
        cur.execute(statement)
    kind = "bigint" if sql.dialect == "postgresql" else "INTEGER"
    for name in EVENT_TIME_TABLES:
        table = schema.LIVE + name
        if not _has_column(sql, cur, table, "occurred_at_us"):
            cur.execute(f"ALTER TABLE {sql.table(table)} ADD COLUMN occurred_at_us {kind} NOT NULL DEFAULT 0")
            cur.execute(f"UPDATE {sql.table(table)} SET occurred_at_us = at_us")
