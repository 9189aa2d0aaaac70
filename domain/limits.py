"""Limits on what a client may store. Exceeding one is a validation error, never a slowdown."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from domain.errors import EventTimeOutOfRange, ValidationFailed

METADATA_MAX_BYTES = 4096
# Nesting of metadata: 4 KiB of `[[[[…` is 2,000 levels, which decoders (and every later
# replay of the event) would have to recurse through.
METADATA_DEPTH_MAX = 16
REFERENCE_MAX_CHARS = 128
HOLD_TIMEOUT_MAX_S = 30 * 24 * 3600
# Transfers in one batch command (POST /v1/transfers/batch, SPEC section 3).
BATCH_ITEMS_MAX = 1000
# A tenant is part of every storage key (domain/identity.py): a short, plain name.
TENANT_MAX_CHARS = 64
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_TENANT_RE = re.compile(TENANT_PATTERN)


_VALID_TENANTS: set[str] = set()  # names already checked (a handful per deployment): no regex per command
_VALID_TENANTS_MAX = 10_000


def check_tenant(tenant: Any) -> str:
    if type(tenant) is str and tenant in _VALID_TENANTS:
        return tenant  # type: ignore[no-any-return]
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValidationFailed(
            f"tenant must be 1..{TENANT_MAX_CHARS} characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )
    if len(_VALID_TENANTS) < _VALID_TENANTS_MAX:
        _VALID_TENANTS.add(tenant)
    return tenant


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if metadata == {}:
        return metadata
    if not isinstance(metadata, dict):
        raise ValidationFailed("metadata must be a JSON object")
    if _depth(metadata) > METADATA_DEPTH_MAX:
        raise ValidationFailed(f"metadata may nest at most {METADATA_DEPTH_MAX} levels deep")
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as e:
        raise ValidationFailed("metadata must be JSON") from e
    if size > METADATA_MAX_BYTES:
        raise ValidationFailed(f"metadata must be at most {METADATA_MAX_BYTES} bytes of JSON", size=size)
    return metadata


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers, without recursion (the input may be hostile)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > METADATA_DEPTH_MAX:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_reference(reference: Any) -> str | None:
    if reference is None:
        return None
    if not isinstance(reference, str) or len(reference) > REFERENCE_MAX_CHARS:
        raise ValidationFailed(f"reference must be a string of at most {REFERENCE_MAX_CHARS} characters")
    return reference


def check_timeout(timeout_s: Any) -> int | None:
    if timeout_s is None:
        return None
    if type(timeout_s) is not int or not 1 <= timeout_s <= HOLD_TIMEOUT_MAX_S:
        raise ValidationFailed(f"timeout_seconds must be an integer in 1..{HOLD_TIMEOUT_MAX_S}")
    return timeout_s


# A movement's event time (`occurred_at`) may lie this far ahead of the ledger's clock (clocks
# drift); any further is refused.
EVENT_TIME_FUTURE_SKEW = timedelta(minutes=5)


def check_event_time(occurred_at: Any, now: datetime) -> datetime:
    if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
        raise ValidationFailed("occurred_at must be an RFC 3339 time with a UTC offset", field="occurred_at")
    if occurred_at > now + EVENT_TIME_FUTURE_SKEW:
        raise EventTimeOutOfRange(
            f"occurred_at may be at most {int(EVENT_TIME_FUTURE_SKEW.total_seconds())} s in the future",
            field="occurred_at",
        )
    return occurred_at

