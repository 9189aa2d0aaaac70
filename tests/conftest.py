"""Shared fixtures: real stores only. SQLite in a temp dir; PostgreSQL in a fresh schema.

PostgreSQL comes from KEEL_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
If no server answers, its tests are skipped with the reason, except under CI=true, where
they fail: CI must never go green without having run them.
"""
from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

# Imported before any test runs: CPython 3.11 can leave its parser's recursion counter off after a
# test provokes (and catches) a RecursionError deep in C code (hostile, deeply nested bodies), and a
# module first imported (and assertion-rewritten) after that fails with "SystemError: AST
# constructor recursion depth mismatch". schemathesis imports its OpenAPI modules lazily.
import schemathesis.specs.openapi.schemas  # noqa: E402, F401

from infrastructure.settings import Settings, load_settings
from keel.bootstrap import migrate

PG_DSN = os.environ.get("KEEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Holder keys are wrapped by a key-encryption key kept outside the database. On PostgreSQL
# nothing makes one up, so every test store gets this session's (SQLite makes its own beside
# its file). Subprocesses on a test schema that seal or reveal holders need it too.
TEST_HOLDER_KEK = "htest:" + base64.b64encode(os.urandom(32)).decode()

# CI runs a fixed set of examples (reproducible from the log alone); local runs explore anew.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None, print_blob=True)
hypothesis_settings.load_profile("ci" if IN_CI else "dev")

_pg_state: dict[str, object] = {}


def _pg_reachable() -> str | None:
    if "error" not in _pg_state:
        try:
            with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_state["error"] = None
        except Exception as e:  # noqa: BLE001 - any failure means "no server"
            _pg_state["error"] = f"{type(e).__name__}: {e}".strip()
    return _pg_state["error"]  # type: ignore[return-value]


def require_postgres() -> None:
    error = _pg_reachable()
    if error is not None:
        message = f"PostgreSQL at {PG_DSN} is not reachable ({error})"
        if IN_CI:
            pytest.fail(message + " — CI=true requires it", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_session_schemas() -> Iterator[list[str]]:
    """Every schema a test session creates; all dropped at the end."""
    created: list[str] = []
    yield created
    if created and _pg_reachable() is None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for schema in created:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fresh_pg_settings(schemas: list[str], **overrides: object) -> Settings:
    require_postgres()
    schema = f"keel_test_{uuid.uuid4().hex[:12]}"
    schemas.append(schema)
    overrides.setdefault("holder_kek", TEST_HOLDER_KEK)
    settings = load_settings({}, database_url=PG_DSN, database_schema=schema, **overrides)
    migrate(settings)
    return settings


def fresh_sqlite_settings(tmp_path: object, **overrides: object) -> Settings:
    settings = load_settings({}, database_url=f"sqlite:///{tmp_path}/keel-{uuid.uuid4().hex[:8]}.db", **overrides)
    migrate(settings)
    return settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: object, pg_session_schemas: list[str]) -> Settings:
    if request.param == "postgres":
        return fresh_pg_settings(pg_session_schemas)
    return fresh_sqlite_settings(tmp_path)


@pytest.fixture
def pg_settings(pg_session_schemas: list[str]) -> Settings:
    return fresh_pg_settings(pg_session_schemas)
