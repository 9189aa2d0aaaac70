"""Fixtures for the audit tests: a real store (SQLite file or fresh PostgreSQL schema) with an
audit signing key, and raw SQL access to that store for tampering with it directly."""
from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from application.commands import Deposit, MakeTransfer, OpenAccount
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from tests.conftest import PG_DSN, fresh_pg_settings, fresh_sqlite_settings

T = "tenant-a"


def signing_key_b64() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def make_settings(kind: str, tmp_path: Any, schemas: list[str], **overrides: Any) -> Settings:
    overrides.setdefault("audit_signing_key", signing_key_b64())
    if kind == "postgres":
        return fresh_pg_settings(schemas, **overrides)
    return fresh_sqlite_settings(tmp_path, **overrides)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def asettings(store_kind: str, tmp_path: Any, pg_session_schemas: list[str]) -> Settings:
    return make_settings(store_kind, tmp_path, pg_session_schemas)


@pytest.fixture
def ac(asettings: Settings) -> Iterator[Container]:
    container = build(asettings)
    yield container
    container.close()


class Raw:
    """Direct SQL on the store, bypassing the application: the tamperer's view."""

    def __init__(self, settings: Settings) -> None:
        self.pg = settings.is_postgres
        self.pos = "notification_id" if self.pg else "rowid"
        if self.pg:
            self.conn: Any = psycopg.connect(PG_DSN, autocommit=True)
            self.conn.execute(f'SET search_path TO "{settings.database_schema}"')
        else:
            self.conn = sqlite3.connect(settings.sqlite_path, isolation_level=None)

    def q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(sql.replace("?", "%s") if self.pg else sql, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def raw(asettings: Settings) -> Iterator[Raw]:
    r = Raw(asettings)
    yield r
    r.close()


def make_history(c: Container, transfers: int = 10) -> tuple[Any, Any]:
    a = c.writer.execute(OpenAccount(tenant=T, currency="USD", holder={"name": "Alice Example", "email": "alice@example.com"}))
    b = c.writer.execute(OpenAccount(tenant=T, currency="USD"))
    c.writer.execute(Deposit(tenant=T, account_id=a.id, amount_minor=10_000, currency="USD"))
    futures = [
        c.writer.submit(MakeTransfer(tenant=T, debit_account_id=a.id, credit_account_id=b.id, amount_minor=7, currency="USD"))
        for _ in range(transfers)
    ]
    for f in futures:
        f.result(timeout=30)
    return a.id, b.id
