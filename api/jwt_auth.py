"""OAuth 2.0 access tokens (JWTs) as bearer credentials, beside API keys.

`KeyAuthMiddleware` (api/auth.py) hands any bearer token that is not an API key (`keel_…`) to
`JwtAuthenticator.principal`: the token is verified by infrastructure/oauth.py (EdDSA, our keys,
issuer, audience, times) and its client looked up — cached like API keys, so revoking a client
(`keel clients revoke`) stops its live tokens within the cache's lifetime, not only at expiry. The
caller then has the token's role and tenant, with exactly the rules of an API key of that role;
its `key_id` is the client id (rate limits, Idempotency-Key scope, access log).
This module never logs a token.
"""
from __future__ import annotations

import logging

import anyio

from api.auth import KeyCache, Principal
from infrastructure.oauth import InvalidToken, OAuthClient, TokenService

log = logging.getLogger(__name__)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("keel_")


class JwtAuthenticator:
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens
        self.clients = KeyCache(tokens.clients.get)  # type: ignore[arg-type] - any record with `revoked`

    async def principal(self, token: str) -> Principal | None:
        """The caller a valid access token names; None for anything else (a 401)."""
        if not self.tokens.enabled:
            return None
        try:
            claims = self.tokens.verify(token)
        except InvalidToken as e:
            log.debug("refused an access token: %s", e)
            return None
        found, client = self.clients.cached(claims.client_id)
        if not found:
            client = await anyio.to_thread.run_sync(self.clients.get, claims.client_id)
        if not isinstance(client, OAuthClient) or client.revoked:
            return None
        return Principal(key_id=claims.client_id, role=claims.role, tenant=claims.tenant)
