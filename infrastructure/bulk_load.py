"""PostgreSQL implementation of `application.ports.AggregateLoader`: one query for many ids.

The snapshot and event tables are the library's own (`<app>_snapshots`, `<app>_events`), read
with the same columns the library reads; the primary key (originator_id, originator_version)
serves both joins.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

# One query carries at most this many ids (a batch of 1,000 transfers names up to 2,000 accounts).
LOAD_IDS_MAX = 4096


class PostgresAggregateLoader:
    def __init__(self, datastore: Any, events_table: str, snapshots_table: str | None) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        events = SQL("{}.{}").format(schema, Identifier(events_table))
        if snapshots_table is None:
            self._statement = SQL(
                "SELECT e.originator_id, e.originator_version, e.topic, e.state FROM {} e"
                " WHERE e.originator_id = ANY(%b::uuid[]) ORDER BY e.originator_id, e.originator_version"
            ).format(events)
            return
        snapshots = SQL("{}.{}").format(schema, Identifier(snapshots_table))
        # Snapshots sort before the events that follow them (kind 0 before 1 for each id).
        self._statement = SQL(
            "WITH ids AS (SELECT unnest(%b::uuid[]) AS id),"
            " snap AS (SELECT DISTINCT ON (s.originator_id) s.originator_id, s.originator_version, s.topic, s.state"
            "  FROM {snapshots} s JOIN ids ON s.originator_id = ids.id"
            "  ORDER BY s.originator_id, s.originator_version DESC)"
            " SELECT originator_id, originator_version, topic, state, 0 AS kind FROM snap"
            " UNION ALL"
            " SELECT e.originator_id, e.originator_version, e.topic, e.state, 1 FROM {events} e"
            "  JOIN ids ON e.originator_id = ids.id LEFT JOIN snap ON snap.originator_id = e.originator_id"
            "  WHERE e.originator_version > COALESCE(snap.originator_version, 0)"
            " ORDER BY 1, 5, 2"
        ).format(snapshots=snapshots, events=events)

    def load(self, ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]]:
        found: dict[UUID, list[StoredEvent]] = {}
        for start in range(0, len(ids), LOAD_IDS_MAX):
            chunk = list(ids[start : start + LOAD_IDS_MAX])
            with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
                curs.execute(self._statement, (chunk,), prepare=True, binary=True)
                for row in curs.fetchall():
                    found.setdefault(row[0], []).append(
                        StoredEvent(originator_id=row[0], originator_version=row[1], topic=row[2], state=bytes(row[3]))
                    )
        return found
