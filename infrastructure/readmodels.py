"""The read-model database: the view store, the log reader and the replay machinery.

The view writer applies one batch of projected changes and moves the tracking row in ONE
database transaction, so a crash at any point leaves rows and position in step. Live tables
are `rm_*`; `keel replay` builds `rm_scratch_*` beside them (tables: infrastructure/schema.py).
Everything here runs over the SQL helper, the same on both databases; only the writer of a
batch is each database's own (infrastructure/postgres/views.py, infrastructure/sqlite/views.py),
handed in by the store. This module never stores holder personal data and never writes to the
event store.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from uuid import UUID

from application.projections import VIEWS, Changes
from application.seen_events import SeenEvent, seen_decoders
from infrastructure.schema import COLUMNS, KEYS, LEDGER_EVENTS, LIVE, SCRATCH, VIEW_TABLES, read_model_tables
from infrastructure.sql import Cursor, Sql

_ENCRYPTED = b"K1"  # how the mapper's key ring marks an encrypted state (infrastructure/mapper.py)

__all__ = [
    "COLUMNS", "KEYS", "LIVE", "SCRATCH", "VIEW_TABLES", "LogReader", "SqlViewStore", "Tables", "ViewDatabase", "ViewTx",
    "compare", "create_scratch", "drop_scratch", "replace_live", "view_tx",
]  # fmt: skip


class ViewTx:
    """One open view transaction (application.view_follower.ViewTransaction): the database's own
    writer subclasses it. `cur` is the SQL helper's cursor of the transaction."""

    # Whether the follower reads the log inside the view transaction (see ViewFollower.step).
    reads_in_transaction: bool = False

    def __init__(self, cur: Any, t: Tables, one_statement_rows_max: int | None = None) -> None:
        self.cur = cur
        self.t = t

    def advance(self, expected: int, position: int) -> None:
        raise NotImplementedError

    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]:
        raise NotImplementedError

    def write(self, changes: Changes) -> None:
        raise NotImplementedError


class ViewDatabase:
    """The read models' database: the store's SQL helper and the writer of this database's
    view transactions. Statements take `%s` placeholders on both databases."""

    def __init__(self, sql: Sql, writer: type[ViewTx]) -> None:
        self._sql = sql
        self.writer = writer
        self.position_column = sql.position_column
        self.event_id = sql.event_id
        self.event_id_text = sql.event_id_text

    def table(self, name: str) -> str:
        return self._sql.table(name)

    def fetchall(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._sql.fetchall(statement, params)

    def fetchone(self, statement: str, params: Any = ()) -> tuple[Any, ...] | None:
        return self._sql.fetchone(statement, params)

    def transaction(self, *, commit: bool) -> AbstractContextManager[Cursor]:
        return self._sql.transaction(commit=commit)

    def snapshot(self) -> AbstractContextManager[Cursor]:
        """Reads that all see one snapshot (`keel replay --check` compares live and scratch)."""
        return self._sql.snapshot()

    def create_tables(self, prefix: str, *, unlogged: bool = False) -> list[str]:
        return read_model_tables(self._sql, prefix, unlogged=unlogged)


class LogReader:
    """Reads the ledger's log for the views: positions in order, each event decoded straight
    into the Struct of the fields the views need (see application.seen_events.SEEN_EVENTS).

    Selects only the four columns it needs, as tuples. Stored states are opened (decrypted,
    decompressed) by `opener`: the Ledger's mapper (`open_state`), or a bare key ring.
    """

    def __init__(self, db: ViewDatabase, recorder: Any = None, opener: Any = None) -> None:
        self.db = db
        table = db.table(recorder.events_table_name if recorder is not None else LEDGER_EVENTS)
        self._decoders = seen_decoders()
        self._opener = opener
        self._id_text = db.event_id_text
        pos = db.position_column
        self._sql = (
            f"SELECT {pos}, originator_id, topic, state FROM {table}"
            f" WHERE {pos} > %s AND {pos} <= %s ORDER BY {pos} LIMIT %s"
        )
        self._last = f"SELECT {pos} FROM {table} WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1"

    def last_position(self, originator_id: UUID) -> int:
        """Log position of the aggregate's latest event (0 if it has none): every write that
        touched it is applied once the views reach it."""
        row = self.db.fetchone(self._last, (self.db.event_id(originator_id),))
        return int(row[0]) if row else 0

    def _open_state(self) -> Callable[[bytes], bytes] | None:
        """What turns a stored state into plaintext JSON, None when states are stored plain.
        Asked per batch: the composition root configures the mapper after building it."""
        o = self._opener
        if o is None:
            return None
        if hasattr(o, "open_state"):  # the mapper: its key ring, the library's cipher, compression
            configured = any(getattr(o, a, None) is not None for a in ("keyring", "cipher", "compressor"))
            return o.open_state if configured else None
        return lambda state: o.decrypt(bytes(state)) if state[:2] == _ENCRYPTED else state  # a bare key ring

    def __call__(self, after: int, limit: int, stop: int | None = None, tx: Any = None) -> list[tuple[int, SeenEvent | None]]:
        params = (after, stop if stop is not None else 2**63 - 1, limit)
        if tx is not None:
            tx.cur.execute(self._sql, params, prepare=True)
            rows = tx.cur.fetchall()
        else:
            rows = self.db.fetchall(self._sql, params)
        out: list[tuple[int, SeenEvent | None]] = []
        open_state, id_text = self._open_state(), self._id_text
        for position, originator_id, topic, state in rows:
            decoder = self._decoders.get(topic)
            if decoder is None:
                out.append((position, None))
                continue
            if open_state is not None:
                state = open_state(state)
            elif state[:2] == _ENCRYPTED:
                raise RuntimeError("stored event is encrypted but no KEEL_DATA_KEY is configured")
            event = decoder.decode(state)
            event.originator_id = id_text(originator_id)
            out.append((position, event))
        return out


class Tables:
    """Qualified names of one set of view tables (live or scratch)."""

    def __init__(self, db: Any, prefix: str) -> None:
        self.prefix = prefix
        for table in (*VIEW_TABLES, "tracking"):
            setattr(self, table, db.table(prefix + table))

    def name(self, table: str) -> str:
        return getattr(self, table)


class SqlViewStore:
    """The `ViewStore` port of application/view_follower.py over one set of tables."""

    def __init__(self, db: ViewDatabase, prefix: str = LIVE, *, one_statement_rows_max: int | None = None) -> None:
        self.db = db
        self.t = Tables(db, prefix)
        self.one_statement_rows_max = one_statement_rows_max
        self.reads_in_transaction = db.writer.reads_in_transaction

    def position(self) -> int:
        row = self.db.fetchone(f"SELECT position FROM {self.t.tracking} WHERE name = %s", (VIEWS,))
        if row is None:
            raise RuntimeError("read-model tracking row is missing: run `keel migrate`")
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[ViewTx]:
        with self.db.transaction(commit=True) as cur:
            yield self.db.writer(cur, self.t, self.one_statement_rows_max)


def cols(table: str) -> str:
    return ", ".join(COLUMNS[table])


def transfer_update(transfer_id: str, u: dict[str, Any]) -> tuple[Any, ...]:
    """(transfer id, status, posted amount, reversal key, reversal public id): None = unchanged."""
    return (
        transfer_id, u.get("status"), u.get("posted_amount_minor"), u.get("reversed_by_id"), u.get("reversed_by_public_id"),
    )  # fmt: skip


# ---- replay: rebuild into scratch tables, compare, replace --------------------------------

DIFF_SHOWN_MAX = 50


def create_scratch(db: ViewDatabase) -> SqlViewStore:
    """Fresh, empty scratch tables (dropping any left by an interrupted replay)."""
    with db.transaction(commit=True) as cur:
        for table in (*VIEW_TABLES, "tracking"):
            cur.execute(f"DROP TABLE IF EXISTS {db.table(SCRATCH + table)}")
        # Scratch tables are rebuilt from the log whenever needed: skipping the WAL (UNLOGGED)
        # roughly halves the database's work during a replay.
        for statement in db.create_tables(SCRATCH, unlogged=True):
            cur.execute(statement)
    return SqlViewStore(db, SCRATCH)


def drop_scratch(db: ViewDatabase) -> None:
    with db.transaction(commit=True) as cur:
        for table in (*VIEW_TABLES, "tracking"):
            cur.execute(f"DROP TABLE IF EXISTS {db.table(SCRATCH + table)}")


def compare(db: ViewDatabase, live: Tables, scratch: Tables, cur: Any) -> list[str]:
    """Row-by-row differences between two sets of view tables, read through `cur` (one snapshot)."""
    diffs: list[str] = []
    for table in VIEW_TABLES:
        columns = cols(table)
        order = ", ".join(KEYS[table])
        for label, a, b in (("live only", live, scratch), ("replay only", scratch, live)):
            cur.execute(
                f"SELECT COUNT(*) FROM (SELECT {columns} FROM {a.name(table)} EXCEPT SELECT {columns} FROM {b.name(table)}) AS d"
            )
            count = cur.fetchone()[0]
            if not count:
                continue
            diffs.append(f"{table}: {count} row(s) {label}")
            cur.execute(
                f"SELECT * FROM (SELECT {columns} FROM {a.name(table)} EXCEPT SELECT {columns} FROM {b.name(table)}) AS d"
                f" ORDER BY {order} LIMIT {DIFF_SHOWN_MAX}"
            )
            for row in cur.fetchall():
                diffs.append(f"  {label} {table}: " + ", ".join(f"{c}={v!r}" for c, v in zip(COLUMNS[table], row, strict=True)))
    return diffs


def replace_live(db: ViewDatabase, scratch_position: int, catch_up: Callable[[Any, int], int]) -> int:
    """Makes the live views equal to the scratch ones in one transaction; returns the new position.

    The live tracking row is locked first (an UPDATE: a row lock on PostgreSQL, the write lock
    on SQLite, taken before anything is read), so a running worker waits, then finds its
    position moved and resumes from the new one. `catch_up(cur, live_position)` brings the
    scratch tables up to at least the live position inside this same transaction. Only rows
    that differ are deleted and inserted (set difference, NULLs compare equal), so replacing
    views that were right costs two comparisons instead of rewriting every row; readers see the
    old rows until the commit.
    """
    live, scratch = Tables(db, LIVE), Tables(db, SCRATCH)
    with db.transaction(commit=True) as cur:
        cur.execute(f"UPDATE {live.tracking} SET position = position WHERE name = %s", (VIEWS,))
        cur.execute(f"SELECT position FROM {live.tracking} WHERE name = %s", (VIEWS,))
        live_position = int(cur.fetchone()[0])
        position = max(scratch_position, catch_up(cur, live_position))
        for table in VIEW_TABLES:
            columns, keys = cols(table), ", ".join(KEYS[table])
            cur.execute(
                f"DELETE FROM {live.name(table)} WHERE ({keys}) IN (SELECT {keys} FROM"
                f" (SELECT {columns} FROM {live.name(table)} EXCEPT SELECT {columns} FROM {scratch.name(table)}) AS d)"
            )
            cur.execute(
                f"INSERT INTO {live.name(table)} ({columns})"
                f" SELECT {columns} FROM {scratch.name(table)} EXCEPT SELECT {columns} FROM {live.name(table)}"
            )
        cur.execute(f"UPDATE {live.tracking} SET position = %s WHERE name = %s", (position, VIEWS))
    return position


def view_tx(db: ViewDatabase, cur: Any, prefix: str) -> ViewTx:
    """A view transaction on an already open cursor (for work inside a larger transaction)."""
    return db.writer(cur, Tables(db, prefix))
