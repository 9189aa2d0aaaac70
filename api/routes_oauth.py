"""OAuth 2.0 client credentials (RFC 6749 §4.4): `POST /oauth/token` and `GET /.well-known/jwks.json`.

The token endpoint takes a form body (`grant_type=client_credentials`, optional `scope`), the client
authenticated by HTTP Basic or by `client_id`/`client_secret` form fields (§2.3.1; not both), and
answers `{access_token, token_type: "Bearer", expires_in, scope}` with `Cache-Control: no-store`.
Errors follow §5.2 — `application/json` with `error` (`invalid_request`, `invalid_client`,
`unsupported_grant_type`, `invalid_scope`) and `error_description` — and carry the problem fields
(`type`, `title`, `status`, `detail`, `code`) as well, so clients of either convention read them.
`scope`, when given, must be the client's role (a client gets exactly its role). Both routes are
public (api/auth.py PUBLIC_PATHS); this module never logs a secret or a token.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from infrastructure.oauth import OAuthClient

FORM_BODY_MAX_BYTES = 4096
FORM_FIELDS = frozenset({"grant_type", "scope", "client_id", "client_secret"})
ERROR_STATUS = {"invalid_request": 400, "invalid_client": 401, "unsupported_grant_type": 400, "invalid_scope": 400,
                "temporarily_unavailable": 503}  # fmt: skip


class TokenOut(msgspec.Struct, frozen=True):
    access_token: str  # a JWT (EdDSA): iss, sub (client id), aud, exp, iat, nbf, jti, role, tenant
    token_type: str  # "Bearer"
    expires_in: int  # seconds
    scope: str  # the client's role


class OAuthErrorOut(msgspec.Struct, frozen=True):
    error: str
    error_description: str
    type: str
    title: str
    status: int
    detail: str
    code: str


class Jwk(msgspec.Struct, frozen=True):
    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str


class Jwks(msgspec.Struct, frozen=True):
    keys: list[Jwk]


class _OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _error(e: _OAuthError, basic: bool) -> Response[Any]:
    status = ERROR_STATUS[e.error]
    body = {"error": e.error, "error_description": e.description, "type": f"urn:keel:problem:oauth_{e.error}",
            "title": e.error.replace("_", " ").capitalize(), "status": status, "detail": e.description,
            "code": e.error}  # fmt: skip
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="keel"'  # §5.2: the scheme the client may use
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


def _form(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("ascii")
        parsed = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded ASCII") from None
    form: dict[str, str] = {}
    for name, values in parsed.items():
        if name not in FORM_FIELDS:
            continue  # RFC 6749 §3.2: unrecognised parameters are ignored
        if len(values) != 1:
            raise _OAuthError("invalid_request", f"{name} given more than once")
        form[name] = values[0]
    return form


def _basic(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _OAuthError("invalid_client", "malformed HTTP Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _OAuthError("invalid_client", "malformed HTTP Basic credentials")
    return unquote(client_id), unquote(secret)  # §2.3.1: form-urlencoded before Basic


def _client_credentials(request: Request[Any, Any, Any], form: dict[str, str]) -> tuple[str, str, bool]:
    header = request.headers.get("authorization")
    in_form = "client_id" in form or "client_secret" in form
    if header is not None:
        if not header[:6].lower() == "basic ":
            raise _OAuthError("invalid_client", "authenticate the client with HTTP Basic or form fields")
        if in_form:
            raise _OAuthError("invalid_request", "use one way of client authentication, not both")
        return (*_basic(header), True)
    if "client_id" not in form or "client_secret" not in form:
        raise _OAuthError("invalid_client", "client authentication is required")
    return form["client_id"], form["client_secret"], False


TOKEN_DOC = (
    "OAuth 2.0 client credentials grant (RFC 6749 §4.4). Form body `grant_type=client_credentials` (and optionally "
    "`scope=<the client's role>`); the client (`keel clients create`) authenticates with HTTP Basic "
    "(`client_id:client_secret`) or the form fields `client_id` and `client_secret`. The access token is a JWT "
    "signed with EdDSA (Ed25519; keys at `/.well-known/jwks.json`) carrying `iss, sub, aud, exp, iat, nbf, jti, "
    "tenant, role`; send it as `Authorization: Bearer <token>` to any route, with the rights of an API key of "
    "that role and tenant. Errors follow RFC 6749 §5.2 (`error`, `error_description`; also the problem fields)."
)


@post(
    "/oauth/token",
    summary="Get an access token (OAuth 2.0 client credentials)",
    description=TOKEN_DOC,
    status_code=200,
    tags=["auth"],
    responses={
        400: ResponseSpec(data_container=OAuthErrorOut, description="invalid_request, unsupported_grant_type, invalid_scope"),
        401: ResponseSpec(data_container=OAuthErrorOut, description="invalid_client"),
        503: ResponseSpec(data_container=OAuthErrorOut, description="OAuth is not configured on this deployment"),
    },
)
async def token(request: Request[Any, Any, Any], services: NamedDependency[Any]) -> Response[TokenOut]:
    basic = False
    try:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise _OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > FORM_BODY_MAX_BYTES):
            raise _OAuthError("invalid_request", f"the body is over {FORM_BODY_MAX_BYTES} bytes")
        raw = await request.body()
        if len(raw) > FORM_BODY_MAX_BYTES:
            raise _OAuthError("invalid_request", f"the body is over {FORM_BODY_MAX_BYTES} bytes")
        form = _form(raw)
        client_id, secret, basic = _client_credentials(request, form)
        grant = form.get("grant_type")
        if grant is None:
            raise _OAuthError("invalid_request", "grant_type is required")
        tokens = services.tokens
        if not tokens.enabled:
            raise _OAuthError("temporarily_unavailable", "OAuth is not configured here (KEEL_JWT_KEYS_FILE)")
        client: OAuthClient | None = await anyio.to_thread.run_sync(tokens.authenticate, client_id[:64], secret)
        if client is None:
            raise _OAuthError("invalid_client", "unknown client, wrong secret, or a revoked client")
        if grant != "client_credentials":
            raise _OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        scope = form.get("scope")
        if scope is not None and scope.split() not in ([], [client.role]):
            raise _OAuthError("invalid_scope", f"this client may only have the scope {client.role!r}")
        access_token, expires_in = tokens.issue(client)
    except _OAuthError as e:
        return _error(e, basic)
    body = TokenOut(access_token=access_token, token_type="Bearer", expires_in=expires_in, scope=client.role)
    return Response(body, status_code=200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@get(
    "/.well-known/jwks.json",
    summary="The public keys that verify access tokens (JWKS)",
    description="Ed25519 public keys (RFC 8037 `OKP`), newest first, each with the `kid` tokens name. Keys stay "
    "listed after a rotation while tokens signed with them may still be live.",
    tags=["auth"],
)
async def jwks(services: NamedDependency[Any]) -> Response[Jwks]:
    keys = await anyio.to_thread.run_sync(services.tokens.jwks)
    return Response(msgspec.convert(keys, Jwks), headers={"Cache-Control": "public, max-age=300"})


# `[{}]`: no authentication needed (as for /healthz): the token endpoint authenticates its clients itself.
router = Router(path="/", route_handlers=[token, jwks], security=[{}])
