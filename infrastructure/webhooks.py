"""Webhooks' storage (`keel_webhooks`: each webhook with its delivery tracking) and the SSRF guard
that decides which addresses a delivery may connect to.

The guard resolves the host (DNS) and refuses any address that is not globally routable —
loopback, private, link-local (the cloud metadata service, 169.254.169.254, is one), CGNAT,
multicast, reserved, unspecified, IPv4-mapped forms of those — unless the host is listed in
KEEL_WEBHOOK_ALLOW_HOSTS. It runs at registration (422) and again before every connection, and the
delivery connects to the very address it checked (no second lookup an attacker's DNS could
answer differently). Secrets are sealed with the data key when one is configured: the database
alone does not reveal them. This module never logs a secret.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from application.webhooks import ACTIVE, WEBHOOKS_PER_TENANT_MAX, Failure, WebhookSpec, new_secret
from domain.errors import NotFound, ValidationFailed
from infrastructure.schema import WEBHOOKS
from infrastructure.sql import Sql

RESOLVE_ADDRESSES_MAX = 16
Resolver = Callable[[str, int], list[str]]


class AddressRefused(Exception):
    """The webhook's host resolves to an address deliveries may not reach."""


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))[:RESOLVE_ADDRESSES_MAX]


class UrlGuard:
    """Which addresses a webhook's host may be reached at."""

    def __init__(self, allow_hosts: frozenset[str], resolve: Resolver = system_resolve) -> None:
        self.allow_hosts = allow_hosts
        self._resolve = resolve

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, every one of them allowed; AddressRefused otherwise."""
        host = host.lower().rstrip(".")
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
            found = [str(literal)]
        except ValueError:
            try:
                found = self._resolve(host, port)
            except (OSError, UnicodeError) as e:
                raise AddressRefused(f"{host} does not resolve ({type(e).__name__})") from None
        if not found:
            raise AddressRefused(f"{host} does not resolve")
        if host in self.allow_hosts:
            return found
        for address in found:
            if not _public(address):
                raise AddressRefused(f"{host} resolves to a non-public address (allow it with KEEL_WEBHOOK_ALLOW_HOSTS)")
        return found

    def check_registration(self, spec: WebhookSpec) -> None:
        try:
            self.addresses(spec.host, spec.port)
        except AddressRefused as e:
            raise ValidationFailed(f"url: {e}", field="url") from None


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return ip.is_global and not ip.is_multicast


# ---- storage -------------------------------------------------------------------------------------


class Webhook(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    url: str
    types: list[str] | None  # None: every type
    description: str | None
    created_at: str
    status: str
    after_id: int  # the last feed id delivered or passed over
    attempts: int  # failed tries in a row
    next_attempt_at_ms: int
    failing_since_ms: int | None
    last_error: str | None
    last_attempt_at: str | None
    last_delivered_at: str | None
    delivered: int


_COLUMNS = (
    "id, tenant, url, types, description, created_at, status, after_id, attempts, next_attempt_at_ms,"
    " failing_since_ms, last_error, last_attempt_at, last_delivered_at, delivered"
)
_SEALED, _PLAIN = "sealed:", "plain:"
ERROR_CHARS_MAX = 300


def _now_iso(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class SqlWebhookStore:
    """keel_webhooks on the store's SQL helper. Every read and write a client asks for names the
    tenant: another tenant's webhook is not found."""

    def __init__(self, sql: Sql, keyring: Any | None = None) -> None:
        self.sql = sql
        self.keyring = keyring  # infrastructure.mapper.KeyRing: seals the secrets at rest
        t = sql.table(WEBHOOKS)
        self._t = t
        self._insert = (
            f"INSERT INTO {t} (id, tenant, url, types, description, secret, created_at, status, after_id, attempts,"
            " next_attempt_at_ms, delivered) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 0)"
        )
        self._count = f"SELECT count(*) FROM {t} WHERE tenant = %s"
        self._get = f"SELECT {_COLUMNS} FROM {t} WHERE id = %s AND tenant = %s"
        self._list = f"SELECT {_COLUMNS} FROM {t} WHERE tenant = %s ORDER BY created_at, id"
        self._delete = f"DELETE FROM {t} WHERE id = %s AND tenant = %s"
        self._due = (
            f"SELECT {_COLUMNS}, secret FROM {t} WHERE status <> 'disabled' AND after_id < %s"
            " AND next_attempt_at_ms <= %s ORDER BY next_attempt_at_ms, id LIMIT %s"
        )
        self._progress = (
            f"UPDATE {t} SET after_id = %s, delivered = delivered + %s, last_delivered_at = %s, status = 'active',"
            " attempts = 0, failing_since_ms = NULL, next_attempt_at_ms = 0 WHERE id = %s AND after_id = %s"
        )
        self._pass_over = f"UPDATE {t} SET after_id = %s WHERE id = %s AND after_id = %s"
        self._failed = (
            f"UPDATE {t} SET status = %s, attempts = %s, next_attempt_at_ms = %s, failing_since_ms = %s,"
            " last_error = %s, last_attempt_at = %s WHERE id = %s AND after_id = %s"
        )

    # ---- the API's (within a tenant) -------------------------------------------------------

    def create(self, tenant: str, spec: WebhookSpec, after_id: int, now_ms: int | None = None) -> tuple[Webhook, str]:
        """A new webhook that delivers events after feed id `after_id`, and its secret (shown once)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        secret = new_secret()
        types = None if spec.types is None else sorted(spec.types)
        webhook_id = str(uuid.uuid4())
        with self.sql.transaction() as cur:
            cur.execute(self._count, (tenant,))
            if int(cur.fetchone()[0]) >= WEBHOOKS_PER_TENANT_MAX:
                raise ValidationFailed(f"at most {WEBHOOKS_PER_TENANT_MAX} webhooks per tenant: delete one first")
            cur.execute(self._insert, (
                webhook_id, tenant, spec.url, _types_text(types), spec.description, self._seal(secret),
                _now_iso(now_ms), ACTIVE, after_id,
            ))  # fmt: skip
        return self.get(tenant, webhook_id), secret

    def get(self, tenant: str, webhook_id: str) -> Webhook:
        row = self.sql.fetchone(self._get, (webhook_id, tenant))
        if row is None:
            raise NotFound("webhook not found")
        return _webhook(row)

    def list(self, tenant: str) -> list[Webhook]:
        return [_webhook(r) for r in self.sql.fetchall(self._list, (tenant,))]

    def delete(self, tenant: str, webhook_id: str) -> None:
        if self.sql.execute(self._delete, (webhook_id, tenant)) != 1:
            raise NotFound("webhook not found")

    # ---- the delivery worker's ---------------------------------------------------------------

    def due(self, head: int, now_ms: int, limit: int) -> list[tuple[Webhook, str]]:
        """Webhooks with events to deliver (`after_id` behind the feed's `head`) whose next try is
        due, with their secrets."""
        return [(_webhook(r[:-1]), self._unseal(r[-1])) for r in self.sql.fetchall(self._due, (head, now_ms, limit))]

    def progress(self, webhook_id: str, expected_after: int, after_id: int, delivered: int, now_ms: int) -> bool:
        """Moves the tracking from `expected_after` to `after_id` after `delivered` deliveries (0:
        events of other types passed over); False when the webhook is gone or moved elsewhere."""
        if delivered == 0:
            return self.sql.execute(self._pass_over, (after_id, webhook_id, expected_after)) == 1
        params = (after_id, delivered, _now_iso(now_ms), webhook_id, expected_after)
        return self.sql.execute(self._progress, params) == 1

    def failed(self, webhook_id: str, expected_after: int, failure: Failure, error: str, now_ms: int) -> bool:
        params = (
            failure.status, failure.attempts, failure.next_attempt_at_ms, failure.failing_since_ms,
            error[:ERROR_CHARS_MAX], _now_iso(now_ms), webhook_id, expected_after,
        )  # fmt: skip
        return self.sql.execute(self._failed, params) == 1

    # ---- secrets -----------------------------------------------------------------------------

    def _seal(self, secret: str) -> str:
        if self.keyring is None:
            return _PLAIN + secret
        return _SEALED + base64.b64encode(self.keyring.encrypt(secret.encode())).decode()

    def _unseal(self, stored: str) -> str:
        if stored.startswith(_SEALED):
            if self.keyring is None:
                raise RuntimeError("a webhook secret is sealed but no data key is configured")
            return self.keyring.decrypt(base64.b64decode(stored[len(_SEALED) :])).decode()
        assert stored.startswith(_PLAIN), "unknown webhook secret format"
        return stored[len(_PLAIN) :]


def _types_text(types: Sequence[str] | None) -> str:
    return "*" if types is None else ",".join(types)


def _webhook(row: Sequence[Any]) -> Webhook:
    types = None if row[3] == "*" else [t for t in str(row[3]).split(",") if t]
    return Webhook(
        id=row[0], tenant=row[1], url=row[2], types=types, description=row[4], created_at=row[5], status=row[6],
        after_id=int(row[7]), attempts=int(row[8]), next_attempt_at_ms=int(row[9]),
        failing_since_ms=None if row[10] is None else int(row[10]), last_error=row[11], last_attempt_at=row[12],
        last_delivered_at=row[13], delivered=int(row[14]),
    )  # fmt: skip
