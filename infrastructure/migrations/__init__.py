"""Numbered migrations of Keel's own tables, and the version table that records them.

Each module `mNNNN_<what>.py` here defines `up(sql, cur)`: statements over the SQL helper
(infrastructure/sql.py) that run the DDL of infrastructure/schema.py. `apply()` runs the missing
ones in order, each in its own transaction together with the row that records it (both
databases run DDL transactionally: a migration is applied whole or not at all), under an
exclusive lock and after re-reading the version inside it, so two processes migrating at once
apply each migration exactly once. Running it again does nothing. A shipped migration is never
edited; a change of schema is a new migration at the end of MIGRATIONS.
"""
from __future__ import annotations

import pkgutil
from collections.abc import Callable
from datetime import datetime, timezone
from typing import NamedTuple

import msgspec

from infrastructure import schema
from infrastructure.migrations import (
    m0001_initial,
    m0002_transfers_by_tenant,
    m0003_idempotency_answers,
    m0004_realtime,
    m0005_imports_and_event_time,
)
from infrastructure.sql import Cursor, Sql

LOCK_NAME = "keel-migrate"  # held by Store.migrate around everything it does
VERSION_LOCK_NAME = "keel-schema-version"  # taken by each migration's transaction


class Migration(NamedTuple):
    version: int
    name: str
    up: Callable[[Sql, Cursor], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", m0001_initial.up),
    Migration(2, "transfers_by_tenant", m0002_transfers_by_tenant.up),
    Migration(3, "idempotency_answers", m0003_idempotency_answers.up),
    Migration(4, "realtime", m0004_realtime.up),
    Migration(5, "imports_and_event_time", m0005_imports_and_event_time.up),
)
EXPECTED_VERSION = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "migrations are numbered 1, 2, 3, ..."
assert sorted(
    m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("m") and m.name[1:5].isdigit()
) == [f"m{m.version:04d}_{m.name}" for m in MIGRATIONS], "every migration module is listed in MIGRATIONS, in order"


class SchemaStatus(msgspec.Struct, frozen=True):
    """Where a store's schema stands against this code's migrations."""

    current: int  # the highest migration applied (0: none, or a store from before versions)
    expected: int  # the highest migration this code knows

    @property
    def up_to_date(self) -> bool:
        return self.current == self.expected

    @property
    def problem(self) -> str | None:
        """One line for an operator, or None when the store is ready for this code."""
        if self.current == self.expected:
            return None
        if self.current == 0:
            return f"the store has no Keel schema (version 0 of {self.expected}): run `keel migrate`"
        if self.current < self.expected:
            return f"the store's schema is at version {self.current} of {self.expected}: run `keel migrate`"
        return (
            f"the store's schema is at version {self.current}, newer than this Keel knows ({self.expected}):"
            " run a newer Keel"
        )


def current_version(sql: Sql) -> int:
    if not sql.table_exists(schema.SCHEMA_VERSION):
        return 0
    row = sql.fetchone(f"SELECT max(version) FROM {sql.table(schema.SCHEMA_VERSION)}")
    return int(row[0]) if row and row[0] is not None else 0


def status(sql: Sql) -> SchemaStatus:
    return SchemaStatus(current=current_version(sql), expected=EXPECTED_VERSION)


def apply(sql: Sql, up_to: int | None = None) -> list[int]:
    """Applies the migrations not yet applied, in order, up to `up_to` (default: all); returns
    the versions applied now ([] when the store was already there)."""
    target = EXPECTED_VERSION if up_to is None else up_to
    if not 0 <= target <= EXPECTED_VERSION:
        raise ValueError(f"no migration {target}: this Keel knows 1..{EXPECTED_VERSION}")
    versions = sql.table(schema.SCHEMA_VERSION)
    applied: list[int] = []
    for migration in MIGRATIONS[:target]:
        with sql.exclusive_transaction(VERSION_LOCK_NAME) as cur:
            cur.execute(schema.schema_version_table(sql))
            cur.execute(f"SELECT max(version) FROM {versions}")
            row = cur.fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current >= migration.version:
                continue
            assert current == migration.version - 1, f"at version {current}, migration {migration.version} cannot run"
            migration.up(sql, cur)
            cur.execute(
                f"INSERT INTO {versions} (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, datetime.now(tz=timezone.utc).isoformat(timespec="seconds")),
            )
        applied.append(migration.version)
    return applied
