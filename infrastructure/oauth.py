"""OAuth 2.0 client credentials: clients (`keel_oauth_clients`, only a SHA-256 of each secret, like
API keys), the Ed25519 keys that sign access tokens, and the tokens themselves (JWT, EdDSA).

Tokens are made and checked by PyJWT (with `cryptography`), never by hand: `verify()` accepts only
EdDSA signed by a key of ours named by `kid`, with our issuer and audience, and `exp`, `iat`, `nbf`,
`sub`, `jti`, `role` present — so `alg: none`, HS256 "signed" with the public key, another audience,
an expired or not yet valid token, or a tampered payload all fail.

Signing keys: a key file, one `kid:base64(32-byte Ed25519 seed)` per line, newest first
(`KEEL_JWT_KEYS_FILE`; the embedded store makes `jwt-keys` beside its database on first start).
The newest signs; every key verifies and is published at /.well-known/jwks.json, so rotation
(`keel keys rotate-jwt-key` prepends a key) breaks no live token; running processes re-read the
file within KEYS_RELOAD_S. This module never logs a secret or a token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
import uuid
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infrastructure.audit_keys import (
    create_key_file,
    default_key_file,
    parse_key_entries,
    prepend_key_file,
    read_key_file,
    tighten_key_file,
)
from infrastructure.keys import ROLES, TENANT_MAX_CHARS
from infrastructure.schema import OAUTH_CLIENTS
from infrastructure.settings import Settings, SettingsError
from infrastructure.sql import Sql

ALGORITHM = "EdDSA"
CLIENT_PREFIX = "kc_"
CLIENT_ID_HEX_CHARS = 16
SECRET_BYTES = 32
SECRET_MAX_CHARS = 128
TOKEN_MAX_CHARS = 2048
KEYS_RELOAD_S = 5.0
CLOCK_SKEW_S = 30  # leeway for exp/nbf/iat between hosts
KEY_BYTES = 32
JWT_KEYS_FILE = "jwt-keys"


class ClientError(ValueError):
    """A client cannot be created as asked (bad role or tenant)."""


class OAuthClient(msgspec.Struct, frozen=True):
    client_id: str
    secret_hash: str
    role: str
    tenant: str | None
    created_at_ms: int
    revoked: bool


class TokenClaims(msgspec.Struct, frozen=True):
    """What a verified access token says about its caller."""

    client_id: str
    role: str
    tenant: str | None
    expires_at: int


class InvalidToken(Exception):
    """Not a valid access token of this deployment (the reason is for logs, never for the client)."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_client(role: str, tenant: str | None) -> tuple[OAuthClient, str]:
    """A new client and its secret (the only time the secret exists)."""
    if role not in ROLES:
        raise ClientError(f"role must be one of {', '.join(ROLES)}")
    if role == "banking" and not tenant:
        raise ClientError("a banking client needs --tenant")
    if tenant is not None and not 1 <= len(tenant) <= TENANT_MAX_CHARS:
        raise ClientError(f"tenant must be 1..{TENANT_MAX_CHARS} characters")
    client_id = CLIENT_PREFIX + secrets.token_hex(CLIENT_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    client = OAuthClient(client_id, _hash(secret), role, tenant, int(time.time() * 1000), False)
    return client, secret


def well_formed_client_id(client_id: str) -> bool:
    body = client_id[len(CLIENT_PREFIX) :]
    return client_id.startswith(CLIENT_PREFIX) and len(body) == CLIENT_ID_HEX_CHARS and all(c in "0123456789abcdef" for c in body)


def secret_matches(client: OAuthClient, secret: str) -> bool:
    return len(secret) <= SECRET_MAX_CHARS and hmac.compare_digest(client.secret_hash, _hash(secret))


class SqlClientStore:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        t = sql.table(OAUTH_CLIENTS)
        self._get = f"SELECT client_id, secret_hash, role, tenant, created_at_ms, revoked FROM {t} WHERE client_id = %s"
        self._insert = (
            f"INSERT INTO {t} (client_id, secret_hash, role, tenant, created_at_ms, revoked) VALUES (%s, %s, %s, %s, %s, %s)"
        )
        self._revoke = f"UPDATE {t} SET revoked = %s WHERE client_id = %s"

    def get(self, client_id: str) -> OAuthClient | None:
        if not well_formed_client_id(client_id):
            return None
        row = self.sql.fetchone(self._get, (client_id,))
        if row is None:
            return None
        return OAuthClient(row[0], row[1], row[2], row[3], int(row[4]), bool(row[5]))

    def add(self, client: OAuthClient) -> None:
        c = client
        self.sql.execute(self._insert, (c.client_id, c.secret_hash, c.role, c.tenant, c.created_at_ms, c.revoked))

    def revoke(self, client_id: str) -> bool:
        return self.sql.execute(self._revoke, (True, client_id)) == 1


# ---- signing keys ----------------------------------------------------------------------------------


def jwt_keys_file(settings: Settings) -> str | None:
    """KEEL_JWT_KEYS_FILE, else the embedded store's own (made on first use); None: OAuth is off."""
    if settings.jwt_keys_file:
        if not os.path.exists(settings.jwt_keys_file):
            raise SettingsError(
                f"KEEL_JWT_KEYS_FILE names {settings.jwt_keys_file}, which does not exist"
                f" (`keel keys rotate-jwt-key --file {settings.jwt_keys_file}` makes one)"
            )
        return settings.jwt_keys_file
    path = default_key_file(settings, JWT_KEYS_FILE)
    if path is not None:
        if not os.path.exists(path):
            create_key_file(path, new_jwt_key_entry())
        tighten_key_file(path)
    return path


def new_jwt_key_entry() -> str:
    return f"jwt-{secrets.token_hex(4)}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def rotate_jwt_key(path: str) -> str:
    """Puts a new signing key first in `path` (made if missing); returns its key id."""
    entry = new_jwt_key_entry()
    prepend_key_file(path, entry)
    return entry.partition(":")[0]


class SigningKeys:
    """The key file's keys, re-read when the file changes (at most every KEYS_RELOAD_S)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime = -1.0
        self._keys: list[tuple[str, Ed25519PrivateKey]] = []
        self._load()

    def _load(self) -> None:
        mtime = os.stat(self.path).st_mtime
        if mtime == self._mtime:
            return
        entries = parse_key_entries(read_key_file(self.path), "KEEL_JWT_KEYS_FILE", KEY_BYTES)
        if not entries:
            raise SettingsError(f"{self.path}: no JWT signing key in it")
        self._keys = [(kid, Ed25519PrivateKey.from_private_bytes(raw)) for kid, raw in entries]
        self._mtime = mtime

    def keys(self) -> list[tuple[str, Ed25519PrivateKey]]:
        now = time.monotonic()
        if now - self._checked >= KEYS_RELOAD_S:
            with self._lock:
                if now - self._checked >= KEYS_RELOAD_S:
                    self._checked = now
                    try:
                        self._load()
                    except (OSError, SettingsError):
                        pass  # a half-written or vanished file: keep the keys we have
        return self._keys

    def public(self, kid: str) -> Ed25519PublicKey | None:
        for k, private in self.keys():
            if k == kid:
                return private.public_key()
        return None


class TokenService:
    """Issues and verifies access tokens for clients of `clients`."""

    def __init__(self, clients: SqlClientStore, keys: SigningKeys | None, *, issuer: str, audience: str,
                 lifetime_s: int) -> None:  # fmt: skip
        self.clients = clients
        self.signing = keys
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s

    @property
    def enabled(self) -> bool:
        return self.signing is not None

    def authenticate(self, client_id: str, secret: str) -> OAuthClient | None:
        client = self.clients.get(client_id)
        if client is None or client.revoked or not secret_matches(client, secret):
            return None
        return client

    def issue(self, client: OAuthClient, now_s: int | None = None) -> tuple[str, int]:
        """(access token, lifetime in seconds)."""
        assert self.signing is not None, "OAuth is not configured"
        kid, key = self.signing.keys()[0]
        now_s = int(time.time()) if now_s is None else now_s
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": client.client_id, "aud": self.audience, "iat": now_s, "nbf": now_s,
            "exp": now_s + self.lifetime_s, "jti": str(uuid.uuid4()), "role": client.role, "tenant": client.tenant,
        }  # fmt: skip
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid}), self.lifetime_s

    def verify(self, token: str) -> TokenClaims:
        if self.signing is None:
            raise InvalidToken("OAuth is not configured")
        if len(token) > TOKEN_MAX_CHARS:
            raise InvalidToken("too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(type(e).__name__) from None
        kid = header.get("kid")
        public = self.signing.public(kid) if isinstance(kid, str) else None
        if public is None or header.get("alg") != ALGORITHM:
            raise InvalidToken("unknown key or algorithm")
        try:
            claims = jwt.decode(
                token, public, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer, leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )  # fmt: skip
        except jwt.PyJWTError as e:
            raise InvalidToken(type(e).__name__) from None
        role, tenant, sub = claims.get("role"), claims.get("tenant"), claims.get("sub")
        if role not in ROLES or not isinstance(sub, str) or not (tenant is None or isinstance(tenant, str)):
            raise InvalidToken("bad claims")
        if role == "banking" and not tenant:
            raise InvalidToken("a banking token without a tenant")
        return TokenClaims(client_id=sub, role=role, tenant=tenant, expires_at=int(claims["exp"]))

    def jwks(self) -> dict[str, Any]:
        """The public keys, RFC 7517/8037 (OKP, Ed25519), newest first."""
        keys = []
        for kid, private in (self.signing.keys() if self.signing is not None else []):
            raw = private.public_key().public_bytes_raw()
            x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            keys.append({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": keys}


def token_service(settings: Settings, sql: Sql) -> TokenService:
    path = jwt_keys_file(settings)
    keys = SigningKeys(path) if path is not None else None
    return TokenService(SqlClientStore(sql), keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                        lifetime_s=settings.jwt_lifetime_s)  # fmt: skip
