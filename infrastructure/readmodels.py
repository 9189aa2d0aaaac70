"""Read-model tables, the view writer and the replay machinery, for PostgreSQL and SQLite.

The view writer applies one batch of projected changes and moves the tracking row in ONE
database transaction, so a crash at any point leaves rows and position in step. Live tables
are `rm_*`; `keel replay` builds `rm_scratch_*` beside them. On PostgreSQL they live in the
configured schema, on SQLite in the same file as the events. This module never stores holder
personal data and never writes to the event store.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row

import msgspec

from application.projections import (
    ACCOUNT_COLUMNS,
    ENTRY_COLUMNS,
    FLOW_COLUMNS,
    SEEN_EVENTS,
    TRANSFER_COLUMNS,
    VIEWS,
    VOLUME_COLUMNS,
    Changes,
    PositionMoved,
    SeenEvent,
)
from infrastructure.mapper import _ENCRYPTED_MAGIC, KeyRing
from infrastructure.settings import Settings

log = logging.getLogger(__name__)

LIVE = "rm_"
SCRATCH = "rm_scratch_"
VIEW_TABLES = ("accounts", "entries", "transfers", "volumes", "flows")
# Primary keys (also the order in which `keel replay --check` lists differences).
KEYS = {
    "accounts": ("account_id",),
    "entries": ("account_id", "position"),
    "transfers": ("transfer_id",),
    "volumes": ("period", "bucket_s", "currency"),
    "flows": ("account_id", "day_s"),
    "tracking": ("name",),
}
COLUMNS = {
    "accounts": ACCOUNT_COLUMNS,
    "entries": ENTRY_COLUMNS,
    "transfers": TRANSFER_COLUMNS,
    "volumes": VOLUME_COLUMNS,
    "flows": FLOW_COLUMNS,
    "tracking": ("name", "position"),
}

_TEXT, _INT = "text", "bigint"
_TYPES = {
    "accounts": (_TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _INT, _INT, _INT, _INT, _INT, _TEXT),
    "entries": (_TEXT, _INT, _TEXT, _TEXT, _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT),
    "transfers": (
        _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _INT,
        _TEXT, _TEXT, _TEXT, _TEXT, _TEXT,
    ),  # fmt: skip
    "volumes": (_TEXT, _INT, _TEXT, _INT, _INT),
    "flows": (_TEXT, _INT, _INT, _INT, _INT, _INT),
    "tracking": (_TEXT, _INT),
}
# Columns that may be NULL; every other column is NOT NULL.
_NULLABLE = {"reference", "reverses_id", "reversed_by_id", "reverses_public_id", "reversed_by_public_id"}
_UPDATED_IN_PLACE = {"accounts", "flows", "volumes", "tracking"}
UPDATED_FILLFACTOR = 70
_INDEXES = {
    # (public_id, tenant): the analysts' account filter names an account by its public id.
    "accounts": [("currency", "account_id"), ("tenant", "account_id"), ("public_id", "tenant")],
    "entries": [("transfer_id",)],
    "transfers": [("position",)],
    "flows": [("day_s",)],
}


def _ddl(prefix: str, qualify: Callable[[str], str], pg: bool, *, unlogged: bool = False) -> list[str]:
    statements = []
    for table, columns in COLUMNS.items():
        cols = []
        for name, typ in zip(columns, _TYPES[table], strict=True):
            sql_type = typ if pg else ("INTEGER" if typ == _INT else "TEXT")
            cols.append(f"{name} {sql_type}{'' if name in _NULLABLE else ' NOT NULL'}")
        cols.append(f"PRIMARY KEY ({', '.join(KEYS[table])})")
        kind = "UNLOGGED TABLE" if unlogged and pg else "TABLE"
        # Rows updated in place on every batch leave room on their page, so that PostgreSQL
        # can update them without touching the indexes (HOT updates).
        storage = f" WITH (fillfactor = {UPDATED_FILLFACTOR})" if pg and table in _UPDATED_IN_PLACE else ""
        statements.append(f"CREATE {kind} IF NOT EXISTS {qualify(prefix + table)} ({', '.join(cols)}){storage}")
        for index_cols in _INDEXES.get(table, []):
            index = f"{prefix}{table}_{'_'.join(index_cols)}_idx"
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {qualify(prefix + table)} ({', '.join(index_cols)})")
    statements.append(
        f"INSERT INTO {qualify(prefix + 'tracking')} (name, position) VALUES ('{VIEWS}', 0) ON CONFLICT DO NOTHING"
    )
    return statements


def _qualifier(settings: Settings) -> Callable[[str], str]:
    if settings.is_postgres:
        schema = settings.database_schema
        return lambda table: f'"{schema}".{table}'
    return lambda table: table


def readmodel_ddl(settings: Settings, prefix: str = LIVE) -> list[str]:
    """The read-model tables (run by `keel migrate` through `extra_ddl`)."""
    return _ddl(prefix, _qualifier(settings), settings.is_postgres)


class Database:
    """Transactions over the ledger's own connection pool, with tuple rows on both databases."""

    def __init__(self, settings: Settings, datastore: Any) -> None:
        self.settings = settings
        self.is_pg = settings.is_postgres
        self.datastore = datastore
        self.qualify = _qualifier(settings)

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[Any]:
        if self.is_pg:
            with self.datastore.get_connection() as conn:
                with conn.transaction(force_rollback=not commit), conn.cursor(row_factory=tuple_row) as cur:
                    yield cur
        else:
            with self.datastore.transaction(commit=commit) as cur:
                yield cur.sqlite_cursor  # the raw sqlite3 cursor (rowcount, executemany)

    def sql(self, statement: str) -> str:
        return statement if self.is_pg else statement.replace("%s", "?")

    def fetchall(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if self.is_pg:
            # One statement on an autocommit connection needs no BEGIN/ROLLBACK: one round trip
            # instead of three (history reads make several of these each).
            with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(statement, params, prepare=True)
                return cur.fetchall()
        with self.transaction(commit=False) as cur:
            cur.execute(self.sql(statement), params)
            return [tuple(r) for r in cur.fetchall()]

    def fetchone(self, statement: str, params: Any = ()) -> tuple[Any, ...] | None:
        rows = self.fetchall(statement, params)
        return rows[0] if rows else None


class LogReader:
    """Reads the ledger's log for the views: positions in order, each event decoded straight
    into the Struct of the fields the views need (see application.projections.SEEN_EVENTS).

    On PostgreSQL it selects only the four columns it needs with tuple rows; on SQLite it uses
    the recorder's own select. Encrypted states are opened with the mapper's key ring.
    """

    def __init__(self, db: Database, recorder: Any, keyring: KeyRing | None) -> None:
        self.db = db
        self.recorder = recorder
        self.keyring = keyring
        self._decoders = {topic: msgspec.json.Decoder(cls) for topic, cls in SEEN_EVENTS.items()}
        if db.is_pg:
            table = db.qualify(f'"{recorder.events_table_name}"')
            self._sql = (
                f"SELECT notification_id, originator_id, topic, state FROM {table}"
                " WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
            )
        else:
            self._sql = (
                f"SELECT rowid, originator_id, topic, state FROM {recorder.events_table_name}"
                " WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?"
            )

    def last_position(self, originator_id: UUID) -> int:
        """Log position of the aggregate's latest event (0 if it has none): every write that
        touched it is applied once the views reach it."""
        table = self.recorder.events_table_name
        if self.db.is_pg:
            qualified = self.db.qualify(f'"{table}"')
            sql = f"SELECT notification_id FROM {qualified} WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1"
            row = self.db.fetchone(sql, (originator_id,))
        else:
            row = self.db.fetchone(
                f"SELECT rowid FROM {table} WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1",
                (originator_id.hex,),
            )
        return int(row[0]) if row else 0

    def _rows(self, after: int, limit: int, stop: int | None, tx: Any) -> list[tuple[int, Any, str, bytes]]:
        if self.db.is_pg:
            params = (after, stop if stop is not None else 2**63 - 1, limit)
            if tx is not None:
                tx.cur.execute(self._sql, params, prepare=True)
                return tx.cur.fetchall()
            with self.db.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(self._sql, params, prepare=True)
                return cur.fetchall()
        if tx is not None:
            tx.cur.execute(self._sql, (after, stop if stop is not None else 2**63 - 1, limit))
            convert = self.recorder.convert_originator_id  # stored as hex text
            return [(r[0], convert(r[1]), r[2], r[3]) for r in tx.cur.fetchall()]
        notes = self.recorder.select_notifications(after, limit, stop, inclusive_of_start=False)
        return [(n.id, n.originator_id, n.topic, n.state) for n in notes]

    def __call__(self, after: int, limit: int, stop: int | None = None, tx: Any = None) -> list[tuple[int, SeenEvent | None]]:
        out: list[tuple[int, SeenEvent | None]] = []
        for position, originator_id, topic, state in self._rows(after, limit, stop, tx):
            decoder = self._decoders.get(topic)
            if decoder is None:
                out.append((position, None))
                continue
            if state[:2] == _ENCRYPTED_MAGIC:
                if self.keyring is None:
                    raise RuntimeError("stored event is encrypted but no KEEL_DATA_KEY is configured")
                state = self.keyring.decrypt(bytes(state))
            event = decoder.decode(state)
            event.originator_id = str(originator_id)
            out.append((position, event))
        return out


class Tables:
    """Qualified names of one set of view tables (live or scratch)."""

    def __init__(self, db: Database, prefix: str) -> None:
        self.prefix = prefix
        for table in (*VIEW_TABLES, "tracking"):
            setattr(self, table, db.qualify(prefix + table))

    def name(self, table: str) -> str:
        return getattr(self, table)


class SqlViewStore:
    """The `ViewStore` port of application/projections.py over one set of tables."""

    def __init__(self, db: Database, prefix: str = LIVE, *, one_statement_rows_max: int | None = None) -> None:
        self.db = db
        self.t = Tables(db, prefix)
        self.one_statement_rows_max = ONE_STATEMENT_ROWS_MAX if one_statement_rows_max is None else one_statement_rows_max
        # PostgreSQL: read the log on the view transaction's own connection (fewer round trips).
        self.reads_in_transaction = db.is_pg

    def position(self) -> int:
        row = self.db.fetchone(f"SELECT position FROM {self.t.tracking} WHERE name = %s", (VIEWS,))
        if row is None:
            raise RuntimeError("read-model tracking row is missing: run `keel migrate`")
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[_ViewTx]:
        with self.db.transaction(commit=True) as cur:
            if self.db.is_pg:
                yield _PgViewTx(cur, self.t, self.one_statement_rows_max)
            else:
                yield _SqliteViewTx(cur, self.t)


class _ViewTx:
    def __init__(self, cur: Any, t: Tables) -> None:
        self.cur = cur
        self.t = t


def _cols(table: str) -> str:
    return ", ".join(COLUMNS[table])


def _transfer_update(transfer_id: str, u: dict[str, Any]) -> tuple[Any, ...]:
    """(transfer id, status, posted amount, reversal key, reversal public id): None = unchanged."""
    return (
        transfer_id, u.get("status"), u.get("posted_amount_minor"), u.get("reversed_by_id"), u.get("reversed_by_public_id"),
    )  # fmt: skip


# Session-local staging tables for set-based updates (emptied at every commit).
_PG_STAGING = {
    "keel_rm_deltas": "(id text, dp bigint, dpd bigint, dpc bigint)",
    "keel_rm_status": "(id text, s text)",
    "keel_rm_tupd": "(id text, s text, p bigint, r text, rp text)",
    "keel_rm_volumes": "(period text, bucket_s bigint, currency text, amount_minor bigint, count bigint)",
    "keel_rm_flows": "(account_id text, day_s bigint, inflow_minor bigint, outflow_minor bigint,"
    " inflow_count bigint, outflow_count bigint)",
}


# Up to this many rows a batch goes in ONE statement (live following: a round trip costs more
# than the work); larger batches (replays) go by COPY.
ONE_STATEMENT_ROWS_MAX = 8000
# Views are derived data: a crash may lose the last few view commits, but never rows without
# their tracking position (one atomic commit, applied in WAL order), and the worker then simply
# re-applies them. Not waiting for the WAL flush keeps the lag low.
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"


class _PgViewTx(_ViewTx):
    """Small batches: one statement of data-modifying CTEs over `unnest` arrays, guarded by the
    tracking update. Large batches: rows by COPY (formatted in C), one statement per table."""

    def __init__(self, cur: Any, t: Tables, one_statement_rows_max: int | None = None) -> None:
        super().__init__(cur, t)
        # -1: always by COPY (tests use it to exercise both ways on small histories).
        self.one_statement_rows_max = ONE_STATEMENT_ROWS_MAX if one_statement_rows_max is None else one_statement_rows_max
        self._advance: tuple[int, int] | None = None

    def advance(self, expected: int, position: int) -> None:
        """Takes effect with `write()`, as its first step (a second runner stops there)."""
        assert position > expected, f"tracking must move forward: {expected} -> {position}"
        self._advance = (expected, position)

    def _advance_now(self) -> None:
        assert self._advance is not None, "advance() must come before write()"
        expected, position = self._advance
        self._advance = None
        self.cur.execute(
            f"UPDATE {self.t.tracking} SET position = %s WHERE name = %s AND position = %s", (position, VIEWS, expected)
        )
        if self.cur.rowcount != 1:
            raise PositionMoved(f"expected tracking at {expected}")

    def _one_statement(self, ch: Changes) -> None:
        assert self._advance is not None, "advance() must come before write()"
        expected, position = self._advance
        self._advance = None
        t = self.t
        ctes = [
            "cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v)",
            f"adv AS (UPDATE {t.tracking} SET position = %s WHERE name = %s AND position = %s RETURNING 1)",
        ]
        params: list[Any] = [position, VIEWS, expected]
        guard = "EXISTS (SELECT 1 FROM adv)"

        def insert(name: str, table: str, rows: list[Any], conflict: str = "") -> None:
            if rows:
                arrays = ", ".join(f"%s::{ty}[]" for ty in _TYPES[table])
                ctes.append(
                    f"{name} AS (INSERT INTO {t.name(table)} ({_cols(table)}) SELECT * FROM unnest({arrays}) WHERE {guard}"
                    f" {conflict})"
                )
                params.extend(list(c) for c in zip(*rows, strict=True))

        insert("ia", "accounts", list(ch.new_accounts.values()))
        # Deltas and status in one UPDATE: a statement may change each row only once.
        account_ids = list(ch.account_deltas.keys() | ch.account_status.keys())
        if account_ids:
            zero = (0, 0, 0)
            rows = [(k, *ch.account_deltas.get(k, zero), ch.account_status.get(k)) for k in account_ids]
            ctes.append(
                f"ua AS (UPDATE {t.accounts} AS a SET posted_minor = a.posted_minor + v.dp,"
                " pending_debits_minor = a.pending_debits_minor + v.dpd,"
                " pending_credits_minor = a.pending_credits_minor + v.dpc, status = COALESCE(v.s, a.status)"
                " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS v(id, dp, dpd, dpc, s)"
                f" WHERE a.account_id = v.id AND {guard} RETURNING 1)"
            )
            params.extend(list(c) for c in zip(*rows, strict=True))
        insert("it", "transfers", list(ch.new_transfers.values()))
        insert("ie", "entries", ch.entry_rows())
        if ch.transfer_updates:
            rows = [_transfer_update(k, u) for k, u in ch.transfer_updates.items()]
            ctes.append(
                f"ut AS (UPDATE {t.transfers} AS x SET status = COALESCE(v.s, x.status),"
                " posted_amount_minor = COALESCE(v.p, x.posted_amount_minor), reversed_by_id = COALESCE(v.r, x.reversed_by_id),"
                " reversed_by_public_id = COALESCE(v.rp, x.reversed_by_public_id)"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[]) AS v(id, s, p, r, rp)"
                f" WHERE x.transfer_id = v.id AND {guard} RETURNING 1)"
            )
            params.extend(list(c) for c in zip(*rows, strict=True))
            ctes.append(
                f"ue AS (UPDATE {t.entries} AS e SET status = COALESCE(v.s, e.status), amount_minor = COALESCE(v.p, e.amount_minor)"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS v(id, s, p)"
                f" WHERE e.transfer_id = v.id AND (v.s IS NOT NULL OR v.p IS NOT NULL) AND {guard})"
            )
            params.extend(list(c) for c in zip(*[r[:3] for r in rows], strict=True))
        insert(
            "iv", "volumes", [[*k, *v] for k, v in ch.volumes.items()],
            f"ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = {t.volumes}.amount_minor"
            f" + excluded.amount_minor, count = {t.volumes}.count + excluded.count",
        )  # fmt: skip
        insert(
            "if", "flows", [[*k, *v] for k, v in ch.flows.items()],
            f"ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = {t.flows}.inflow_minor + excluded.inflow_minor,"
            f" outflow_minor = {t.flows}.outflow_minor + excluded.outflow_minor,"
            f" inflow_count = {t.flows}.inflow_count + excluded.inflow_count,"
            f" outflow_count = {t.flows}.outflow_count + excluded.outflow_count",
        )  # fmt: skip
        counts = ", ".join(
            f"(SELECT count(*) FROM {name})" if present else "0"
            for name, present in (("adv", True), ("ua", bool(account_ids)), ("ut", bool(ch.transfer_updates)), ("cfg", True))
        )
        self.cur.execute("WITH " + ", ".join(ctes) + " SELECT " + counts, params)
        advanced, accounts, transfers, _ = self.cur.fetchone()
        if advanced != 1:
            raise PositionMoved(f"expected tracking at {expected}")
        assert accounts == len(account_ids), "balance change for an account the view never saw opened"
        assert transfers == len(ch.transfer_updates), "change to a transfer the view never saw initiated"

    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]:
        self.cur.execute(
            f"SELECT transfer_id, currency FROM {self.t.transfers} WHERE transfer_id = ANY(%s::text[])", (list(transfer_ids),)
        )
        return dict(self.cur.fetchall())

    def _copy(self, table: str, columns: str, rows: Any) -> None:
        with self.cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _stage(self, name: str, rows: Any) -> None:
        self.cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} {_PG_STAGING[name]} ON COMMIT DELETE ROWS")
        columns = ", ".join(c.split()[0] for c in _PG_STAGING[name].strip("()").split(","))
        self._copy(name, columns, rows)

    def write(self, ch: Changes) -> None:
        rows = (
            len(ch.new_accounts) + len(ch.account_deltas) + len(ch.account_status) + 3 * len(ch.new_transfers)
            + 3 * len(ch.transfer_updates) + len(ch.volumes) + len(ch.flows)
        )  # fmt: skip
        if rows <= self.one_statement_rows_max:
            self._one_statement(ch)
            return
        self.cur.execute(_ASYNC_COMMIT)
        self._advance_now()
        t = self.t
        if ch.new_accounts:
            self._copy(t.accounts, _cols("accounts"), ch.new_accounts.values())
        if ch.account_deltas:
            self._stage("keel_rm_deltas", ((k, *d) for k, d in ch.account_deltas.items()))
            self.cur.execute(
                f"UPDATE {t.accounts} AS a SET posted_minor = a.posted_minor + v.dp,"
                " pending_debits_minor = a.pending_debits_minor + v.dpd,"
                " pending_credits_minor = a.pending_credits_minor + v.dpc"
                " FROM keel_rm_deltas AS v WHERE a.account_id = v.id"
            )
            assert self.cur.rowcount == len(ch.account_deltas), "balance change for an account the view never saw opened"
        if ch.account_status:
            self._stage("keel_rm_status", ch.account_status.items())
            self.cur.execute(f"UPDATE {t.accounts} AS a SET status = v.s FROM keel_rm_status AS v WHERE a.account_id = v.id")
        if ch.new_transfers:
            self._copy(t.transfers, _cols("transfers"), ch.new_transfers.values())
        if ch.new_entries:
            self._copy(t.entries, _cols("entries"), ch.entry_rows())
        if ch.transfer_updates:
            self._stage("keel_rm_tupd", (_transfer_update(k, u) for k, u in ch.transfer_updates.items()))
            self.cur.execute(
                f"UPDATE {t.transfers} AS x SET status = COALESCE(v.s, x.status),"
                " posted_amount_minor = COALESCE(v.p, x.posted_amount_minor),"
                " reversed_by_id = COALESCE(v.r, x.reversed_by_id),"
                " reversed_by_public_id = COALESCE(v.rp, x.reversed_by_public_id)"
                " FROM keel_rm_tupd AS v WHERE x.transfer_id = v.id"
            )
            assert self.cur.rowcount == len(ch.transfer_updates), "change to a transfer the view never saw initiated"
            self.cur.execute(
                f"UPDATE {t.entries} AS e SET status = COALESCE(v.s, e.status), amount_minor = COALESCE(v.p, e.amount_minor)"
                " FROM keel_rm_tupd AS v WHERE e.transfer_id = v.id AND (v.s IS NOT NULL OR v.p IS NOT NULL)"
            )
        if ch.volumes:
            self._stage("keel_rm_volumes", ((*k, *v) for k, v in ch.volumes.items()))
            self.cur.execute(
                f"INSERT INTO {t.volumes} ({_cols('volumes')}) SELECT * FROM keel_rm_volumes"
                f" ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = {t.volumes}.amount_minor"
                f" + excluded.amount_minor, count = {t.volumes}.count + excluded.count"
            )
        if ch.flows:
            self._stage("keel_rm_flows", ((*k, *v) for k, v in ch.flows.items()))
            self.cur.execute(
                f"INSERT INTO {t.flows} ({_cols('flows')}) SELECT * FROM keel_rm_flows"
                f" ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = {t.flows}.inflow_minor + excluded.inflow_minor,"
                f" outflow_minor = {t.flows}.outflow_minor + excluded.outflow_minor,"
                f" inflow_count = {t.flows}.inflow_count + excluded.inflow_count,"
                f" outflow_count = {t.flows}.outflow_count + excluded.outflow_count"
            )


class _SqliteViewTx(_ViewTx):
    """Row statements through `executemany` (in-process SQLite makes them cheap)."""

    def advance(self, expected: int, position: int) -> None:
        assert position > expected, f"tracking must move forward: {expected} -> {position}"
        self.cur.execute(f"UPDATE {self.t.tracking} SET position = ? WHERE name = ? AND position = ?", (position, VIEWS, expected))
        if self.cur.rowcount != 1:
            raise PositionMoved(f"expected tracking at {expected}")

    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(transfer_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            self.cur.execute(
                f"SELECT transfer_id, currency FROM {self.t.transfers} WHERE transfer_id IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update((r[0], r[1]) for r in self.cur.fetchall())
        return out

    def _insert(self, table: str, rows: list[list[Any]], conflict: str = "") -> None:
        if rows:
            marks = ", ".join("?" * len(COLUMNS[table]))
            self.cur.executemany(f"INSERT INTO {self.t.name(table)} ({_cols(table)}) VALUES ({marks}) {conflict}", rows)

    def write(self, ch: Changes) -> None:
        t = self.t
        self._insert("accounts", list(ch.new_accounts.values()))
        if ch.account_deltas:
            self.cur.executemany(
                f"UPDATE {t.accounts} SET posted_minor = posted_minor + ?, pending_debits_minor = pending_debits_minor + ?,"
                " pending_credits_minor = pending_credits_minor + ? WHERE account_id = ?",
                [(*d, k) for k, d in ch.account_deltas.items()],
            )
            assert self.cur.rowcount == len(ch.account_deltas), "balance change for an account the view never saw opened"
        if ch.account_status:
            self.cur.executemany(
                f"UPDATE {t.accounts} SET status = ? WHERE account_id = ?", [(s, k) for k, s in ch.account_status.items()]
            )
        self._insert("transfers", list(ch.new_transfers.values()))
        self._insert("entries", ch.entry_rows())
        if ch.transfer_updates:
            rows = [(*_transfer_update(k, u)[1:], k) for k, u in ch.transfer_updates.items()]
            self.cur.executemany(
                f"UPDATE {t.transfers} SET status = COALESCE(?, status), posted_amount_minor = COALESCE(?, posted_amount_minor),"
                " reversed_by_id = COALESCE(?, reversed_by_id), reversed_by_public_id = COALESCE(?, reversed_by_public_id)"
                " WHERE transfer_id = ?",
                rows,
            )
            assert self.cur.rowcount == len(rows), "change to a transfer the view never saw initiated"
            self.cur.executemany(
                f"UPDATE {t.entries} SET status = COALESCE(?, status), amount_minor = COALESCE(?, amount_minor)"
                " WHERE transfer_id = ?",
                [(s, p, k) for s, p, _, _, k in rows if s is not None or p is not None],
            )
        self._insert(
            "volumes",
            [[*k, *v] for k, v in ch.volumes.items()],
            "ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = amount_minor + excluded.amount_minor,"
            " count = count + excluded.count",
        )
        self._insert(
            "flows",
            [[*k, *v] for k, v in ch.flows.items()],
            "ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = inflow_minor + excluded.inflow_minor,"
            " outflow_minor = outflow_minor + excluded.outflow_minor, inflow_count = inflow_count + excluded.inflow_count,"
            " outflow_count = outflow_count + excluded.outflow_count",
        )


# ---- replay: rebuild into scratch tables, compare, replace --------------------------------

DIFF_SHOWN_MAX = 50


def create_scratch(db: Database) -> SqlViewStore:
    """Fresh, empty scratch tables (dropping any left by an interrupted replay)."""
    with db.transaction(commit=True) as cur:
        for table in (*VIEW_TABLES, "tracking"):
            cur.execute(f"DROP TABLE IF EXISTS {db.qualify(SCRATCH + table)}")
        # Scratch tables are rebuilt from the log whenever needed: skipping the WAL (UNLOGGED)
        # roughly halves the database's work during a replay.
        for statement in _ddl(SCRATCH, db.qualify, db.is_pg, unlogged=True):
            cur.execute(statement)
    return SqlViewStore(db, SCRATCH)


def drop_scratch(db: Database) -> None:
    with db.transaction(commit=True) as cur:
        for table in (*VIEW_TABLES, "tracking"):
            cur.execute(f"DROP TABLE IF EXISTS {db.qualify(SCRATCH + table)}")


def compare(db: Database, live: Tables, scratch: Tables, cur: Any) -> list[str]:
    """Row-by-row differences between two sets of view tables, read through `cur` (one snapshot)."""
    diffs: list[str] = []
    for table in VIEW_TABLES:
        cols = _cols(table)
        order = ", ".join(KEYS[table])
        for label, a, b in (("live only", live, scratch), ("replay only", scratch, live)):
            cur.execute(
                f"SELECT COUNT(*) FROM (SELECT {cols} FROM {a.name(table)} EXCEPT SELECT {cols} FROM {b.name(table)}) AS d"
            )
            count = cur.fetchone()[0]
            if not count:
                continue
            diffs.append(f"{table}: {count} row(s) {label}")
            cur.execute(
                f"SELECT * FROM (SELECT {cols} FROM {a.name(table)} EXCEPT SELECT {cols} FROM {b.name(table)}) AS d"
                f" ORDER BY {order} LIMIT {DIFF_SHOWN_MAX}"
            )
            for row in cur.fetchall():
                diffs.append(f"  {label} {table}: " + ", ".join(f"{c}={v!r}" for c, v in zip(COLUMNS[table], row, strict=True)))
    return diffs


def replace_live(db: Database, scratch_position: int, catch_up: Callable[[Any, int], int]) -> int:
    """Makes the live views equal to the scratch ones in one transaction; returns the new position.

    The live tracking row is locked first, so a running worker waits, then finds its position
    moved and resumes from the new one. `catch_up(cur, live_position)` brings the scratch
    tables up to at least the live position inside this same transaction. Only rows that
    differ are deleted and inserted (set difference, NULLs compare equal), so replacing views
    that were right costs two comparisons instead of rewriting every row; readers see the old
    rows until the commit.
    """
    live, scratch = Tables(db, LIVE), Tables(db, SCRATCH)
    with db.transaction(commit=True) as cur:
        if db.is_pg:
            cur.execute(f"SELECT position FROM {live.tracking} WHERE name = %s FOR UPDATE", (VIEWS,))
        else:
            # Take SQLite's write lock before reading, so no other writer commits in between.
            cur.execute(f"UPDATE {live.tracking} SET position = position WHERE name = ?", (VIEWS,))
            cur.execute(f"SELECT position FROM {live.tracking} WHERE name = ?", (VIEWS,))
        live_position = int(cur.fetchone()[0])
        position = max(scratch_position, catch_up(cur, live_position))
        for table in VIEW_TABLES:
            cols, keys = _cols(table), ", ".join(KEYS[table])
            cur.execute(
                f"DELETE FROM {live.name(table)} WHERE ({keys}) IN (SELECT {keys} FROM"
                f" (SELECT {cols} FROM {live.name(table)} EXCEPT SELECT {cols} FROM {scratch.name(table)}) AS d)"
            )
            cur.execute(
                f"INSERT INTO {live.name(table)} ({cols})"
                f" SELECT {cols} FROM {scratch.name(table)} EXCEPT SELECT {cols} FROM {live.name(table)}"
            )
        cur.execute(db.sql(f"UPDATE {live.tracking} SET position = %s WHERE name = %s"), (position, VIEWS))
    return position


def view_tx(db: Database, cur: Any, prefix: str) -> _ViewTx:
    """A view transaction on an already open cursor (for work inside a larger transaction)."""
    return (_PgViewTx if db.is_pg else _SqliteViewTx)(cur, Tables(db, prefix))
