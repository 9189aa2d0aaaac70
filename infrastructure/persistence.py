"""Event-store persistence for PostgreSQL and SQLite, and the tables that live beside it.

The recorders extend eventsourcing's so that rows which must commit with the events (stored
idempotent responses) are written in the same database transaction as the events. Tables are
named after the Application (`ledger_events`, ...) on both databases, and are created only by
`migrate()` (`keel migrate`); Applications are always constructed with CREATE_TABLE=no.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteFactory, SQLiteProcessRecorder
from eventsourcing.utils import retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from application.chain import GENESIS_HASH, link
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
    # Every account's public id, tenant and storage key, written with its Account.Opened: how
    # cross-tenant roles (auditor, admin) find an account by the id its tenant uses.
    """CREATE TABLE IF NOT EXISTS {schema}.keel_account_ids (
        public_id uuid NOT NULL,
        tenant text NOT NULL,
        account_key uuid NOT NULL UNIQUE,
        PRIMARY KEY (public_id, tenant))""",
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
    """CREATE TABLE IF NOT EXISTS keel_account_ids (
        public_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        account_key TEXT NOT NULL UNIQUE,
        PRIMARY KEY (public_id, tenant))""",
]

# ---- audit: hash chain, signed checkpoints, holder keys, access log ---------------------------
# Events tables whose rows are hash-chained, and the table that holds the chain (see
# application/chain.py). The chain row is written in the same transaction as its event, under
# the same lock that decides the event's position, so no committed event is outside the chain.
CHAINED_EVENTS_TABLES: dict[str, str] = {"ledger_events": "ledger_chain"}
CHECKPOINTS_TABLE = "ledger_checkpoints"
HOLDER_KEYS_TABLE = "keel_holder_keys"
ACCESS_LOG_TABLE = "keel_access_log"

_PG_DDL += [
    "CREATE TABLE IF NOT EXISTS {schema}.ledger_chain (notification_id bigint PRIMARY KEY, hash bytea NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {schema}.ledger_checkpoints (
        id bigserial PRIMARY KEY,
        position bigint NOT NULL,
        head_hash text NOT NULL,
        signed_at text NOT NULL,
        key_id text NOT NULL,
        signature text NOT NULL)""",
    # Per-holder keys, each wrapped by a key-encryption key kept outside the database (kek_id
    # names it); both NULL once erased. Never a bare key: a copy of this table reveals nothing.
    """CREATE TABLE IF NOT EXISTS {schema}.keel_holder_keys (
        key_id text PRIMARY KEY,
        wrapped_key bytea,
        kek_id text,
        created_at text NOT NULL,
        erased_at text,
        CHECK ((wrapped_key IS NULL) = (kek_id IS NULL)))""",
    """CREATE TABLE IF NOT EXISTS {schema}.keel_access_log (
        id bigserial PRIMARY KEY,
        at text NOT NULL,
        key_id text NOT NULL,
        role text NOT NULL,
        route text NOT NULL,
        target text NOT NULL,
        outcome text NOT NULL)""",
    # Append-only: the database itself refuses edits of the audit trail (a superuser can still
    # drop the trigger; the chain and the signed checkpoints catch what gets past it).
    """CREATE OR REPLACE FUNCTION {schema}.keel_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$""",
    "DROP TRIGGER IF EXISTS keel_access_log_append_only ON {schema}.keel_access_log",
    """CREATE TRIGGER keel_access_log_append_only BEFORE UPDATE OR DELETE ON {schema}.keel_access_log
        FOR EACH ROW EXECUTE FUNCTION {schema}.keel_append_only()""",
    "DROP TRIGGER IF EXISTS ledger_checkpoints_append_only ON {schema}.ledger_checkpoints",
    """CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON {schema}.ledger_checkpoints
        FOR EACH ROW EXECUTE FUNCTION {schema}.keel_append_only()""",
]

_SQLITE_DDL += [
    "CREATE TABLE IF NOT EXISTS ledger_chain (notification_id INTEGER PRIMARY KEY, hash BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS ledger_checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        position INTEGER NOT NULL,
        head_hash TEXT NOT NULL,
        signed_at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS keel_holder_keys (
        key_id TEXT PRIMARY KEY,
        wrapped_key BLOB,
        kek_id TEXT,
        created_at TEXT NOT NULL,
        erased_at TEXT,
        CHECK ((wrapped_key IS NULL) = (kek_id IS NULL)))""",
    """CREATE TABLE IF NOT EXISTS keel_access_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        role TEXT NOT NULL,
        route TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL)""",
    """CREATE TRIGGER IF NOT EXISTS keel_access_log_no_update BEFORE UPDATE ON keel_access_log
        BEGIN SELECT RAISE(ABORT, 'keel_access_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS keel_access_log_no_delete BEFORE DELETE ON keel_access_log
        BEGIN SELECT RAISE(ABORT, 'keel_access_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_update BEFORE UPDATE ON ledger_checkpoints
        BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_delete BEFORE DELETE ON ledger_checkpoints
        BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END""",
]


def _idem_rows(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    records: Sequence[IdempotencyRecord] = kwargs.get("idempotency") or ()
    return [(r.scope, r.key, r.request_hash, r.status_code, r.body, r.created_at_ms) for r in records]


def _account_id_rows(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(public id, tenant, storage key) of the accounts opened by this commit (`Ledger.save`)."""
    return list(kwargs.get("accounts") or ())


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
        accounts = _account_id_rows(kwargs)
        if accounts:
            curs.executemany(
                SQL("INSERT INTO {}.keel_account_ids (public_id, tenant, account_key) VALUES (%s, %s, %s)").format(
                    Identifier(self.datastore.schema)
                ),
                accounts,
            )
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
        chain_table = CHAINED_EVENTS_TABLES.get(self.events_table_name)
        if chain_table is not None and stored_events:
            # SQLite has one writer: the INSERTs above took the database's write lock, which is
            # held until this transaction commits, so the head read here is the true head.
            assert ids is not None and len(ids) == len(stored_events)
            c.execute(f"SELECT hash FROM {chain_table} ORDER BY notification_id DESC LIMIT 1")
            head = c.fetchone()
            chained = link(
                bytes(head[0]) if head else GENESIS_HASH,
                [(i, e.originator_id, e.originator_version, e.topic, e.state) for i, e in zip(ids, stored_events)],
            )
            c.executemany(f"INSERT INTO {chain_table} (notification_id, hash) VALUES (?, ?)", chained)
        accounts = _account_id_rows(kwargs)
        if accounts:
            c.executemany(
                "INSERT INTO keel_account_ids (public_id, tenant, account_key) VALUES (?, ?, ?)",
                [(str(p), t, str(k)) for p, t, k in accounts],
            )
        rows = _idem_rows(kwargs)
        if rows:
            c.executemany(
                "INSERT INTO keel_idempotency (scope, key, request_hash, status_code, body, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return ids


class KeelSQLiteProcessRecorder(SQLiteProcessRecorder):
    """eventsourcing's SQLite process recorder keeps every follower's position in one table named
    `tracking`, keyed by the *upstream* application's name, so two followers of the ledger in one
    file would share a row. This one uses its own table (`<appname>_tracking`), as on PostgreSQL."""

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events", tracking_table_name: str = "tracking") -> None:
        # Set first: the base constructor already builds the CREATE statements.
        self.tracking_table_name = tracking_table_name
        super().__init__(datastore, events_table_name=events_table_name)
        self.insert_tracking_statement = self._rename(self.insert_tracking_statement)
        self.select_max_tracking_id_statement = self._rename(self.select_max_tracking_id_statement)

    def _rename(self, statement: str) -> str:
        return re.sub(r"\btracking\b", self.tracking_table_name, statement)

    def construct_create_table_statements(self) -> list[str]:
        return [self._rename(s) if "TABLE IF NOT EXISTS tracking " in s else s for s in super().construct_create_table_statements()]


class KeelSQLiteFactory(SQLiteFactory):
    """SQLite with per-application table names, as on PostgreSQL, so one file holds every app."""

    process_recorder_class = KeelSQLiteProcessRecorder

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
    process_recorder_class = KeelPostgresProcessRecorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # psycopg_pool retries a lost connection with doubling delays (1, 2, 4, … s) for
        # `reconnect_timeout` (5 min) before giving up: after a 90 s PostgreSQL outage the API
        # stayed unavailable for another ~20 s, waiting out the delays. Giving up early lets the
        # pool grow a fresh connection at the next request instead (tried at once).
        self.datastore.pool.reconnect_timeout = POOL_RECONNECT_GIVE_UP_S


STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def secure_sqlite_files(db_file: str) -> None:
    """The embedded store's directory is made 0700 (an existing one is left as it is), and the
    database file is created 0600 before SQLite opens it; SQLite gives its -wal and -shm files
    the database file's mode. Files left looser by an older version are tightened to 0600."""
    parent = os.path.dirname(db_file)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=STORE_DIR_MODE, exist_ok=True)
        os.chmod(parent, STORE_DIR_MODE)  # whatever the umask
    try:
        os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STORE_FILE_MODE))
    except FileExistsError:
        pass
    for path in [db_file] + [db_file + side for side in SQLITE_SIDE_FILES]:
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, STORE_FILE_MODE)
        except (FileNotFoundError, PermissionError):  # gone, or another user's: not ours to change
            pass


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
        if settings.sqlite_file is not None:
            secure_sqlite_files(settings.sqlite_file)
        env.update(
            {
                "PERSISTENCE_MODULE": "infrastructure.persistence:KeelSQLiteFactory",
                "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        )
    return env


def extra_ddl(settings: Settings) -> list[str]:
    from infrastructure import idempotency_claims, keys
    from infrastructure.readmodels import readmodel_ddl  # read models (issue 4)

    if settings.is_postgres:
        schema = settings.database_schema
        return (
            [s.replace("{schema}", f'"{schema}"') for s in _PG_DDL]
            + keys.pg_ddl(schema)
            + idempotency_claims.pg_ddl(schema)
            + readmodel_ddl(settings)
        )
    return list(_SQLITE_DDL) + keys.sqlite_ddl() + idempotency_claims.sqlite_ddl() + readmodel_ddl(settings)
