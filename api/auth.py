"""Bearer API keys, roles and tenancy for every route.

How other routers use it:

    from api.auth import Principal, require_roles, principal_of

    router = Router(path="/v1/audit", guards=[require_roles("auditor")], route_handlers=[...])

    @get("/thing")
    async def thing(request: Request) -> ...:
        p: Principal = principal_of(request)   # key_id, role, tenant (tenant set for banking)

- The middleware authenticates every request except PUBLIC_PATHS: a missing, malformed, unknown
  or revoked token is 401 `unauthorized`; it then applies the per-key rate limit (429).
- `require_roles(*roles)` is a Litestar guard: another role is 403 `forbidden`. Every /v1 route
  must carry one: tests/e2e/test_banking_api.py walks the app's routes and sends every other
  role to each route, expecting 403.
- A banking key sees only its tenant: look objects up with `tenant=principal.tenant` and answer
  404 for another tenant's object (the ledger's queries and commands already do this).

Tokens are compared in constant time (hmac.compare_digest over the SHA-256 hash). A verified
key is cached per process for `KEY_CACHE_TTL_S`, so a revocation takes effect within that time
(plus `KEY_REFRESH_GRACE_S` while the first request after expiry looks it up again).
This module must never log a token or a secret.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp, Receive, Scope, Send

from api.errors import PROBLEM_MEDIA_TYPE, problem_body
from infrastructure.keys import ApiKey, parse_token, secret_matches

KEY_CACHE_TTL_S = 5.0
KEY_REFRESH_GRACE_S = 2.0
KEY_CACHE_MAX = 10_000
# /oauth/token authenticates its clients itself (RFC 6749 §2.3.1); the JWKS is public by design.
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/oauth/token", "/.well-known/jwks.json"}
PUBLIC_PREFIXES = ("/schema",)


class Principal(msgspec.Struct, frozen=True):
    key_id: str
    role: str
    tenant: str | None


class KeyCache:
    """Stored keys (or their absence) by key id, for `ttl_s`; the secret is checked on every request.

    When an entry expires, the first request to notice looks the key up again; requests meanwhile
    keep the expired answer for at most `grace_s` instead of all queueing on the store (at 2,000
    requests/s every expiry sent dozens of identical lookups to worker threads). A revocation
    therefore takes effect within ttl_s + grace_s.
    """

    def __init__(self, lookup: Callable[[str], ApiKey | None], ttl_s: float = KEY_CACHE_TTL_S, grace_s: float = KEY_REFRESH_GRACE_S) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._grace_s = grace_s
        self._lock = threading.Lock()
        # key_id -> (expires_at, ApiKey | None)
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._refreshing: set[str] = set()

    def get(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            key = self._lookup(key_id)
        except BaseException:
            with self._lock:
                self._refreshing.discard(key_id)
            raise
        with self._lock:
            self._refreshing.discard(key_id)
            if len(self._entries) >= KEY_CACHE_MAX:
                self._entries.clear()
            self._entries[key_id] = (now + self._ttl_s, key)
        return key

    def cached(self, key_id: str) -> tuple[bool, ApiKey | None]:
        """(True, key) when the cache answers; (False, None): call `get` (off the event loop)."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key_id)
            if hit is None:
                return False, None
            if hit[0] > now:
                return True, hit[1]
            if key_id not in self._refreshing:
                self._refreshing.add(key_id)  # this caller refreshes it
                return False, None
            if hit[0] + self._grace_s > now:
                return True, hit[1]
            return False, None


class TokenBucket:
    """Per-key token buckets: `rate_per_s` sustained, bursts of `burst`. Process-local."""

    BUCKETS_MAX = 100_000

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            tokens, updated = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate_per_s)
            if tokens >= 1:
                if len(self._buckets) >= self.BUCKETS_MAX:
                    self._buckets.clear()
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate_per_s


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return parse_bearer(connection.headers.get("authorization"))


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _verified(key: ApiKey | None, secret: str) -> Principal | None:
    if key is None or key.revoked or not secret_matches(key, secret):
        return None
    return Principal(key_id=key.key_id, role=key.role, tenant=key.tenant)


def cached_principal(cache: KeyCache, authorization: str | None) -> Principal | None:
    """The caller when its key is cached and the token verifies; None when it is not (unknown,
    not cached, malformed): then KeyAuthMiddleware decides, with the store and its 401s."""
    token = parse_bearer(authorization)
    parsed = parse_token(token) if token is not None else None
    if parsed is None:
        return None
    key_id, secret = parsed
    found, key = cache.cached(key_id)
    return _verified(key, secret) if found else None


def is_public_path(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_is_public = is_public_path


class KeyAuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates with the key cache in `app.state.api_keys`, then rate-limits by key id."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        token = bearer_token(connection)
        if token is None:
            raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)")
        parsed = parse_token(token)
        if parsed is None:
            # Not an API key: an OAuth access token (api/jwt_auth.py), when OAuth is configured.
            jwt = connection.app.state.get("jwt")
            principal = await jwt.principal(token) if jwt is not None and token.count(".") == 2 else None
            if principal is None:
                raise NotAuthorizedException("invalid API key or access token")
            return AuthenticationResult(user=principal, auth=principal.key_id)
        key_id, secret = parsed
        cache: KeyCache = connection.app.state.api_keys
        found, key = cache.cached(key_id)
        if not found:
            # The store is synchronous (psycopg/sqlite): never block the event loop on it.
            key = await anyio.to_thread.run_sync(cache.get, key_id)
        principal = _verified(key, secret)
        if principal is None:
            raise NotAuthorizedException("invalid API key")
        return AuthenticationResult(user=principal, auth=principal.key_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


# Set in the scope by a fast path that already took this request's token before handing the
# request to Litestar (api/fastpath_reads.py): one request, one token.
RATE_CHARGED = "keel.rate_charged"


class RateLimitMiddleware:
    """After authentication: one token per request from the key's bucket, else 429."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("user")
        bucket: TokenBucket | None = scope["app"].state.get("rate_limiter")
        if isinstance(principal, Principal) and bucket is not None and not scope.get(RATE_CHARGED):
            wait_s = bucket.take(principal.key_id)
            if wait_s > 0:
                retry_after = str(max(1, int(wait_s + 0.999)))
                status, body = problem_body("rate_limited", "too many requests for this API key")
                headers = [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", retry_after.encode()),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def principal_of(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = request.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException("missing bearer token")
    return user


def require_roles(*roles: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Any]:
    """A guard allowing only keys with one of `roles`."""
    allowed = frozenset(roles)

    # async: Litestar runs a sync guard in a worker thread — a thread hop on every request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if principal.role not in allowed:
            raise PermissionDeniedException(f"this route needs the role {' or '.join(sorted(allowed))}")

    guard.__name__ = f"require_roles_{'_'.join(sorted(allowed))}"
    guard.roles = allowed  # type: ignore[attr-defined] - read by the test that every route has a role
    return guard


def banking_tenant(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    principal = principal_of(request)
    if principal.role != "banking" or not principal.tenant:
        raise PermissionDeniedException("this route needs a banking key")
    return principal.tenant
