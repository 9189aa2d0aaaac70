"""Webhooks as the application decides them: what a registration may hold, how a delivery is
signed, and when a failed delivery is tried again. Pure: no I/O, no clock (times are passed in),
no randomness of its own (the jitter's random number is passed in).

A delivery is one `POST` of one feed event (application/feed.py, `FeedEnvelope` JSON) to the
webhook's URL, signed `Keel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
(the scheme Stripe made familiar: the timestamp inside the MAC stops replays of old deliveries).
Deliveries are at-least-once and in feed order per webhook; a failure is retried with exponential
backoff and full jitter, for at least RETRY_WINDOW_S before the webhook is marked `failing` (it is
still retried, at the longest interval, and becomes `active` again on its first success); a
receiver answering 410 Gone disables the webhook.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

import msgspec

from application.feed import parse_types
from domain.errors import ValidationFailed

SIGNATURE_HEADER = "Keel-Signature"
WEBHOOK_ID_HEADER = "Keel-Webhook-Id"
EVENT_ID_HEADER = "Keel-Event-Id"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
URL_CHARS_MAX = 2048
DESCRIPTION_CHARS_MAX = 256
WEBHOOKS_PER_TENANT_MAX = 20
# Retries: 1 s, 2 s, 4 s ... doubling up to one hour, each delay drawn uniformly from its upper
# half (jitter, so receivers coming back are not hit by every sender at once).
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 3600.0
RETRY_WINDOW_S = 24 * 3600.0  # failing for this long: status `failing` (still retried hourly)
SIGNATURE_TOLERANCE_S = 300  # what we advise receivers to accept (README, docs/realtime.md)

ACTIVE = "active"
FAILING = "failing"
DISABLED = "disabled"  # the receiver answered 410 Gone: never delivered to again
STATUSES = (ACTIVE, FAILING, DISABLED)


class WebhookSpec(msgspec.Struct, frozen=True):
    """A registration as validated: the URL, its host, the types (None: every type)."""

    url: str
    host: str
    scheme: str
    port: int
    types: frozenset[str] | None
    description: str | None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The Keel-Signature header value of `body` sent at `timestamp_s`."""
    mac = hmac.new(secret.encode(), str(timestamp_s).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={mac}"


def verify(secret: str, header: str, body: bytes, now_s: int, tolerance_s: int = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does (documented; the tests use an implementation of their own)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now_s - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, t, body), f"t={t},v1={parts.get('v1', '')}")


def check_registration(url: str, types: list[str] | None, description: str | None, *, insecure_hosts: frozenset[str]) -> WebhookSpec:
    """The registration, or ValidationFailed. `insecure_hosts` may use http:// (and, checked where
    the address is resolved, private addresses): KEEL_WEBHOOK_ALLOW_HOSTS."""
    if len(url) > URL_CHARS_MAX or not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationFailed(f"url: an absolute http(s) URL of at most {URL_CHARS_MAX} ASCII characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationFailed("url: not a valid URL", field="url") from None
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationFailed("url: an absolute http(s) URL is required", field="url")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("url: credentials in the URL are not allowed (verify the signature instead)", field="url")
    if parts.fragment:
        raise ValidationFailed("url: a fragment is not allowed", field="url")
    if parts.scheme == "http" and host not in insecure_hosts:
        raise ValidationFailed("url: https is required (http only for hosts in KEEL_WEBHOOK_ALLOW_HOSTS)", field="url")
    if description is not None and len(description) > DESCRIPTION_CHARS_MAX:
        raise ValidationFailed(f"description: at most {DESCRIPTION_CHARS_MAX} characters", field="description")
    parsed_types = parse_types(types if types is not None else ["*"])
    return WebhookSpec(
        url=url, host=host, scheme=parts.scheme, port=port or (443 if parts.scheme == "https" else 80),
        types=parsed_types, description=description,
    )  # fmt: skip


def retry_delay_s(attempts: int, unit_random: float) -> float:
    """Seconds before the next try after `attempts` failed tries in a row (>= 1); `unit_random` in
    [0, 1) draws the jitter."""
    assert attempts >= 1 and 0.0 <= unit_random < 1.0
    ceiling = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempts - 1, 40))
    return ceiling * (0.5 + 0.5 * unit_random)


class Failure(msgspec.Struct, frozen=True):
    """What the webhook becomes after a failed try."""

    status: str
    attempts: int
    next_attempt_at_ms: int
    failing_since_ms: int


def after_failure(status: str, attempts: int, failing_since_ms: int | None, now_ms: int, unit_random: float,
                  *, gone: bool) -> Failure:  # fmt: skip
    """The state after a failed try at `now_ms`: 410 (`gone`) disables; otherwise retry later, and
    `failing` once the failures have lasted RETRY_WINDOW_S."""
    since = failing_since_ms if failing_since_ms is not None else now_ms
    attempts += 1
    if gone:
        return Failure(DISABLED, attempts, 0, since)
    next_ms = now_ms + int(retry_delay_s(attempts, unit_random) * 1000)
    failing = status == FAILING or now_ms - since >= RETRY_WINDOW_S * 1000
    return Failure(FAILING if failing else ACTIVE, attempts, next_ms, since)


def wants(types: frozenset[str] | None, event_type: str) -> bool:
    return types is None or event_type in types
