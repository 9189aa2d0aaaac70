"""Audit storage: reading the hash chain, checkpoints, the access log and per-holder keys.

Implements the ports of application/audit.py and application/privacy.py on PostgreSQL and
SQLite, through the Ledger's own datastore (its pool, its schema). Tables are created by
`keel migrate` (infrastructure/persistence.py). The chain itself is only ever written by the
recorders; nothing here writes to it or to the events table.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.rows import tuple_row

from application.chain import ChainRecord, Checkpoint, id_bytes
from application.privacy import ERASED, SEALED_FORMAT
from domain.errors import ExistsWithDifferentFields
from infrastructure.audit_keys import NO_HOLDER_KEK, HolderKeks
from infrastructure.persistence import (
    ACCESS_LOG_TABLE,
    CHAINED_EVENTS_TABLES,
    CHECKPOINTS_TABLE,
    HOLDER_KEYS_TABLE,
)
from infrastructure.settings import SettingsError

CHAIN_PAGE_ROWS = 10_000
HOLDER_KEY_BYTES = 32


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")


class _Tx:
    def __init__(self, cursor: Any, *, postgres: bool) -> None:
        self._c = cursor
        self._pg = postgres

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        if self._pg:
            self._c.execute(sql.replace("?", "%s"), params)
        else:
            self._c.execute(sql, tuple(params))

    def __call__(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._run(sql, params)
        return [tuple(r) for r in self._c.fetchall()]

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._run(sql, params)
        return self._c.rowcount if self._pg else self._c.sqlite_cursor.rowcount


class Db:
    """A few SQL calls on the Ledger's datastore, the same on both databases ('?' placeholders)."""

    def __init__(self, datastore: Any, *, postgres: bool) -> None:
        self.datastore = datastore
        self.postgres = postgres
        self.prefix = f'"{datastore.schema}".' if postgres else ""

    def t(self, table: str) -> str:
        return self.prefix + table

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
                curs.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
                return curs.fetchall()
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, tuple(params))
            return [tuple(r) for r in c.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self.postgres:
            with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
                curs.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
                return curs.rowcount
        with self.datastore.transaction(commit=True) as c:
            c.execute(sql, tuple(params))
            return c.sqlite_cursor.rowcount

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """Several statements in one transaction: `q(sql, params)` returns rows,
        `q.rowcount(sql, params)` the number of rows changed."""
        if self.postgres:
            with self.datastore.get_connection() as conn, conn.transaction():
                with conn.cursor(row_factory=tuple_row) as curs:
                    yield _Tx(curs, postgres=True)
            return
        with self.datastore.transaction(commit=True) as c:
            yield _Tx(c, postgres=False)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
                curs.executemany(sql.replace("?", "%s"), rows)  # type: ignore[arg-type]
            return
        with self.datastore.transaction(commit=True) as c:
            c.executemany(sql, [tuple(r) for r in rows])


class SqlAuditStore:
    """The chain as stored (events joined with their hashes), checkpoints and the access log."""

    def __init__(self, db: Db, events_table: str = "ledger_events") -> None:
        self.db = db
        self.events = db.t(events_table)
        self.chain = db.t(CHAINED_EVENTS_TABLES[events_table])
        self.checkpoints_table = db.t(CHECKPOINTS_TABLE)
        self.access = db.t(ACCESS_LOG_TABLE)
        self._pos = "notification_id" if db.postgres else "rowid"

    # ---- the chain -------------------------------------------------------------------------

    def records(self, after: int = 0, stop: int | None = None) -> Iterator[ChainRecord]:
        """Every position in order, events with their hashes, so that either missing shows up
        (a deleted event leaves its hash behind; a forged event has none).

        Walks windows of positions (not LIMIT pages), so every query is bounded on both sides
        and costs the same at the end of a long log as at its start.
        """
        pos = self._pos
        (last_event,) = self.db.query(f"SELECT max({pos}) FROM {self.events}")[0]
        (last_chain,) = self.db.query(f"SELECT max(notification_id) FROM {self.chain}")[0]
        end = max(last_event or 0, last_chain or 0)
        if stop is not None:
            end = min(end, stop)
        page_sql = (
            f"SELECT e.{pos}, e.originator_id, e.originator_version, e.topic, e.state, c.hash FROM {self.events} e"
            f" LEFT JOIN {self.chain} c ON c.notification_id = e.{pos} AND c.notification_id > ? AND c.notification_id <= ?"
            f" WHERE e.{pos} > ? AND e.{pos} <= ? ORDER BY e.{pos}"
        )
        while after < end:
            hi = min(after + CHAIN_PAGE_ROWS, end)
            events = self.db.query(page_sql, [after, hi, after, hi])
            # Chain entries whose event row is gone: rare, so counted first and merged only then.
            (n_chain,) = self.db.query(
                f"SELECT count(*) FROM {self.chain} WHERE notification_id > ? AND notification_id <= ?", [after, hi]
            )[0]
            if n_chain == sum(1 for e in events if e[5] is not None):
                for e in events:
                    yield ChainRecord(e[0], id_bytes(e[1]), e[2], e[3], bytes(e[4]), bytes(e[5]) if e[5] is not None else None)
            else:
                present = {e[0] for e in events}
                chain = self.db.query(
                    f"SELECT notification_id, hash FROM {self.chain} WHERE notification_id > ? AND notification_id <= ?",
                    [after, hi],
                )
                merged: list[tuple[int, Any]] = [(e[0], e) for e in events]
                merged += [(c[0], c) for c in chain if c[0] not in present]
                for p, row in sorted(merged, key=lambda x: x[0]):
                    if len(row) == 2:
                        yield ChainRecord(p, None, None, None, None, bytes(row[1]))
                    else:
                        h = row[5]
                        yield ChainRecord(p, id_bytes(row[1]), row[2], row[3], bytes(row[4]), bytes(h) if h is not None else None)
            after = hi

    def hashes(self, positions: Sequence[int]) -> dict[int, bytes]:
        if not positions:
            return {}
        marks = ",".join("?" for _ in positions)
        rows = self.db.query(f"SELECT notification_id, hash FROM {self.chain} WHERE notification_id IN ({marks})", list(positions))
        return {p: bytes(h) for p, h in rows}

    def positions_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, int]:
        """version -> log position for some of one aggregate's events."""
        if not versions:
            return {}
        oid: Any = originator_id if self.db.postgres else originator_id.hex
        rows = self.db.query(
            f"SELECT originator_version, {self._pos} FROM {self.events}"
            " WHERE originator_id = ? AND originator_version >= ? AND originator_version <= ?",
            [oid, min(versions), max(versions)],
        )
        return {v: p for v, p in rows}

    def hash_before(self, position: int) -> bytes | None:
        rows = self.db.query(
            f"SELECT hash FROM {self.chain} WHERE notification_id < ? ORDER BY notification_id DESC LIMIT 1", [position]
        )
        return bytes(rows[0][0]) if rows else None

    def head(self) -> tuple[int, bytes] | None:
        rows = self.db.query(f"SELECT notification_id, hash FROM {self.chain} ORDER BY notification_id DESC LIMIT 1")
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # ---- checkpoints -----------------------------------------------------------------------

    def add_checkpoint(self, cp: Checkpoint) -> None:
        self.db.execute(
            f"INSERT INTO {self.checkpoints_table} (position, head_hash, signed_at, key_id, signature) VALUES (?, ?, ?, ?, ?)",
            [cp.position, cp.head_hash, cp.signed_at, cp.key_id, cp.signature],
        )

    def list_checkpoints(self, after_id: int = 0, limit: int | None = None) -> list[tuple[int, Checkpoint]]:
        sql = f"SELECT id, position, head_hash, signed_at, key_id, signature FROM {self.checkpoints_table} WHERE id > ? ORDER BY id"
        params: list[Any] = [after_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(r[0], Checkpoint(r[1], r[2], r[3], r[4], r[5])) for r in self.db.query(sql, params)]

    def last_checkpoint(self) -> Checkpoint | None:
        rows = self.db.query(
            f"SELECT position, head_hash, signed_at, key_id, signature FROM {self.checkpoints_table} ORDER BY id DESC LIMIT 1"
        )
        return Checkpoint(*rows[0]) if rows else None

    # ---- access log ------------------------------------------------------------------------

    def append_access(self, at: str, key_id: str, role: str, route: str, target: str, outcome: str) -> None:
        self.db.execute(
            f"INSERT INTO {self.access} (at, key_id, role, route, target, outcome) VALUES (?, ?, ?, ?, ?, ?)",
            [at, key_id, role, route, target, outcome],
        )

    def append_access_many(self, rows: Sequence[tuple[str, str, str, str, str, str]]) -> None:
        if not rows:
            return
        if self.db.postgres:
            # One statement of six arrays: executemany sent a statement per row (~5 % of an API
            # process's CPU at 2,400 writes/s).
            columns = [list(c) for c in zip(*rows, strict=True)]
            self.db.execute(
                f"INSERT INTO {self.access} (at, key_id, role, route, target, outcome)"
                " SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[])",
                columns,
            )
            return
        self.db.execute_many(
            f"INSERT INTO {self.access} (at, key_id, role, route, target, outcome) VALUES (?, ?, ?, ?, ?, ?)", rows
        )

    def access_entries(self, after_id: int, limit: int, key_id: str | None = None) -> list[tuple[Any, ...]]:
        where = "id > ?" + (" AND key_id = ?" if key_id is not None else "")
        params: list[Any] = [after_id] + ([key_id] if key_id is not None else []) + [limit]
        return self.db.query(
            f"SELECT id, at, key_id, role, route, target, outcome FROM {self.access} WHERE {where} ORDER BY id LIMIT ?", params
        )


class _Sealed(msgspec.Struct, frozen=True):
    sealed: str
    key_id: str
    ciphertext: str  # base64 of nonce || AES-GCM ciphertext


REWRAP_PAGE_ROWS = 1000


class SqlAccountDirectory:
    """application.ports.AccountDirectory over `keel_account_ids` (written by the recorders)."""

    KEYS_MAX = 100

    def __init__(self, db: Db) -> None:
        self.db = db
        self.table = db.t("keel_account_ids")

    def keys_of(self, public_id: UUID) -> list[UUID]:
        rows = self.db.query(f"SELECT account_key FROM {self.table} WHERE public_id = ? LIMIT ?", [str(public_id), self.KEYS_MAX])
        return [r[0] if isinstance(r[0], UUID) else UUID(r[0]) for r in rows]


class SqlHolderVault:
    """Per-holder AES-256-GCM keys in `keel_holder_keys`, each stored wrapped by a key-encryption
    key (KEK) that never lives in the database (infrastructure/audit_keys.py), with the KEK's id
    beside it. Erasure deletes the wrapped key.

    So a copy of the database (a backup, a stolen file) without the KEK reveals no holder; one
    taken before an erasure stops being readable once its KEK is rotated away. The row stays
    (wrapped_key and kek_id NULL, erased_at set) so that 'erased' can be told apart from 'never
    existed'. Keys are not cached: after an erasure no process can decrypt, at once. Without a
    KEK (PostgreSQL with none configured) sealing and revealing refuse with NO_HOLDER_KEK.
    """

    def __init__(self, db: Db, keks: HolderKeks | None) -> None:
        self.db = db
        self.keks = keks
        self.table = db.t(HOLDER_KEYS_TABLE)

    def _kek_ring(self) -> HolderKeks:
        if self.keks is None:
            raise SettingsError(NO_HOLDER_KEK)
        return self.keks

    def _key(self, key_id: str) -> bytes | None:
        rows = self.db.query(f"SELECT wrapped_key, kek_id FROM {self.table} WHERE key_id = ?", [key_id])
        if not rows or rows[0][0] is None:
            return None
        return self._kek_ring().unwrap(key_id, rows[0][1], bytes(rows[0][0]))

    def seal(self, subject_id: UUID, holder: dict[str, Any]) -> dict[str, Any]:
        key_id = str(subject_id)
        keks = self._kek_ring()
        new_key = AESGCM.generate_key(bit_length=HOLDER_KEY_BYTES * 8)
        kek_id, wrapped = keks.wrap(key_id, new_key)
        # Idempotent: a retried open of the same account reuses its key (never one per attempt).
        conflict = "ON CONFLICT (key_id) DO NOTHING" if self.db.postgres else ""
        verb = "INSERT" if self.db.postgres else "INSERT OR IGNORE"
        inserted = self.db.execute(
            f"{verb} INTO {self.table} (key_id, wrapped_key, kek_id, created_at) VALUES (?, ?, ?, ?) {conflict}",
            [key_id, wrapped, kek_id, _now()],
        )
        key = new_key if inserted == 1 else self._key(key_id)
        if key is None:
            # Only reachable if an erased id is reused for a new account: refuse, as a client error.
            raise ExistsWithDifferentFields("this account id's holder data was erased; use another id", account_id=key_id)
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, msgspec.json.encode(holder), subject_id.bytes)
        return {"sealed": SEALED_FORMAT, "key_id": key_id, "ciphertext": base64.b64encode(nonce + ct).decode()}

    def reveal(self, sealed: dict[str, Any]) -> dict[str, Any]:
        try:
            s = msgspec.convert(sealed, type=_Sealed)
        except msgspec.ValidationError:
            return sealed  # not sealed: written before holder encryption existed
        key = self._key(s.key_id)
        if key is None:
            return dict(ERASED)
        raw = base64.b64decode(s.ciphertext)
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], UUID(s.key_id).bytes)
        return msgspec.json.decode(plain)

    def describe(self, sealed: dict[str, Any]) -> dict[str, Any]:
        """Needs no KEK: whether the wrapped key still exists is all it looks at."""
        if sealed.get("sealed") != SEALED_FORMAT:
            return {"encrypted": False, "redacted": True}
        rows = self.db.query(f"SELECT wrapped_key IS NULL FROM {self.table} WHERE key_id = ?", [sealed.get("key_id")])
        if not rows or rows[0][0]:
            return dict(ERASED)
        return {"encrypted": True, "key_id": sealed.get("key_id")}

    def erase(self, subject_id: UUID) -> bool:
        sql = (
            f"UPDATE {self.table} SET wrapped_key = NULL, kek_id = NULL, erased_at = ?"
            " WHERE key_id = ? AND wrapped_key IS NOT NULL"
        )
        params = [_now(), str(subject_id)]
        if self.db.postgres:
            # The old row version stays in the heap until VACUUM, and in WAL and backups: wrapped,
            # so unreadable without the KEK, and for good once that KEK is rotated away.
            return self.db.execute(sql, params) > 0
        # SQLite: zero the freed bytes of the old row (secure_delete), then move the WAL into the
        # database file and truncate it, so that no page of either file keeps the wrapped key,
        # even for someone who holds the KEK file that sits beside it.
        with self.db.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete = ON")
            c.execute(sql, params)
            erased = c.sqlite_cursor.rowcount > 0
            c.execute("PRAGMA secure_delete = OFF")
        if erased:
            with self.db.datastore.get_connection(commit=True) as conn:
                conn.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    # ---- KEK rotation ------------------------------------------------------------------------

    def rewrap(self, wrap_with: HolderKeks, unwrap_with: HolderKeks | None = None) -> int:
        """Re-wraps every stored holder key that is not under `wrap_with`'s newest KEK, in one
        transaction. Events are never touched (they hold only what the data key sealed). An
        erased row has no key and stays so: each update is conditional on the row still holding
        the wrapped key it read, so an erasure committed meanwhile is never undone."""
        target = wrap_with.current_id
        wrapping_ids = set(wrap_with.ids)

        def unwrap(key_id: str, kek_id: str, wrapped: bytes) -> bytes:
            if kek_id in wrapping_ids or unwrap_with is None:
                return wrap_with.unwrap(key_id, kek_id, wrapped)
            return unwrap_with.unwrap(key_id, kek_id, wrapped)

        count = 0
        with self.db.transaction() as q:
            if not self.db.postgres:
                # Take SQLite's write lock first: a read transaction that later writes fails
                # outright if another process committed in between.
                q.rowcount(f"UPDATE {self.table} SET kek_id = kek_id WHERE 0 = 1")
            after = ""
            while True:
                rows = q(
                    f"SELECT key_id, wrapped_key, kek_id FROM {self.table}"
                    " WHERE key_id > ? AND wrapped_key IS NOT NULL AND kek_id <> ? ORDER BY key_id LIMIT ?",
                    [after, target, REWRAP_PAGE_ROWS],
                )
                if not rows:
                    break
                for key_id, wrapped, kek_id in rows:
                    key = unwrap(key_id, kek_id, bytes(wrapped))
                    new_kek, new_wrapped = wrap_with.wrap(key_id, key)
                    assert new_kek == target, "the ring's newest KEK changed during a re-wrap"
                    count += q.rowcount(
                        f"UPDATE {self.table} SET wrapped_key = ?, kek_id = ?"
                        " WHERE key_id = ? AND kek_id = ? AND wrapped_key = ?",
                        [new_wrapped, new_kek, key_id, kek_id, bytes(wrapped)],
                    )
                after = rows[-1][0]
        return count

    def keys_by_kek(self) -> dict[str, int]:
        """How many live holder keys each KEK wraps: a KEK may be dropped once it wraps none."""
        rows = self.db.query(f"SELECT kek_id, count(*) FROM {self.table} WHERE wrapped_key IS NOT NULL GROUP BY kek_id")
        return {kek_id: n for kek_id, n in rows}
