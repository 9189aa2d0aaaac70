"""API keys: creation, storage and lookup. Only a SHA-256 hash of each secret is stored.

A token is `keel_<key_id>_<secret>`; `key_id` is public (it names the key in logs and scopes
idempotency keys), the secret is shown once by `keel keys create` and never stored. This module
must never log or return a token or a secret after creation.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import msgspec

from infrastructure.schema import API_KEYS
from infrastructure.sql import Sql

ROLES = ("banking", "auditor", "analyst", "admin")
TOKEN_PREFIX = "keel_"
KEY_ID_HEX_CHARS = 16
SECRET_BYTES = 32
TENANT_MAX_CHARS = 64  # same bound as domain.account's tenant check
TOKEN_MAX_CHARS = 200


class KeyError_(ValueError):
    """A key cannot be created as asked (bad role or tenant)."""


class ApiKey(msgspec.Struct, frozen=True):
    key_id: str
    token_hash: str
    role: str
    tenant: str | None
    created_at_ms: int
    revoked: bool


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None. Never raises on client input."""
    if len(token) > TOKEN_MAX_CHARS or not token.startswith(TOKEN_PREFIX):
        return None
    rest = token[len(TOKEN_PREFIX) :]
    key_id, sep, secret = rest.partition("_")
    if not sep or len(key_id) != KEY_ID_HEX_CHARS or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def secret_matches(key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(key.token_hash, hash_secret(secret))


def new_key(role: str, tenant: str | None) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the token exists)."""
    if role not in ROLES:
        raise KeyError_(f"role must be one of {', '.join(ROLES)}")
    if role == "banking" and not tenant:
        raise KeyError_("a banking key needs --tenant")
    if tenant is not None and not 1 <= len(tenant) <= TENANT_MAX_CHARS:
        raise KeyError_(f"tenant must be 1..{TENANT_MAX_CHARS} characters")
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    key = ApiKey(
        key_id=key_id,
        token_hash=hash_secret(secret),
        role=role,
        tenant=tenant,
        created_at_ms=int(time.time() * 1000),
        revoked=False,
    )
    return key, f"{TOKEN_PREFIX}{key_id}_{secret}"


class SqlKeyStore:
    """The API keys of this deployment, in `keel_api_keys` (infrastructure/schema.py)."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        table = sql.table(API_KEYS)
        self._get = f"SELECT key_id, token_hash, role, tenant, created_at_ms, revoked FROM {table} WHERE key_id = %s"
        self._insert = (
            f"INSERT INTO {table} (key_id, token_hash, role, tenant, created_at_ms, revoked) VALUES (%s, %s, %s, %s, %s, %s)"
        )
        self._revoke = f"UPDATE {table} SET revoked = %s WHERE key_id = %s"

    def get(self, key_id: str) -> ApiKey | None:
        row = self.sql.fetchone(self._get, (key_id,))
        return _key(row) if row else None

    def add(self, key: ApiKey) -> None:
        self.sql.execute(self._insert, (key.key_id, key.token_hash, key.role, key.tenant, key.created_at_ms, key.revoked))

    def revoke(self, key_id: str) -> bool:
        return self.sql.execute(self._revoke, (True, key_id)) == 1


def _key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row[0], token_hash=row[1], role=row[2], tenant=row[3], created_at_ms=int(row[4]), revoked=bool(row[5])
    )
