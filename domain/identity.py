"""Identity: who owns an id, and where each object is stored. Pure functions, no I/O.

Keel is multi-tenant, and tenancy is part of identity. A client names its objects with *public
ids* (UUIDs it may choose); the event store keeps each object under a *storage key* derived from
the tenant, the kind of object and the public id:

    account_key(tenant, public_id)  = SHA-1(ACCOUNT_NAMESPACE  ‖ tenant ‖ NUL ‖ public_id), as a UUID v5
    transfer_key(tenant, public_id) = SHA-1(TRANSFER_NAMESPACE ‖ tenant ‖ NUL ‖ public_id), as a UUID v5

(the namespace and the public id as their 16 bytes, the tenant as UTF-8: RFC 9562's name-based
UUID over that name)

So the same public id in two tenants names two different objects, an account and a transfer
never share a key, and no id one tenant sends can ever load, create or collide with another
tenant's object: every lookup is resolved inside the caller's tenant by construction.
Event payloads refer to other objects by storage key (so every consumer of the log is tenant-
isolated without knowing about tenants) and carry public ids only for showing them back.

*System ids* are public ids the service makes for itself (a tenant's settlement account per
currency, the reversal of a transfer, objects created under an Idempotency-Key). They are
UUIDs of version 8 starting with the bytes b"keel"; a client may refer to them (its own
settlement account, a reversal it got back) but never create an object with one
(`check_client_id`), so no client can squat an id the service will need. A settlement account's
storage key lives in a namespace of its own that no client id reaches either.
"""
from __future__ import annotations

import hashlib
from uuid import UUID, uuid5

from domain.errors import ValidationFailed

ACCOUNT_NAMESPACE = UUID("5f0e4b0a-6c3d-4e51-9a7e-2b8d1c4f6a01")
TRANSFER_NAMESPACE = UUID("5f0e4b0a-6c3d-4e51-9a7e-2b8d1c4f6a02")
SETTLEMENT_NAMESPACE = UUID("5f0e4b0a-6c3d-4e51-9a7e-2b8d1c4f6a03")

SYSTEM_ID_PREFIX = b"keel"
_SETTLEMENT_TAG = b"\x5e\x77"  # "settlement"
_DERIVED_TAG = b"\x00\x01"


def _system_id(tag: bytes, body: bytes) -> UUID:
    """A version-8 (RFC 9562 custom) UUID: b"keel", a 2-byte tag, 10 bytes of body."""
    raw = bytearray(SYSTEM_ID_PREFIX + tag + body[:10].rjust(10, b"\x00"))
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return UUID(bytes=bytes(raw))


def is_system_id(public_id: UUID) -> bool:
    return public_id.bytes[:4] == SYSTEM_ID_PREFIX and public_id.version == 8


def check_client_id(public_id: UUID | None, field: str = "id") -> UUID | None:
    """An id a client wants to create an object with: any UUID except a system id."""
    if public_id is not None and is_system_id(public_id):
        raise ValidationFailed(
            f"{field}: ids starting 6b65656c- of UUID version 8 are reserved for ids the service makes", field=field
        )
    return public_id


def derived_id(*parts: str) -> UUID:
    """A system id that is a function of `parts` (e.g. a reversal of a transfer, or the object
    created under an Idempotency-Key): repeatable, and out of every client's reach."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return _system_id(_DERIVED_TAG, digest[:10])


# ---- settlement accounts ---------------------------------------------------------------------


def settlement_public_id(currency: str) -> UUID:
    """The public id of a tenant's settlement account in `currency` (the same in every tenant:
    it is resolved inside the caller's tenant like any other id). The currency is readable in
    its last hex digits, e.g. EUR -> 6b65656c-5e77-8000-8000-000000455552."""
    return _system_id(_SETTLEMENT_TAG, currency.encode("ascii", "replace")[:3].rjust(10, b"\x00"))


def settlement_currency(public_id: UUID) -> str | None:
    """The currency when `public_id` names a settlement account, else None."""
    raw = public_id.bytes
    if raw[:4] != SYSTEM_ID_PREFIX or raw[4:6] != _SETTLEMENT_TAG or public_id.version != 8:
        return None
    code = raw[13:16]
    if raw[6:13] != b"\x80\x00\x80\x00\x00\x00\x00" or not (code.isascii() and code.isalpha() and code.isupper()):
        return None
    return code.decode()


def settlement_key(tenant: str, currency: str) -> UUID:
    return uuid5(SETTLEMENT_NAMESPACE, f"{tenant}\x00{currency}")


def _key(namespace: UUID, tenant: str, public_id: UUID) -> UUID:
    digest = hashlib.sha1(namespace.bytes + tenant.encode() + b"\x00" + public_id.bytes).digest()  # noqa: S324 - an id, not a MAC
    return UUID(bytes=digest[:16], version=5)


# ---- storage keys ----------------------------------------------------------------------------


# Keys are pure functions of their arguments, asked for several times per transfer (prefetch,
# load, create): a bounded cache saves repeating them (uuid5 over text cost ~25 us of a
# transfer's ~170 us of writer CPU; a hit costs well under 1 us). Keyed by the UUID's int: a
# UUID's own __hash__ is Python code, an int's is not.
KEY_CACHE_MAX = 1 << 17
_account_keys: dict[tuple[str, int], UUID] = {}
_transfer_keys: dict[tuple[str, int], UUID] = {}


def account_key(tenant: str, public_id: UUID) -> UUID:
    """Where the tenant's account `public_id` is stored (its settlement accounts included)."""
    cached = _account_keys.get((tenant, public_id.int))
    if cached is not None:
        return cached
    currency = settlement_currency(public_id)
    key = settlement_key(tenant, currency) if currency is not None else _key(ACCOUNT_NAMESPACE, tenant, public_id)
    return _remember(_account_keys, (tenant, public_id.int), key)


def transfer_key(tenant: str, public_id: UUID) -> UUID:
    """Where the tenant's transfer `public_id` is stored."""
    cached = _transfer_keys.get((tenant, public_id.int))
    if cached is not None:
        return cached
    return _remember(_transfer_keys, (tenant, public_id.int), _key(TRANSFER_NAMESPACE, tenant, public_id))


def _remember(cache: dict[tuple[str, int], UUID], name: tuple[str, int], key: UUID) -> UUID:
    if len(cache) >= KEY_CACHE_MAX:
        cache.clear()  # bounded; a cleared cache only costs recomputing
    cache[name] = key
    return key


def reversal_public_id(original_public_id: UUID) -> UUID:
    """The public id of the reversal of a transfer: one reversal per transfer, whoever asks."""
    return derived_id("reversal", str(original_public_id))
