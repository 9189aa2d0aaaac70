"""Where `keel import` got to with each file (application/importing.py ImportProgress), in
keel_imports (infrastructure/schema.py)."""
from __future__ import annotations

import time

from infrastructure.schema import IMPORTS
from infrastructure.sql import Sql


class SqlImportProgress:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.table = sql.table(IMPORTS)

    def get(self, tenant: str, digest: str) -> tuple[int, str] | None:
        row = self.sql.fetchone(f"SELECT rows_done, report FROM {self.table} WHERE tenant = %s AND digest = %s", (tenant, digest))
        return None if row is None else (int(row[0]), str(row[1]))

    def save(self, tenant: str, digest: str, rows_total: int, rows_done: int, report: str) -> None:
        self.sql.execute(
            f"INSERT INTO {self.table} (tenant, digest, rows_total, rows_done, report, updated_at_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, digest) DO UPDATE SET"
            " rows_done = excluded.rows_done, report = excluded.report, updated_at_ms = excluded.updated_at_ms",
            (tenant, digest, rows_total, rows_done, report, int(time.time() * 1000)),
        )
