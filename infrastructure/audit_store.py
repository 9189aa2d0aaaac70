"""Audit storage: reading the hash chain, checkpoints, the access log and per-holder keys.

Implements the ports of application/audit.py and application/privacy.py over the SQL helper
(infrastructure/sql.py), the same code on both databases, on the store's pool. Tables are defined
in infrastructure/schema.py. The chain itself is only ever written by the recorders; nothing here
writes to it or to the events table.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from application.chain import ChainRecord, Checkpoint, id_bytes
from application.privacy import ERASED, SEALED_FORMAT
from domain.errors import ExistsWithDifferentFields
from infrastructure.audit_keys import NO_HOLDER_KEK, HolderKeks
from infrastructure.schema import ACCESS_LOG, ACCOUNT_IDS, CHAINED_EVENTS_TABLES, CHECKPOINTS, HOLDER_KEYS, LEDGER_EVENTS
from infrastructure.settings import SettingsError
from infrastructure.sql import Sql

CHAIN_PAGE_ROWS = 10_000
HOLDER_KEY_BYTES = 32


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")


class SqlAuditStore:
    """The chain as stored (events joined with their hashes), checkpoints and the access log."""

    ACCESS_COLUMNS = ("at", "key_id", "role", "route", "target", "outcome")

    def __init__(self, sql: Sql, events_table: str = LEDGER_EVENTS) -> None:
        self.sql = sql
        self.events = sql.table(events_table)
        self.chain = sql.table(CHAINED_EVENTS_TABLES[events_table])
        self.checkpoints_table = sql.table(CHECKPOINTS)
        self.access = sql.table(ACCESS_LOG)
        self._pos = sql.position_column

    # ---- the chain -------------------------------------------------------------------------

    def records(self, after: int = 0, stop: int | None = None) -> Iterator[ChainRecord]:
        """Every position in order, events with their hashes, so that either missing shows up
        (a deleted event leaves its hash behind; a forged event has none).

        Walks windows of positions (not LIMIT pages), so every query is bounded on both sides
        and costs the same at the end of a long log as at its start.
        """
        pos = self._pos
        (last_event,) = self.sql.fetchall(f"SELECT max({pos}) FROM {self.events}")[0]
        (last_chain,) = self.sql.fetchall(f"SELECT max(notification_id) FROM {self.chain}")[0]
        end = max(last_event or 0, last_chain or 0)
        if stop is not None:
            end = min(end, stop)
        page_sql = (
            f"SELECT e.{pos}, e.originator_id, e.originator_version, e.topic, e.state, c.hash FROM {self.events} e"
            f" LEFT JOIN {self.chain} c ON c.notification_id = e.{pos} AND c.notification_id > %s AND c.notification_id <= %s"
            f" WHERE e.{pos} > %s AND e.{pos} <= %s ORDER BY e.{pos}"
        )
        while after < end:
            hi = min(after + CHAIN_PAGE_ROWS, end)
            events = self.sql.fetchall(page_sql, [after, hi, after, hi])
            # Chain entries whose event row is gone: rare, so counted first and merged only then.
            (n_chain,) = self.sql.fetchall(
                f"SELECT count(*) FROM {self.chain} WHERE notification_id > %s AND notification_id <= %s", [after, hi]
            )[0]
            if n_chain == sum(1 for e in events if e[5] is not None):
                for e in events:
                    yield ChainRecord(e[0], id_bytes(e[1]), e[2], e[3], bytes(e[4]), bytes(e[5]) if e[5] is not None else None)
            else:
                present = {e[0] for e in events}
                chain = self.sql.fetchall(
                    f"SELECT notification_id, hash FROM {self.chain} WHERE notification_id > %s AND notification_id <= %s",
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
        marks = ",".join("%s" for _ in positions)
        rows = self.sql.fetchall(f"SELECT notification_id, hash FROM {self.chain} WHERE notification_id IN ({marks})", list(positions))
        return {p: bytes(h) for p, h in rows}

    def positions_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, int]:
        """version -> log position for some of one aggregate's events."""
        if not versions:
            return {}
        oid = self.sql.event_id(originator_id)
        rows = self.sql.fetchall(
            f"SELECT originator_version, {self._pos} FROM {self.events}"
            " WHERE originator_id = %s AND originator_version >= %s AND originator_version <= %s",
            [oid, min(versions), max(versions)],
        )
        return {v: p for v, p in rows}

    def hash_before(self, position: int) -> bytes | None:
        rows = self.sql.fetchall(
            f"SELECT hash FROM {self.chain} WHERE notification_id < %s ORDER BY notification_id DESC LIMIT 1", [position]
        )
        return bytes(rows[0][0]) if rows else None

    def head(self) -> tuple[int, bytes] | None:
        rows = self.sql.fetchall(f"SELECT notification_id, hash FROM {self.chain} ORDER BY notification_id DESC LIMIT 1")
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # ---- checkpoints -----------------------------------------------------------------------

    def add_checkpoint(self, cp: Checkpoint) -> None:
        self.sql.execute(
            f"INSERT INTO {self.checkpoints_table} (position, head_hash, signed_at, key_id, signature) VALUES (%s, %s, %s, %s, %s)",
            [cp.position, cp.head_hash, cp.signed_at, cp.key_id, cp.signature],
        )

    def list_checkpoints(self, after_id: int = 0, limit: int | None = None) -> list[tuple[int, Checkpoint]]:
        sql = f"SELECT id, position, head_hash, signed_at, key_id, signature FROM {self.checkpoints_table} WHERE id > %s ORDER BY id"
        params: list[Any] = [after_id]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return [(r[0], Checkpoint(r[1], r[2], r[3], r[4], r[5])) for r in self.sql.fetchall(sql, params)]

    def last_checkpoint(self) -> Checkpoint | None:
        rows = self.sql.fetchall(
            f"SELECT position, head_hash, signed_at, key_id, signature FROM {self.checkpoints_table} ORDER BY id DESC LIMIT 1"
        )
        return Checkpoint(*rows[0]) if rows else None

    # ---- access log ------------------------------------------------------------------------

    def append_access(self, at: str, key_id: str, role: str, route: str, target: str, outcome: str) -> None:
        self.sql.execute(
            f"INSERT INTO {self.access} (at, key_id, role, route, target, outcome) VALUES (%s, %s, %s, %s, %s, %s)",
            [at, key_id, role, route, target, outcome],
        )

    def append_access_many(self, rows: Sequence[tuple[str, str, str, str, str, str]]) -> None:
        # One statement for all rows where the database allows (PostgreSQL: six arrays):
        # executemany sent a statement per row (~5 % of an API process's CPU at 2,400 writes/s).
        self.sql.insert_rows(ACCESS_LOG, self.ACCESS_COLUMNS, ("text",) * 6, rows)

    def access_entries(self, after_id: int, limit: int, key_id: str | None = None) -> list[tuple[Any, ...]]:
        where = "id > %s" + (" AND key_id = %s" if key_id is not None else "")
        params: list[Any] = [after_id] + ([key_id] if key_id is not None else []) + [limit]
        return self.sql.fetchall(
            f"SELECT id, at, key_id, role, route, target, outcome FROM {self.access} WHERE {where} ORDER BY id LIMIT %s", params
        )


class _Sealed(msgspec.Struct, frozen=True):
    sealed: str
    key_id: str
    ciphertext: str  # base64 of nonce || AES-GCM ciphertext


REWRAP_PAGE_ROWS = 1000


class SqlAccountDirectory:
    """application.ports.AccountDirectory over `keel_account_ids` (written by the recorders)."""

    KEYS_MAX = 100

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.table = sql.table(ACCOUNT_IDS)

    def keys_of(self, public_id: UUID) -> list[UUID]:
        rows = self.sql.fetchall(
            f"SELECT account_key FROM {self.table} WHERE public_id = %s LIMIT %s", [self.sql.uuid(public_id), self.KEYS_MAX]
        )
        return [self.sql.to_uuid(r[0]) for r in rows]


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

    def __init__(self, sql: Sql, keks: HolderKeks | None) -> None:
        self.sql = sql
        self.keks = keks
        self.table = sql.table(HOLDER_KEYS)

    def _kek_ring(self) -> HolderKeks:
        if self.keks is None:
            raise SettingsError(NO_HOLDER_KEK)
        return self.keks

    def _key(self, key_id: str) -> bytes | None:
        rows = self.sql.fetchall(f"SELECT wrapped_key, kek_id FROM {self.table} WHERE key_id = %s", [key_id])
        if not rows or rows[0][0] is None:
            return None
        return self._kek_ring().unwrap(key_id, rows[0][1], bytes(rows[0][0]))

    def seal(self, subject_id: UUID, holder: dict[str, Any]) -> dict[str, Any]:
        key_id = str(subject_id)
        keks = self._kek_ring()
        new_key = AESGCM.generate_key(bit_length=HOLDER_KEY_BYTES * 8)
        kek_id, wrapped = keks.wrap(key_id, new_key)
        # Idempotent: a retried open of the same account reuses its key (never one per attempt).
        inserted = self.sql.execute(
            f"INSERT INTO {self.table} (key_id, wrapped_key, kek_id, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key_id) DO NOTHING",
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
        rows = self.sql.fetchall(f"SELECT wrapped_key IS NULL FROM {self.table} WHERE key_id = %s", [sealed.get("key_id")])
        if not rows or rows[0][0]:
            return dict(ERASED)
        return {"encrypted": True, "key_id": sealed.get("key_id")}

    def erase(self, subject_id: UUID) -> bool:
        # PostgreSQL keeps the old row version in the heap until VACUUM, and in WAL and backups:
        # wrapped, so unreadable without the KEK, and for good once that KEK is rotated away.
        # SQLite zeroes it in its files, so not even someone holding the KEK file beside them
        # finds it (infrastructure/sqlite/sql.py).
        return self.sql.execute_erasing(
            f"UPDATE {self.table} SET wrapped_key = NULL, kek_id = NULL, erased_at = %s"
            " WHERE key_id = %s AND wrapped_key IS NOT NULL",
            [_now(), str(subject_id)],
        ) > 0

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
        # Exclusive: on SQLite the write lock is taken before the first read (a read transaction
        # that later writes fails outright if another process committed in between); on
        # PostgreSQL two re-wraps take turns.
        with self.sql.exclusive_transaction("holder-key-rewrap") as cur:
            after = ""
            while True:
                cur.execute(
                    f"SELECT key_id, wrapped_key, kek_id FROM {self.table}"
                    " WHERE key_id > %s AND wrapped_key IS NOT NULL AND kek_id <> %s ORDER BY key_id LIMIT %s",
                    [after, target, REWRAP_PAGE_ROWS],
                )
                rows = cur.fetchall()
                if not rows:
                    break
                for key_id, wrapped, kek_id in rows:
                    key = unwrap(key_id, kek_id, bytes(wrapped))
                    new_kek, new_wrapped = wrap_with.wrap(key_id, key)
                    assert new_kek == target, "the ring's newest KEK changed during a re-wrap"
                    cur.execute(
                        f"UPDATE {self.table} SET wrapped_key = %s, kek_id = %s"
                        " WHERE key_id = %s AND kek_id = %s AND wrapped_key = %s",
                        [new_wrapped, new_kek, key_id, kek_id, bytes(wrapped)],
                    )
                    count += cur.rowcount
                after = rows[-1][0]
        return count

    def keys_by_kek(self) -> dict[str, int]:
        """How many live holder keys each KEK wraps: a KEK may be dropped once it wraps none."""
        rows = self.sql.fetchall(f"SELECT kek_id, count(*) FROM {self.table} WHERE wrapped_key IS NOT NULL GROUP BY kek_id")
        return {kek_id: n for kek_id, n in rows}
