"""Limits on what a client may store. Exceeding one is a validation error, never a slowdown."""
from __future__ import annotations

import json
from typing import Any

from domain.errors import ValidationFailed

METADATA_MAX_BYTES = 4096
# Nesting of metadata: 4 KiB of `[[[[…` is 2,000 levels, which decoders (and every later
# replay of the event) would have to recurse through.
METADATA_DEPTH_MAX = 16
REFERENCE_MAX_CHARS = 128
HOLD_TIMEOUT_MAX_S = 30 * 24 * 3600


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
