"""Settings: one msgspec Struct, parsed once from the environment by the composition root.

No other module reads `os.environ`. Every variable is listed in `ENV_VARS`, which the
docker-compose test checks against. Secrets may come from files (`*_FILE`), so that neither
the environment nor `docker inspect` shows them; this module reads the password file once.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlparse

import msgspec

DEFAULT_DATABASE_URL = "sqlite:///./var/keel.db"
# Per API key and process: sustained requests/s; bursts default to RATE_LIMIT_BURST_S worth.
DEFAULT_RATE_LIMIT_PER_S = 100.0
RATE_LIMIT_BURST_S = 2.0
PASSWORD_FILE_MAX_BYTES = 4096
SECRET_FIELDS = frozenset({"database_password", "data_key", "holder_kek", "audit_signing_key", "fraud_model_key"})


class SettingsError(ValueError):
    """The configuration is wrong: the message names the setting or command that fixes it
    (the command line exits 2)."""


class StoreUnreachable(RuntimeError):
    """The configured store does not answer now (server down, timeout): a runtime failure (exit 1)."""


class PostgresParams(msgspec.Struct, frozen=True):
    host: str
    port: int
    user: str
    password: str
    dbname: str
    schema: str


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = DEFAULT_DATABASE_URL
    # Postgres schema for every table of ours (tests use a fresh one per session).
    database_schema: str = "public"
    # A file holding the PostgreSQL password (a Docker secret); it replaces the URL's password.
    database_password_file: str | None = None
    # Read from database_password_file by load_settings; never an environment variable.
    database_password: str | None = None
    data_key: str | None = None  # base64 AES key(s) for events at rest, "id:key,id:key", newest first
    # A file of data keys, one "id:base64key" per line, newest first (`keel keys rotate-data-key`).
    # Its keys come after KEEL_DATA_KEY's, so an explicit env key still encrypts. On the embedded
    # SQLite store, when neither is set, `<directory of the SQLite file>/data-keys` is made on
    # first start (infrastructure/audit_keys.py): events are encrypted at rest by default.
    data_key_file: str | None = None
    # Key-encryption keys (KEKs) that wrap the per-holder keys of keel_holder_keys: "id:base64"
    # (32-byte keys), newest first, as for data keys, and/or a file of them. On SQLite, when
    # neither is set, `<directory of the SQLite file>/holder-kek` is made on first start; on
    # PostgreSQL `keel serve` refuses to start without one (the KEK must live outside the database).
    holder_kek: str | None = None
    holder_kek_file: str | None = None
    # Ed25519 key that signs audit checkpoints: a PEM file (`keel keys audit-init`) or base64 of
    # the 32-byte private key. Without one, checkpoints cannot be made (verification still runs).
    audit_signing_key_file: str | None = None
    audit_signing_key: str | None = None
    audit_checkpoint_interval_s: float = 60.0
    # Public keys (64 hex chars each, comma-separated) that verify checkpoints besides the signing
    # key's own: for processes that verify without the private key, and for retired signing keys.
    audit_public_keys: str | None = None
    # A file holding one more such public key (PEM, or 64 hex chars): `keel keys audit-init`
    # writes it beside the private key (.pub); compose hands it to every process as a secret.
    audit_public_key_file: str | None = None
    group_commit_window_ms: int = 1
    group_commit_batch_max: int = 2000
    group_commit_queue_max: int = 100_000
    pg_pool_size: int = 8
    log_level: str = "INFO"
    # "plain" (one line per record) or "json" (one JSON object per line); uvicorn's records too.
    log_format: str = "plain"
    # Tracebacks for command-line failures (also `keel --debug`); otherwise one or two lines.
    debug: bool = False
    # Requests per second per API key and process (token bucket). 0 disables it.
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S
    # The bucket's size; unset: RATE_LIMIT_BURST_S seconds' worth (200 at the default rate).
    rate_limit_burst: float | None = None
    # fraud scoring (fraud/): where signed models live, the signing key, level thresholds
    fraud_model_dir: str = "./var/fraud"
    fraud_model_key: str | None = None  # base64, >= 16 bytes; default: a 0600 key file in fraud_model_dir
    # None: the levels stored with the model (chosen by policy when it was trained, fraud/training.py)
    fraud_elevated_threshold: float | None = None
    fraud_high_threshold: float | None = None
    fraud_poll_interval_ms: int = 20
    # real time (docs/realtime.md): webhook hosts that may be http:// and resolve to private or
    # loopback addresses (comma-separated; for receivers inside your own network and for tests)
    webhook_allow_hosts: str | None = None
    webhook_concurrency: int = 8  # webhooks `keel worker webhooks` delivers to at once
    sse_streams_per_key: int = 5  # open GET /v1/events/stream per API key or client, per process
    # OAuth 2.0 access tokens: the Ed25519 signing keys (one `kid:base64` per line, newest first;
    # the embedded store makes `jwt-keys` beside its database), issuer, audience and lifetime
    jwt_keys_file: str | None = None
    jwt_issuer: str = "keel"
    jwt_audience: str = "keel-api"
    jwt_lifetime_s: int = 900

    @property
    def webhook_allowed_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower().rstrip(".") for h in (self.webhook_allow_hosts or "").split(",") if h.strip())

    def __repr__(self) -> str:
        # Settings end up in tracebacks and test reports: never with a key or a password in them.
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value is not None:
                value = "<redacted>"
            elif name == "database_url":
                value = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1<redacted>@", value)
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def effective_rate_limit_burst(self) -> float:
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1.0, self.rate_limit_per_s * RATE_LIMIT_BURST_S)

    @property
    def sqlite_path(self) -> str:
        if not self.database_url.startswith("sqlite:///"):
            raise SettingsError("not a sqlite URL")
        return self.database_url[len("sqlite:///") :]

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database's absolute file path (None for an in-memory database). Every key
        file the embedded store makes for itself lives in this file's directory."""
        path = self.sqlite_path
        if ":memory:" in path or "mode=memory" in path:
            return None
        if path.startswith("file:"):
            path = path[len("file:") :].split("?", 1)[0]
        return os.path.abspath(path)

    def postgres(self) -> PostgresParams:
        u = urlparse(self.database_url)
        return PostgresParams(
            host=u.hostname or "127.0.0.1",
            port=u.port or 5432,
            user=unquote(u.username or "postgres"),
            password=self.database_password if self.database_password is not None else unquote(u.password or ""),
            dbname=(u.path or "/postgres").lstrip("/") or "postgres",
            schema=self.database_schema,
        )


# env var -> settings field
ENV_VARS: dict[str, str] = {
    "KEEL_DATABASE_URL": "database_url",
    "KEEL_DATABASE_SCHEMA": "database_schema",
    "KEEL_DATABASE_PASSWORD_FILE": "database_password_file",
    "KEEL_DATA_KEY": "data_key",
    "KEEL_DATA_KEY_FILE": "data_key_file",
    "KEEL_HOLDER_KEK": "holder_kek",
    "KEEL_HOLDER_KEK_FILE": "holder_kek_file",
    "KEEL_AUDIT_SIGNING_KEY_FILE": "audit_signing_key_file",
    "KEEL_AUDIT_SIGNING_KEY": "audit_signing_key",
    "KEEL_AUDIT_CHECKPOINT_INTERVAL_S": "audit_checkpoint_interval_s",
    "KEEL_AUDIT_PUBLIC_KEYS": "audit_public_keys",
    "KEEL_AUDIT_PUBLIC_KEY_FILE": "audit_public_key_file",
    "KEEL_GROUP_COMMIT_WINDOW_MS": "group_commit_window_ms",
    "KEEL_GROUP_COMMIT_BATCH_MAX": "group_commit_batch_max",
    "KEEL_GROUP_COMMIT_QUEUE_MAX": "group_commit_queue_max",
    "KEEL_PG_POOL_SIZE": "pg_pool_size",
    "KEEL_LOG_LEVEL": "log_level",
    "KEEL_LOG_FORMAT": "log_format",
    "KEEL_DEBUG": "debug",
    "KEEL_RATE_LIMIT_PER_S": "rate_limit_per_s",
    "KEEL_RATE_LIMIT_BURST": "rate_limit_burst",
    "KEEL_FRAUD_MODEL_DIR": "fraud_model_dir",
    "KEEL_FRAUD_MODEL_KEY": "fraud_model_key",
    "KEEL_FRAUD_ELEVATED_THRESHOLD": "fraud_elevated_threshold",
    "KEEL_FRAUD_HIGH_THRESHOLD": "fraud_high_threshold",
    "KEEL_FRAUD_POLL_INTERVAL_MS": "fraud_poll_interval_ms",
    "KEEL_WEBHOOK_ALLOW_HOSTS": "webhook_allow_hosts",
    "KEEL_WEBHOOK_CONCURRENCY": "webhook_concurrency",
    "KEEL_SSE_STREAMS_PER_KEY": "sse_streams_per_key",
    "KEEL_JWT_KEYS_FILE": "jwt_keys_file",
    "KEEL_JWT_ISSUER": "jwt_issuer",
    "KEEL_JWT_AUDIENCE": "jwt_audience",
    "KEEL_JWT_LIFETIME_S": "jwt_lifetime_s",
}


def load_settings(environ: Mapping[str, str], **overrides: object) -> Settings:
    raw: dict[str, object] = {}
    for var, field in ENV_VARS.items():
        if var in environ and environ[var] != "":
            raw[field] = environ[var]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, type=Settings, strict=False)
    except msgspec.ValidationError as e:
        message = str(e)
        for var, field in ENV_VARS.items():  # name the variable, not the struct field
            if message.endswith(f"`$.{field}`"):
                message = f"{var}: " + message.rsplit(" - at ", 1)[0]
                break
        raise SettingsError(f"invalid setting {message}") from None
    check_database_url(settings.database_url)
    if settings.log_format not in LOG_FORMATS:
        raise SettingsError(f"KEEL_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {settings.log_format!r}")
    if settings.log_level.upper() not in LOG_LEVELS:
        raise SettingsError(f"KEEL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {settings.log_level!r}")
    if not settings.database_schema.replace("_", "").isalnum():
        raise SettingsError("KEEL_DATABASE_SCHEMA must be letters, digits and underscores")
    if settings.rate_limit_per_s < 0 or (settings.rate_limit_burst is not None and settings.rate_limit_burst < 1):
        raise SettingsError("KEEL_RATE_LIMIT_PER_S must be >= 0 (0: off) and KEEL_RATE_LIMIT_BURST >= 1")
    if settings.database_password_file and settings.database_password is None:
        settings = msgspec.structs.replace(settings, database_password=_read_password(settings.database_password_file))
    if not 1 <= settings.webhook_concurrency <= 256 or not 1 <= settings.sse_streams_per_key <= 1000:
        raise SettingsError("KEEL_WEBHOOK_CONCURRENCY must be 1..256 and KEEL_SSE_STREAMS_PER_KEY 1..1000")
    if not 60 <= settings.jwt_lifetime_s <= 86_400 or not settings.jwt_issuer or not settings.jwt_audience:
        raise SettingsError("KEEL_JWT_LIFETIME_S must be 60..86400 s; KEEL_JWT_ISSUER and KEEL_JWT_AUDIENCE non-empty")
    levels = [t for t in (settings.fraud_elevated_threshold, settings.fraud_high_threshold) if t is not None]
    if not all(0.0 < t <= 1.0 for t in levels) or (len(levels) == 2 and levels[0] > levels[1]):
        raise SettingsError("fraud thresholds must satisfy 0 < KEEL_FRAUD_ELEVATED_THRESHOLD <= KEEL_FRAUD_HIGH_THRESHOLD <= 1")
    return settings


LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
URL_EXAMPLES = "sqlite:///./var/keel.db or postgresql://user@host:5432/dbname"


def check_database_url(url: str) -> None:
    """A URL we can open, or a SettingsError naming what is wrong with it (never the password)."""
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///") :].strip():
            raise SettingsError(f"KEEL_DATABASE_URL {url!r} names no file: e.g. {URL_EXAMPLES}")
        return
    if not url.startswith(("postgresql://", "postgres://")):
        shown = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1<redacted>@", url)
        raise SettingsError(f"KEEL_DATABASE_URL {shown!r} is neither sqlite:/// nor postgresql://: e.g. {URL_EXAMPLES}")
    u = urlparse(url)
    shown = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1<redacted>@", url)
    try:
        port = u.port
    except ValueError:
        raise SettingsError(f"KEEL_DATABASE_URL {shown!r}: the port is not a number 1..65535") from None
    if port == 0:
        raise SettingsError(f"KEEL_DATABASE_URL {shown!r}: the port is not a number 1..65535")
    if not u.hostname:
        raise SettingsError(f"KEEL_DATABASE_URL {shown!r} names no host: e.g. {URL_EXAMPLES}")
    if u.query or u.fragment or u.params:
        raise SettingsError(f"KEEL_DATABASE_URL {shown!r}: query parameters are not supported (use KEEL_DATABASE_SCHEMA, KEEL_DATABASE_PASSWORD_FILE)")


def _read_password(path: str) -> str:
    """The password in a file (a Docker secret), without its line end, as the postgres image reads it."""
    try:
        with open(path, "rb") as f:
            data = f.read(PASSWORD_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise SettingsError(f"KEEL_DATABASE_PASSWORD_FILE: cannot read {path} ({e.strerror})") from None
    if len(data) > PASSWORD_FILE_MAX_BYTES:
        raise SettingsError(f"KEEL_DATABASE_PASSWORD_FILE: {path} is over {PASSWORD_FILE_MAX_BYTES} bytes")
    return data.decode().rstrip("\r\n")
