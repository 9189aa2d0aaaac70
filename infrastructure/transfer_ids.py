"""The fraud module's table of transfer ids, `fraud_transfer_ids`: public id -> (tenant, storage
key) of every scored transfer, for the cross-tenant roles that name a transfer by its public id
alone (fraud/app.py). Runs on the fraud Application's own pool (`Store.sql_over`)."""
from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from infrastructure.schema import FRAUD_TRANSFER_IDS
from infrastructure.sql import Sql

COLUMNS = ("public_id", "tenant", "transfer_key")


class SqlTransferIds:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        table = sql.table(FRAUD_TRANSFER_IDS)
        self._keys = f"SELECT tenant, transfer_key FROM {table} WHERE public_id = %s ORDER BY tenant"

    def add(self, rows: Sequence[tuple[UUID, str, UUID]]) -> None:
        """Adds (public id, tenant, storage key) rows in one statement; rows already held are
        left alone, so a page scored again after a crash adds nothing twice."""
        self.sql.insert_rows(FRAUD_TRANSFER_IDS, COLUMNS, ("uuid", "text", "uuid"), rows, if_new=True)

    def keys_of(self, public_id: UUID) -> list[tuple[str, UUID]]:
        """(tenant, storage key) of every scored transfer whose public id is `public_id`."""
        rows = self.sql.fetchall(self._keys, (self.sql.uuid(public_id),))
        return [(tenant, self.sql.to_uuid(key)) for tenant, key in rows]
