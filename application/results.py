"""Aggregates turned into the results the application hands out: public ids for the caller, the
storage key for operators, and holder data revealed only here (sealed form kept beside it)."""
from __future__ import annotations

from datetime import timezone

from typing import Any

from application.commands import AccountState, TransferState
from application.privacy import ERASED, HolderVault
from domain.account import Account
from domain.transfer import Transfer


def account_state(a: Account, vault: HolderVault | None = None, *, created: bool = False) -> AccountState:
    sealed = a.holder
    if a.holder_erased:
        holder: dict[str, Any] | None = dict(ERASED)  # shown as erased, not as "never had one"
    else:
        holder = vault.reveal(sealed) if vault is not None and sealed is not None else sealed
    return AccountState(
        id=a.public_id,
        key=a.id,
        tenant=a.tenant,
        currency=a.currency,
        kind=a.kind,
        status=a.status,
        overdraft_limit_minor=a.overdraft_limit_minor,
        posted_minor=a.posted_minor,
        pending_debits_minor=a.pending_debits_minor,
        pending_credits_minor=a.pending_credits_minor,
        available_minor=a.available_minor,
        holder=holder,
        metadata=a.metadata,
        version=a.version,
        sealed_holder=None if a.holder_erased else sealed,
        created=created,
    )


def transfer_state(t: Transfer, *, created: bool = False) -> TransferState:
    return TransferState(
        id=t.public_id,
        key=t.id,
        tenant=t.tenant,
        kind=t.kind,
        debit_account_id=t.debit_public_id,
        credit_account_id=t.credit_public_id,
        amount_minor=t.amount_minor,
        currency=t.currency,
        reference=t.reference,
        metadata=t.metadata,
        pending=t.pending,
        timeout_s=t.timeout_s,
        status=t.status,
        posted_amount_minor=t.posted_amount_minor,
        reverses_id=t.reverses_public_id,
        reversed_by_id=t.reversed_by_public_id,
        created_at=t.created_on.isoformat(),
        version=t.version,
        created=created,
        occurred_at=t.occurred_at.astimezone(timezone.utc).isoformat() if t.occurred_at is not None else None,
    )
