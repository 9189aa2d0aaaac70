"""The event store on PostgreSQL: eventsourcing's recorders, extended, and the factory that builds them.

The recorders write, in the same database transaction as the events, the rows that must commit
with them: stored idempotent responses, the account-id directory, and the hash chain. Events go
in as plain arrays in one INSERT, the chain rows travel with the COMMIT: one round trip for a
batch of any size while the table lock is held. Tables are named after the Application
(`ledger_events`, ...) and are created only by `keel migrate` (Store.migrate).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import BasePostgresFactory, PostgresApplicationRecorder, PostgresFactory, PostgresProcessRecorder
from eventsourcing.utils import Environment, retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from application.chain import GENESIS_HASH, link
from infrastructure.recorded_rows import account_id_rows, idempotency_rows
from infrastructure.schema import ACCOUNT_IDS, CHAINED_EVENTS_TABLES, IDEMPOTENCY
from infrastructure.store import shared_pool

# How long a request waits for a pooled connection. While PostgreSQL is down every wait runs
# to this limit, and eventsourcing retries each read and insert up to 10 times: 2 s bounds a
# request at ~20 s before it answers 503 `unavailable` (30 s made it minutes).
POOL_WAIT_S = 2
POOL_RECONNECT_GIVE_UP_S = 4.0


class ArrayInsertMixin:
    """Inserts stored events as four plain arrays instead of one array of a composite type:
    psycopg dumps composites field by field through regex escaping (~25 µs per event); plain
    arrays are cheap. For PostgreSQL application and process recorders (ledger, fraud)."""

    datastore: Any
    events_table_name: str

    def _prepare_array_insert(self) -> None:
        # (originator id and version come back too: the hash chain pairs rows with events.)
        self._insert_arrays_statement = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
            " RETURNING notification_id, originator_id, originator_version"
        ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name))

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # Same order as the library's: table lock (commit order = id order), NOTIFY, insert.
        self._lock_table(curs)  # type: ignore[attr-defined]
        self._notify_channel(curs)  # type: ignore[attr-defined]
        if stored_events:
            curs.execute(
                self._insert_arrays_statement,
                (
                    [e.originator_id for e in stored_events],
                    [e.originator_version for e in stored_events],
                    [e.topic for e in stored_events],
                    [e.state for e in stored_events],
                ),
                prepare=True,
                binary=True,  # binary dumping skips per-element text escaping
            )


class KeelPostgresProcessRecorder(ArrayInsertMixin, PostgresProcessRecorder):
    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._prepare_array_insert()


class KeelPostgresApplicationRecorder(ArrayInsertMixin, PostgresApplicationRecorder):
    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._prepare_array_insert()
        self.chain_table = CHAINED_EVENTS_TABLES.get(events_table_name)
        if self.chain_table is not None:
            schema, chain = Identifier(self.datastore.schema), Identifier(self.chain_table)
            self._chain_head = SQL("SELECT hash FROM {}.{} ORDER BY notification_id DESC LIMIT 1").format(schema, chain)
            self._chain_insert = SQL(
                "INSERT INTO {}.{} (notification_id, hash) SELECT * FROM unnest(%b::bigint[], %b::bytea[])"
            ).format(schema, chain)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if self.chain_table is None or not stored_events:
            return super().insert_events(stored_events, **kwargs)
        # As the library's insert_events (pipeline mode: one round trip for the lock, NOTIFY,
        # INSERT and the chain head), plus the chain: its head is read and extended while the
        # EXCLUSIVE table lock that fixed these positions is still held, in the same transaction.
        # Any error, from the server or from Python, leaves the transaction by exception, so it
        # rolls back whole.
        with self.datastore.get_connection() as conn, conn.pipeline() as pipeline, conn.transaction():
            with conn.cursor() as curs:
                self._insert_events(curs, stored_events, **kwargs)
            # Tuples, not the pool's dict rows: a batch of 1,000 transfers returns 3,000 rows.
            with conn.cursor(row_factory=tuple_row) as curs, conn.cursor(row_factory=tuple_row) as head_curs:
                # lock (commit order = position order, and the chain head is ours), NOTIFY, INSERT
                self._insert_stored_events(curs, stored_events, **kwargs)
                head_curs.execute(self._chain_head, prepare=True)
                # Raises here (e.g. IntegrityError on a version clash), not later at COMMIT.
                pipeline.sync()
                inserted = curs.fetchall()  # the INSERT's RETURNING rows
                head = head_curs.fetchone()
                if len(inserted) != len(stored_events):
                    raise RuntimeError(f"inserted {len(inserted)} of {len(stored_events)} events")
                by_key = {(e.originator_id, e.originator_version): e for e in stored_events}
                rows = []
                for position, originator_id, originator_version in sorted(inserted):
                    e = by_key[(originator_id, originator_version)]
                    rows.append((position, e.originator_id, e.originator_version, e.topic, e.state))
                chained = link(bytes(head[0]) if head else GENESIS_HASH, rows)
                # No sync here: the chain rows travel with the COMMIT (one round trip fewer while
                # the table lock is held). If they fail, the COMMIT fails and nothing is stored.
                curs.execute(self._chain_insert, ([p for p, _ in chained], [h for _, h in chained]), prepare=True)
        return [r[0] for r in inserted]

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        accounts = account_id_rows(kwargs)
        if accounts:
            curs.executemany(
                SQL("INSERT INTO {}.{} (public_id, tenant, account_key) VALUES (%s, %s, %s)").format(
                    Identifier(self.datastore.schema), Identifier(ACCOUNT_IDS)
                ),
                accounts,
            )
        rows = idempotency_rows(kwargs)
        if rows:
            # A duplicate (scope, key) raises IntegrityError and rolls back the events too.
            curs.executemany(
                SQL(
                    "INSERT INTO {}.{} (scope, key, request_hash, answer, created_at_ms)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ).format(Identifier(self.datastore.schema), Identifier(IDEMPOTENCY)),
                rows,
            )
        super()._insert_events(curs, stored_events, **kwargs)


class KeelPostgresFactory(PostgresFactory):
    application_recorder_class = KeelPostgresApplicationRecorder
    process_recorder_class = KeelPostgresProcessRecorder

    def __init__(self, env: Any) -> None:
        shared = shared_pool(self._environment(env))
        if shared is not None:
            # The store's pool (infrastructure/store.py): skip the library's making of another.
            super(BasePostgresFactory, self).__init__(env)
            self.datastore = shared
            return
        super().__init__(env)
        # psycopg_pool retries a lost connection with doubling delays (1, 2, 4, … s) for
        # `reconnect_timeout` (5 min) before giving up: after a 90 s PostgreSQL outage the API
        # stayed unavailable for another ~20 s, waiting out the delays. Giving up early lets the
        # pool grow a fresh connection at the next request instead (tried at once).
        self.datastore.pool.reconnect_timeout = POOL_RECONNECT_GIVE_UP_S

    @staticmethod
    def _environment(env: Any) -> Environment:
        return env if isinstance(env, Environment) else Environment(env=env)
