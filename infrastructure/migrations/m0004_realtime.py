"""Version 4: real time (issue #17) — the tenant-indexed event feed with its tracking and object
pictures, webhooks with their delivery state, and OAuth clients (infrastructure/schema.py
`realtime_tables` says what each holds). New tables only: nothing existing is touched, and the
feed worker fills the feed from the start of the logs."""
from __future__ import annotations

from infrastructure import schema
from infrastructure.sql import Cursor, Sql


def up(sql: Sql, cur: Cursor) -> None:
    for statement in schema.realtime_tables(sql):
        cur.execute(statement)
