"""Event-store persistence for PostgreSQL and SQLite, and the tables that live beside it.

The recorders extend eventsourcing's so that rows which must commit with the events (stored
idempotent responses) are written in the same database transaction as the events. Tables are
named after the Application (`ledger_events`, ...) on both databases, and are created only by
`migrate()` (`keel migrate`); Applications are always constructed with CREATE_TABLE=no.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteFactory
from psycopg.sql import SQL, Identifier

from application.ports import IdempotencyRecord
from infrastructure.settings import Settings

IDEMPOTENCY_TABLE = "keel_idempotency"
# How long a request waits for a pooled connection. While PostgreSQL is down every wait runs
# to this limit, and eventsourcing retries each read and insert up to 10 times: 2 s bounds a
# request at ~20 s before it answers 503 `unavailable` (30 s made it minutes).
POOL_WAIT_S = 2
POOL_RECONNECT_GIVE_UP_S = 4.0

_PG_DDL = [
    """CREATE TABLE IF NOT EXISTS {schema}.keel_idempotency (
        scope text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        status_code integer NOT NULL,
        body bytea NOT NULL,
        created_at_ms bigint NOT NULL,
        PRIMARY KEY (scope, key))""",
    "CREATE INDEX IF NOT EXISTS keel_idempotency_created_idx ON {schema}.keel_idempotency (created_at_ms)",
]

_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS keel_idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, key))""",
    "CREATE INDEX IF NOT EXISTS keel_idempotency_created_idx ON keel_idempotency (created_at_ms)",
]


def _idem_rows(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    records: Sequence[IdempotencyRecord] = kwargs.get("idempotency") or ()
    return [(r.scope, r.key, r.request_hash, r.status_code, r.body, r.created_at_ms) for r in records]


class KeelPostgresApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        # Four plain arrays instead of one array of a composite type: psycopg dumps composites
        # field by field through regex escaping (~25 µs per event); plain arrays are cheap.
        self._insert_arrays_statement = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
            " RETURNING notification_id"
        ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name))

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # Same order as the library's: table lock (commit order = id order), NOTIFY, insert.
        self._lock_table(curs)
        self._notify_channel(curs)
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

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        rows = _idem_rows(kwargs)
        if rows:
            # A duplicate (scope, key) raises IntegrityError and rolls back the events too.
            curs.executemany(
                SQL(
                    "INSERT INTO {}.keel_idempotency (scope, key, request_hash, status_code, body, created_at_ms)"
                    " VALUES (%s, %s, %s, %s, %s, %s)"
                ).format(Identifier(self.datastore.schema)),
                rows,
            )
        super()._insert_events(curs, stored_events, **kwargs)


class KeelSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        rows = _idem_rows(kwargs)
        if rows:
            c.executemany(
                "INSERT INTO keel_idempotency (scope, key, request_hash, status_code, body, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return ids


class KeelSQLiteFactory(SQLiteFactory):
    """SQLite with per-application table names, as on PostgreSQL, so one file holds every app."""

    def _prefix(self) -> str:
        return self.env.name.lower() or "stored"

    def aggregate_recorder(self, purpose: str = "events") -> Any:
        recorder = self.aggregate_recorder_class(datastore=self.datastore, events_table_name=f"{self._prefix()}_{purpose}")
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def application_recorder(self) -> Any:
        recorder = KeelSQLiteApplicationRecorder(datastore=self.datastore, events_table_name=f"{self._prefix()}_events")
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def tracking_recorder(self, tracking_recorder_class: Any = None) -> Any:
        cls = tracking_recorder_class or self.tracking_recorder_class
        recorder = cls(datastore=self.datastore, tracking_table_name=f"{self._prefix()}_tracking")
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def process_recorder(self) -> Any:
        recorder = self.process_recorder_class(
            datastore=self.datastore,
            events_table_name=f"{self._prefix()}_events",
            tracking_table_name=f"{self._prefix()}_tracking",
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder


class KeelPostgresFactory(PostgresFactory):
    application_recorder_class = KeelPostgresApplicationRecorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # psycopg_pool retries a lost connection with doubling delays (1, 2, 4, … s) for
        # `reconnect_timeout` (5 min) before giving up: after a 90 s PostgreSQL outage the API
        # stayed unavailable for another ~20 s, waiting out the delays. Giving up early lets the
        # pool grow a fresh connection at the next request instead (tried at once).
        self.datastore.pool.reconnect_timeout = POOL_RECONNECT_GIVE_UP_S


def persistence_env(settings: Settings, *, create_table: bool = False) -> dict[str, str]:
    """The eventsourcing environment for every Application of this deployment."""
    env = {
        "MAPPER_TOPIC": "infrastructure.mapper:MsgspecMapper",
        "CREATE_TABLE": "yes" if create_table else "no",
    }
    if settings.is_postgres:
        pg = settings.postgres()
        env.update(
            {
                "PERSISTENCE_MODULE": "infrastructure.persistence:KeelPostgresFactory",
                "POSTGRES_HOST": pg.host,
                "POSTGRES_PORT": str(pg.port),
                "POSTGRES_USER": pg.user,
                "POSTGRES_PASSWORD": pg.password,
                "POSTGRES_DBNAME": pg.dbname,
                "POSTGRES_SCHEMA": pg.schema,
                "POSTGRES_POOL_SIZE": str(settings.pg_pool_size),
                "POSTGRES_MAX_OVERFLOW": str(settings.pg_pool_size),
                "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_S),
                "POSTGRES_LOCK_TIMEOUT": "30",
                "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
            }
        )
    else:
        path = settings.sqlite_path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        env.update(
            {
                "PERSISTENCE_MODULE": "infrastructure.persistence:KeelSQLiteFactory",
                "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        )
    return env


def extra_ddl(settings: Settings) -> list[str]:
    from infrastructure import keys

    if settings.is_postgres:
        schema = settings.database_schema
        return [s.replace("{schema}", f'"{schema}"') for s in _PG_DDL] + keys.pg_ddl(schema)
    return list(_SQLITE_DDL) + keys.sqlite_ddl()
