"""The rows the recorders of both databases write beside a commit's events, in the same
transaction, from the keyword arguments of `Ledger.save` (`idempotency=`, `accounts=`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from application.ports import IdempotencyRecord


def idempotency_rows(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Stored responses of this commit's Idempotency-Keys (table keel_idempotency)."""
    records: Sequence[IdempotencyRecord] = kwargs.get("idempotency") or ()
    return [(r.scope, r.key, r.request_hash, r.answer, r.created_at_ms) for r in records]


def account_id_rows(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(public id, tenant, storage key) of the accounts opened by this commit (keel_account_ids)."""
    return list(kwargs.get("accounts") or ())
