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

_JIT_OFF = SQL("SET LOCAL jit = off")
# One query carries at most this many ids (a batch of 1,000 transfers names up to 2,000 accounts).
LOAD_IDS_MAX = 4096


class PostgresAggregateLoader:
    def __init__(self, datastore: Any, events_table: str, snapshots_table: str) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        events = SQL("{}.{}").format(schema, Identifier(events_table))
        snapshots = SQL("{}.{}").format(schema, Identifier(snapshots_table))
        # Per id: its latest snapshot (kind 0), then the events after it (kind 1). LATERAL keeps
        # both lookups on the primary keys whatever the planner's row estimates.
        self._statement = SQL(
            "SELECT ids.id, x.originator_version, x.topic, x.state FROM unnest(%b::uuid[]) AS ids(id)"
            " LEFT JOIN LATERAL (SELECT s.originator_version AS v, s.topic, s.state FROM {snapshots} s"
            "  WHERE s.originator_id = ids.id ORDER BY s.originator_version DESC LIMIT 1) snap ON true"
            " CROSS JOIN LATERAL ("
            "  SELECT snap.v AS originator_version, snap.topic, snap.state, 0 AS kind WHERE snap.v IS NOT NULL"
            "  UNION ALL"
            "  SELECT e.originator_version, e.topic, e.state, 1 FROM {events} e"
            "   WHERE e.originator_id = ids.id AND e.originator_version > COALESCE(snap.v, 0)) x"
            " ORDER BY ids.id, x.kind, x.originator_version"
        ).format(snapshots=snapshots, events=events)

    def load(self, ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]]:
        found: dict[UUID, list[StoredEvent]] = {}
        for start in range(0, len(ids), LOAD_IDS_MAX):
            chunk = list(ids[start : start + LOAD_IDS_MAX])
            with self.datastore.get_connection() as conn, conn.pipeline(), conn.transaction():
                # Without fresh statistics (a new table) the planner's estimate exceeds
                # jit_above_cost, and compiling the plan costs more than running it. The SET goes
                # on a cursor of its own: once, under the chaos test's faults, the pipeline left
                # the shared cursor on the SET's result and the read failed with a 500.
                conn.execute(_JIT_OFF)
                curs = conn.cursor(row_factory=tuple_row)
                curs.execute(self._statement, (chunk,), prepare=True, binary=True)
                rows = curs.fetchall()
                for row in rows:
                    found.setdefault(row[0], []).append(
                        StoredEvent(originator_id=row[0], originator_version=row[1], topic=row[2], state=bytes(row[3]))
                    )
        return found
