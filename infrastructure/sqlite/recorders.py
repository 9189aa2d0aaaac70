"""The event store on SQLite: eventsourcing's recorders, extended, and the factory that builds them.

As on PostgreSQL, the rows that must commit with the events (stored idempotent responses, the
account-id directory, the hash chain) are written in the events' own transaction, and tables
are named after the Application (`ledger_events`, `fraud_tracking`, ...) so one file holds every
Application. Tables are created only by `keel migrate` (Store.migrate). The database file and its
directory are made private before SQLite first opens them.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteFactory, SQLiteProcessRecorder
from eventsourcing.utils import Environment

from application.chain import GENESIS_HASH, link
from infrastructure.recorded_rows import account_id_rows, idempotency_rows
from infrastructure.schema import ACCOUNT_IDS, CHAINED_EVENTS_TABLES, IDEMPOTENCY
from infrastructure.settings import SettingsError
from infrastructure.store import shared_pool


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
        accounts = account_id_rows(kwargs)
        if accounts:
            c.executemany(
                f"INSERT INTO {ACCOUNT_IDS} (public_id, tenant, account_key) VALUES (?, ?, ?)",
                [(str(p), t, str(k)) for p, t, k in accounts],
            )
        rows = idempotency_rows(kwargs)
        if rows:
            c.executemany(
                f"INSERT INTO {IDEMPOTENCY} (scope, key, request_hash, answer, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
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

    def __init__(self, env: Any) -> None:
        shared = shared_pool(env if isinstance(env, Environment) else Environment(env=env))
        if shared is not None:
            # The store's datastore (infrastructure/store.py): skip the library's making of another.
            super(SQLiteFactory, self).__init__(env)
            self.datastore = shared
            return
        super().__init__(env)

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


STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def secure_sqlite_files(db_file: str) -> None:
    """The embedded store's directory is made 0700 (an existing one is left as it is), and the
    database file is created 0600 before SQLite opens it; SQLite gives its -wal and -shm files
    the database file's mode. Files left looser by an older version are tightened to 0600."""
    parent = os.path.dirname(db_file)
    if not os.path.isdir(parent):
        # One level only (`./var`): a directory whose parent is missing is a typo in the URL, not
        # something to create silently.
        if not os.path.isdir(os.path.dirname(parent)):
            raise SettingsError(
                f"the embedded store's directory {parent} does not exist, nor does {os.path.dirname(parent)}: "
                "create it, or set KEEL_DATABASE_URL to a file in an existing directory"
            )
        try:
            os.mkdir(parent, STORE_DIR_MODE)
        except OSError as e:
            raise SettingsError(f"cannot create the embedded store's directory {parent}: {e.strerror} "
                                "(set KEEL_DATABASE_URL=sqlite:///<a writable path>)") from None  # fmt: skip
        os.chmod(parent, STORE_DIR_MODE)  # whatever the umask
    try:
        os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STORE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError as e:
        raise SettingsError(f"cannot create the embedded store {db_file}: {e.strerror} "
                            f"(make {parent} writable, or set KEEL_DATABASE_URL=sqlite:///<a writable path>)") from None  # fmt: skip
    for path in [db_file] + [db_file + side for side in SQLITE_SIDE_FILES]:
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, STORE_FILE_MODE)
        except (FileNotFoundError, PermissionError):  # gone, or another user's: not ours to change
            pass
