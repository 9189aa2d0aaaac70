"""Limits on what a client may store. Exceeding one is a validation error, never a slowdown."""
from __future__ import annotations

import json
from typing import Any

from domain.errors import ValidationFailed

METADATA_MAX_BYTES = 4096
REFERENCE_MAX_CHARS = 128
HOLD_TIMEOUT_MAX_S = 30 * 24 * 3600


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if metadata == {}:
        return metadata
    if not isinstance(metadata, dict):
        raise ValidationFailed("metadata must be a JSON object")
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as e:
        raise ValidationFailed("metadata must be JSON") from e
    if size > METADATA_MAX_BYTES:
        raise ValidationFailed(f"metadata must be at most {METADATA_MAX_BYTES} bytes of JSON", size=size)
    return metadata


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
