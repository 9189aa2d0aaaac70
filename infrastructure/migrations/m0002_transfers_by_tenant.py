"""Version 2: an index on the transfers read model by (tenant, position), for an analyst's
transactions of one tenant (infrastructure/schema.py `transfers_by_tenant_index` says why).

Building it reads the table once and blocks the projection worker's writes to it meanwhile
(readers are not blocked); the worker then catches up from its tracking position.
"""
from __future__ import annotations

from infrastructure import schema
from infrastructure.sql import Cursor, Sql


def up(sql: Sql, cur: Cursor) -> None:
    for statement in schema.transfers_by_tenant_index(sql):
        cur.execute(statement)
