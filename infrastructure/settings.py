"""Settings: one msgspec Struct, parsed once from the environment by the composition root.

No other module reads `os.environ`. Every variable is listed in `ENV_VARS`, which the
docker-compose test checks against.
"""
from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlparse

import msgspec

DEFAULT_DATABASE_URL = "sqlite:///./var/keel.db"


class SettingsError(ValueError):
    pass


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
    data_key: str | None = None  # base64 AES key(s) for events at rest, "id:key,id:key", newest first
    group_commit_window_ms: int = 1
    group_commit_batch_max: int = 2000
    group_commit_queue_max: int = 100_000
    pg_pool_size: int = 8
    log_level: str = "INFO"
    # Requests per second per API key (token bucket; bursts up to 2 s worth). 0 disables it.
    rate_limit_per_s: float = 10_000.0

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> str:
        if not self.database_url.startswith("sqlite:///"):
            raise SettingsError("not a sqlite URL")
        return self.database_url[len("sqlite:///") :]

    def postgres(self) -> PostgresParams:
        u = urlparse(self.database_url)
        return PostgresParams(
            host=u.hostname or "127.0.0.1",
            port=u.port or 5432,
            user=unquote(u.username or "postgres"),
            password=unquote(u.password or ""),
            dbname=(u.path or "/postgres").lstrip("/") or "postgres",
            schema=self.database_schema,
        )


# env var -> settings field
ENV_VARS: dict[str, str] = {
    "KEEL_DATABASE_URL": "database_url",
    "KEEL_DATABASE_SCHEMA": "database_schema",
    "KEEL_DATA_KEY": "data_key",
    "KEEL_GROUP_COMMIT_WINDOW_MS": "group_commit_window_ms",
    "KEEL_GROUP_COMMIT_BATCH_MAX": "group_commit_batch_max",
    "KEEL_GROUP_COMMIT_QUEUE_MAX": "group_commit_queue_max",
    "KEEL_PG_POOL_SIZE": "pg_pool_size",
    "KEEL_LOG_LEVEL": "log_level",
    "KEEL_RATE_LIMIT_PER_S": "rate_limit_per_s",
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
        raise SettingsError(f"invalid settings: {e}") from None
    if not (settings.is_postgres or settings.database_url.startswith("sqlite:///")):
        raise SettingsError("KEEL_DATABASE_URL must start with sqlite:/// or postgresql://")
    if not settings.database_schema.replace("_", "").isalnum():
        raise SettingsError("KEEL_DATABASE_SCHEMA must be letters, digits and underscores")
    return settings
