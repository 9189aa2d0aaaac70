"""Ports: what the application needs from storage beyond the event store.

`infrastructure` implements them; the application depends only on these shapes.
"""
from __future__ import annotations

from typing import Protocol

import msgspec


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """A stored HTTP response, written in the same database transaction as its effect."""

    scope: str  # the API key id: keys of different clients never collide
    key: str
    request_hash: str
    status_code: int
    body: bytes
    created_at_ms: int


class IdempotencyStore(Protocol):
    def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], IdempotencyRecord]: ...

    def delete_older_than(self, cutoff_ms: int) -> int: ...
