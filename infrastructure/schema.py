"""Every table Keel keeps, on both databases: the one place a table is defined.

The events, snapshot and tracking tables are the library's: eventsourcing creates and evolves
them (`LIBRARY_TABLES` names which Application needs which). Everything else is Keel's and is
defined here, as the DDL of each database side by side; the numbered migrations
(infrastructure/migrations/) run it, and only they do. A definition that has shipped in a
migration is never edited in place: a change is a new function here and a new migration that
runs it, so that a store made by any earlier version upgrades to exactly what a new store gets.
This module never touches data beyond the rows a table starts with.
"""
from __future__ import annotations

from application.projections import (
    ACCOUNT_COLUMNS,
    ENTRY_COLUMNS,
    FLOW_COLUMNS,
    TRANSFER_COLUMNS,
    VIEWS,
    VOLUME_COLUMNS,
)
from infrastructure.sql import Sql

# ---- the library's tables ---------------------------------------------------------------------
# Application name -> the recorders its tables come from (eventsourcing names them
# `<name>_events`, `<name>_snapshots`, `<name>_tracking`; the Applications set `name`).
LEDGER = "ledger"
FRAUD = "fraud"
LIBRARY_TABLES: dict[str, tuple[str, ...]] = {
    LEDGER: ("application", "snapshots"),  # Ledger: ledger_events, ledger_snapshots
    FRAUD: ("process",),  # FraudApp: fraud_events, fraud_tracking
}
LEDGER_EVENTS = "ledger_events"
LEDGER_SNAPSHOTS = "ledger_snapshots"
FRAUD_EVENTS = "fraud_events"
FRAUD_TRACKING = "fraud_tracking"

# ---- Keel's tables ----------------------------------------------------------------------------
SCHEMA_VERSION = "keel_schema_version"
IDEMPOTENCY = "keel_idempotency"
IDEMPOTENCY_CLAIMS = "keel_idempotency_claims"
API_KEYS = "keel_api_keys"
ACCOUNT_IDS = "keel_account_ids"
HOLDER_KEYS = "keel_holder_keys"
ACCESS_LOG = "keel_access_log"
CHECKPOINTS = "ledger_checkpoints"
FRAUD_TRANSFER_IDS = "fraud_transfer_ids"
# Events tables whose rows are hash-chained, and the table that holds each chain (see
# application/chain.py). The chain row is written in the same transaction as its event, under
# the same lock that decides the event's position, so no committed event is outside the chain.
CHAINED_EVENTS_TABLES: dict[str, str] = {LEDGER_EVENTS: "ledger_chain"}

Statements = list[str]


def schema_version_table(sql: Sql) -> str:
    """One row per applied migration (infrastructure/migrations/); the same on both databases."""
    return (
        f"CREATE TABLE IF NOT EXISTS {sql.table(SCHEMA_VERSION)} ("
        "version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)"
    )


# ---- version 1: the ledger's side tables, the audit trail, API keys ---------------------------

_PG_V1 = [
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
    # Only a SHA-256 hash of each API key's secret (infrastructure/keys.py).
    """CREATE TABLE IF NOT EXISTS {schema}.keel_api_keys (
        key_id text PRIMARY KEY,
        token_hash text NOT NULL,
        role text NOT NULL,
        tenant text,
        created_at_ms bigint NOT NULL,
        revoked boolean NOT NULL DEFAULT false)""",
    # Claims are ephemeral (infrastructure/idempotency_claims.py): UNLOGGED, no WAL flush per
    # claim; a crash simply forgets every claim.
    """CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.keel_idempotency_claims (
        scope text NOT NULL,
        key text NOT NULL,
        claimed_at_ms bigint NOT NULL,
        PRIMARY KEY (scope, key))""",
]

_SQLITE_V1 = [
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
    """CREATE TABLE IF NOT EXISTS keel_api_keys (
        key_id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        tenant TEXT,
        created_at_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS keel_idempotency_claims (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        claimed_at_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, key))""",
]


def keel_tables(sql: Sql) -> Statements:
    """Version 1 of Keel's own tables beside the ledger."""
    if sql.dialect == "postgresql":
        return [s.replace("{schema}.", sql.table("")) for s in _PG_V1]
    return list(_SQLITE_V1)


# ---- read models (version 1) ------------------------------------------------------------------
# Live tables are `rm_*`; `keel replay` rebuilds into `rm_scratch_*` beside them (same shape).

LIVE = "rm_"
SCRATCH = "rm_scratch_"
VIEW_TABLES = ("accounts", "entries", "transfers", "volumes", "flows")
# Primary keys (also the order in which `keel replay --check` lists differences).
KEYS: dict[str, tuple[str, ...]] = {
    "accounts": ("account_id",),
    "entries": ("account_id", "position"),
    "transfers": ("transfer_id",),
    "volumes": ("period", "bucket_s", "currency"),
    "flows": ("account_id", "day_s"),
    "tracking": ("name",),
}
# Column order is the projection's (application/projections.py), which writes the rows.
COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ACCOUNT_COLUMNS,
    "entries": ENTRY_COLUMNS,
    "transfers": TRANSFER_COLUMNS,
    "volumes": VOLUME_COLUMNS,
    "flows": FLOW_COLUMNS,
    "tracking": ("name", "position"),
}
_TEXT, _INT = "text", "bigint"
# PostgreSQL type of each column, in COLUMNS order (SQLite: INTEGER or TEXT). The projection
# writer casts its arrays to these.
TYPES: dict[str, tuple[str, ...]] = {
    "accounts": (_TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _INT, _INT, _INT, _INT, _INT, _TEXT),
    "entries": (_TEXT, _INT, _TEXT, _TEXT, _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _INT),
    "transfers": (
        _TEXT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _INT, _INT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _INT,
        _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _INT,
    ),  # fmt: skip
    "volumes": (_TEXT, _INT, _TEXT, _INT, _INT),
    "flows": (_TEXT, _INT, _INT, _INT, _INT, _INT),
    "tracking": (_TEXT, _INT),
}
for _table, _columns in COLUMNS.items():
    assert len(TYPES[_table]) == len(_columns), f"rm_{_table}: a column of the projection has no type here"
# Columns that may be NULL; every other column is NOT NULL.
_NULLABLE = {"reference", "reverses_id", "reversed_by_id", "reverses_public_id", "reversed_by_public_id"}
_UPDATED_IN_PLACE = {"accounts", "flows", "volumes", "tracking"}
UPDATED_FILLFACTOR = 70
_INDEXES: dict[str, list[tuple[str, ...]]] = {
    # (public_id, tenant): the analysts' account filter names an account by its public id.
    "accounts": [("currency", "account_id"), ("tenant", "account_id"), ("public_id", "tenant")],
    "entries": [("transfer_id",)],
    "transfers": [("position",)],
    "flows": [("day_s",)],
}


def read_model_tables(sql: Sql, prefix: str = LIVE, *, unlogged: bool = False) -> Statements:
    """The read-model tables with their tracking row at 0. `unlogged`: skip the WAL where the
    database has one (scratch tables, rebuilt from the log whenever needed)."""
    pg = sql.dialect == "postgresql"
    statements = []
    for table, columns in COLUMNS.items():
        cols = []
        for name, typ in zip(columns, TYPES[table], strict=True):
            sql_type = typ if pg else ("INTEGER" if typ == _INT else "TEXT")
            cols.append(f"{name} {sql_type}{'' if name in _NULLABLE else ' NOT NULL'}")
        cols.append(f"PRIMARY KEY ({', '.join(KEYS[table])})")
        kind = "UNLOGGED TABLE" if unlogged and pg else "TABLE"
        # Rows updated in place on every batch leave room on their page, so that PostgreSQL
        # can update them without touching the indexes (HOT updates).
        storage = f" WITH (fillfactor = {UPDATED_FILLFACTOR})" if pg and table in _UPDATED_IN_PLACE else ""
        statements.append(f"CREATE {kind} IF NOT EXISTS {sql.table(prefix + table)} ({', '.join(cols)}){storage}")
        for index_cols in _INDEXES.get(table, []):
            index = f"{prefix}{table}_{'_'.join(index_cols)}_idx"
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {sql.table(prefix + table)} ({', '.join(index_cols)})")
    statements.append(
        f"INSERT INTO {sql.table(prefix + 'tracking')} (name, position) VALUES ('{VIEWS}', 0) ON CONFLICT DO NOTHING"
    )
    return statements


# ---- fraud (version 1) ------------------------------------------------------------------------


def fraud_tables(sql: Sql) -> Statements:
    """Beside the library's fraud tables: alerts are listed by topic, which without an index would
    scan every assessment ever recorded (on SQLite every index ends in the rowid, the position);
    and the table of transfer ids (public id -> tenant, storage key) for cross-tenant lookups."""
    if sql.dialect == "postgresql":
        return [
            f"CREATE INDEX IF NOT EXISTS fraud_events_topic_idx ON {sql.table(FRAUD_EVENTS)} (topic, notification_id)",
            f"CREATE TABLE IF NOT EXISTS {sql.table(FRAUD_TRANSFER_IDS)} (public_id uuid NOT NULL, tenant text NOT NULL, "
            "transfer_key uuid NOT NULL, PRIMARY KEY (public_id, tenant))",
        ]
    return [
        f"CREATE INDEX IF NOT EXISTS fraud_events_topic_idx ON {FRAUD_EVENTS} (topic)",
        f"CREATE TABLE IF NOT EXISTS {FRAUD_TRANSFER_IDS} (public_id TEXT NOT NULL, tenant TEXT NOT NULL, "
        "transfer_key TEXT NOT NULL, PRIMARY KEY (public_id, tenant))",
    ]


# ---- version 2 --------------------------------------------------------------------------------


def transfers_by_tenant_index(sql: Sql) -> Statements:
    """An analyst's `GET /v1/analytics/transactions?tenant=T` pages through one tenant's transfers
    in log order (`WHERE tenant = ? AND position > ? ORDER BY position LIMIT n`). With only the
    position index that walks every tenant's transfers and drops the others', so a small tenant
    among large ones costs a scan of the table per page; this index makes each page a range
    read of its own rows. The same statement on both databases."""
    table = sql.table(LIVE + "transfers")
    return [f"CREATE INDEX IF NOT EXISTS {LIVE}transfers_tenant_position_idx ON {table} (tenant, position)"]



def idempotency_answer_columns(sql: Sql) -> tuple[Statements, Statements]:
    """Version 3: a stored idempotent answer is one opaque `answer` (the API's rendering of the
    outcome; the application does not know HTTP) instead of `status_code` and `body`. Returns
    the statements before the rows are rewritten (add the column) and after (drop the old ones)."""
    table = sql.table(IDEMPOTENCY)
    kind = "bytea" if sql.dialect == "postgresql" else "BLOB"
    return (
        [f"ALTER TABLE {table} ADD COLUMN answer {kind}"],
        [f"ALTER TABLE {table} DROP COLUMN status_code", f"ALTER TABLE {table} DROP COLUMN body"],
    )


# ---- version 4: real time (issue #17) -----------------------------------------------------------
FEED = "keel_feed"
FEED_TRACKING = "keel_feed_tracking"
FEED_OBJECTS = "keel_feed_objects"
WEBHOOKS = "keel_webhooks"
OAUTH_CLIENTS = "keel_oauth_clients"
# Rows of FEED_TRACKING: the last position followed in each log, and the last feed id written.
FEED_TRACKING_ROWS = ("ledger", "fraud", "feed")


def realtime_tables(sql: Sql) -> Statements:
    """The event feed (infrastructure/feed.py), webhooks and their delivery state
    (infrastructure/webhooks.py) and OAuth clients (infrastructure/oauth.py).

    - keel_feed: one row per business event of a tenant, numbered by the feed itself (`id`, in
      commit order: one writer), its rendered JSON in `body`; read by tenant and id (the index) and,
      by the SSE hub and the webhook worker, by id alone (the key).
    - keel_feed_tracking: the position followed in the ledger's and the fraud module's logs and
      the last feed id, moved in the same transaction as the rows they account for.
    - keel_feed_objects: the public picture of each account, transfer and alert the feed has seen
      (public ids only), so that a later event of the object renders whole.
    - keel_webhooks: each webhook with its delivery tracking (`after_id`: the last feed id delivered
      or passed over), the retry state and the last error. The secret is sealed with the data key
      when one is configured.
    - keel_oauth_clients: only a SHA-256 hash of each client secret, like keel_api_keys.
    """
    pg = sql.dialect == "postgresql"
    text, integer, blob = ("text", "bigint", "bytea") if pg else ("TEXT", "INTEGER", "BLOB")
    boolean = "boolean NOT NULL DEFAULT false" if pg else "INTEGER NOT NULL DEFAULT 0"
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {sql.table(FEED)} (
            id {integer} PRIMARY KEY,
            tenant {text} NOT NULL,
            type {text} NOT NULL,
            body {blob} NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS keel_feed_tenant_id_idx ON {sql.table(FEED)} (tenant, id)",
        f"CREATE TABLE IF NOT EXISTS {sql.table(FEED_TRACKING)} (name {text} PRIMARY KEY, position {integer} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {sql.table(FEED_OBJECTS)} (
            object_key {text} PRIMARY KEY,
            tenant {text} NOT NULL,
            data {text} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {sql.table(WEBHOOKS)} (
            id {text} PRIMARY KEY,
            tenant {text} NOT NULL,
            url {text} NOT NULL,
            types {text} NOT NULL,
            description {text},
            secret {text} NOT NULL,
            created_at {text} NOT NULL,
            status {text} NOT NULL,
            after_id {integer} NOT NULL,
            attempts {integer} NOT NULL DEFAULT 0,
            next_attempt_at_ms {integer} NOT NULL DEFAULT 0,
            failing_since_ms {integer},
            last_error {text},
            last_attempt_at {text},
            last_delivered_at {text},
            delivered {integer} NOT NULL DEFAULT 0)""",
        f"CREATE INDEX IF NOT EXISTS keel_webhooks_tenant_idx ON {sql.table(WEBHOOKS)} (tenant)",
        f"""CREATE TABLE IF NOT EXISTS {sql.table(OAUTH_CLIENTS)} (
            client_id {text} PRIMARY KEY,
            secret_hash {text} NOT NULL,
            role {text} NOT NULL,
            tenant {text},
            created_at_ms {integer} NOT NULL,
            revoked {boolean})""",
    ]
    for name in FEED_TRACKING_ROWS:
        statements.append(
            f"INSERT INTO {sql.table(FEED_TRACKING)} (name, position) VALUES ('{name}', 0) ON CONFLICT DO NOTHING"
        )
    return statements


# ---- version 5: imports (issue #15) --------------------------------------------------------------
IMPORTS = "keel_imports"


def imports_table(sql: Sql) -> Statements:
    """keel_imports: how far `keel import` got with each file (by its SHA-256) for each tenant,
    so running it again resumes after the last row settled and never re-tries a refused row
    against a later state. `report` is the running ImportReport as JSON."""
    pg = sql.dialect == "postgresql"
    text, integer = ("text", "bigint") if pg else ("TEXT", "INTEGER")
    return [
        f"""CREATE TABLE IF NOT EXISTS {sql.table(IMPORTS)} (
            tenant {text} NOT NULL,
            digest {text} NOT NULL,
            rows_total {integer} NOT NULL,
            rows_done {integer} NOT NULL,
            report {text} NOT NULL,
            updated_at_ms {integer} NOT NULL,
            PRIMARY KEY (tenant, digest))""",
    ]
