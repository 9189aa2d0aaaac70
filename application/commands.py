"""Commands the ledger accepts and the results it returns.

Commands are plain, immutable values: they can be queued, coalesced into one commit by the
group-commit writer, and retried after an optimistic-concurrency conflict without side effects.
Every id a command carries is a *public* id, resolved inside the command's `tenant`
(domain/identity.py); only the internal commands (ExpireHold, EraseHolder) name storage keys.
Results carry public ids for the caller and the storage `key` for the operator.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from domain.errors import DomainError
from domain.transfer import TRANSFER, TransferTerms


class OpenAccount(msgspec.Struct, frozen=True):
    tenant: str
    currency: str
    account_id: UUID | None = None
    overdraft_limit_minor: int = 0
    holder: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    occurred_at: datetime | None = None  # event time (an import of history); None: now


class MakeTransfer(msgspec.Struct, frozen=True):
    tenant: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    currency: str
    transfer_id: UUID | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    pending: bool = False
    timeout_s: int | None = None
    occurred_at: datetime | None = None  # event time (an import of history); None: now

    def terms(self, kind: str = TRANSFER) -> TransferTerms:
        return TransferTerms(
            kind=kind,
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount_minor=self.amount_minor,
            currency=self.currency,
            reference=self.reference,
            metadata=self.metadata or {},
            pending=self.pending,
            timeout_s=self.timeout_s,
            occurred_at=self.occurred_at,
        )


class Deposit(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID
    amount_minor: int
    currency: str
    transfer_id: UUID | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    occurred_at: datetime | None = None  # event time; None: now


class Withdraw(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID
    amount_minor: int
    currency: str
    transfer_id: UUID | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    occurred_at: datetime | None = None  # event time; None: now


class TransferBatch(msgspec.Struct, frozen=True):
    tenant: str
    items: tuple[MakeTransfer, ...]
    atomic: bool = False


class PostTransfer(msgspec.Struct, frozen=True):
    tenant: str
    transfer_id: UUID
    amount_minor: int | None = None


class VoidTransfer(msgspec.Struct, frozen=True):
    tenant: str
    transfer_id: UUID


class ReverseTransfer(msgspec.Struct, frozen=True):
    tenant: str
    transfer_id: UUID
    reversal_id: UUID | None = None


class FreezeAccount(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID


class UnfreezeAccount(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID


class CloseAccount(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID


class ExpireHold(msgspec.Struct, frozen=True):
    """Internal: expire one due hold (any tenant), named by its storage key. A hold not yet due
    is left alone."""

    transfer_key: UUID


class EraseHolder(msgspec.Struct, frozen=True):
    """Records Account.HolderErased (after the key is destroyed), for the account stored at
    `account_key`. tenant None: any tenant (admin)."""

    account_key: UUID
    tenant: str | None = None


Command = (
    OpenAccount
    | MakeTransfer
    | Deposit
    | Withdraw
    | TransferBatch
    | PostTransfer
    | VoidTransfer
    | ReverseTransfer
    | FreezeAccount
    | UnfreezeAccount
    | CloseAccount
    | ExpireHold
    | EraseHolder
)


class AccountState(msgspec.Struct, frozen=True):
    id: UUID  # public id, within the tenant
    key: UUID  # storage key (the aggregate id in the event store)
    tenant: str
    currency: str
    kind: str
    status: str
    overdraft_limit_minor: int
    posted_minor: int
    pending_debits_minor: int
    pending_credits_minor: int
    available_minor: int
    holder: dict[str, Any] | None  # revealed for the caller: plaintext, {"erased": true} or None
    metadata: dict[str, Any]
    version: int
    # The holder as stored (sealed, application/privacy.py): what a stored response may keep.
    sealed_holder: dict[str, Any] | None = None
    created: bool = False  # this command opened it (else it existed: a repeat)


class TransferState(msgspec.Struct, frozen=True):
    id: UUID  # public ids, within the tenant
    key: UUID  # storage key
    tenant: str
    kind: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    currency: str
    reference: str | None
    metadata: dict[str, Any]
    pending: bool
    timeout_s: int | None
    status: str
    posted_amount_minor: int
    reverses_id: UUID | None
    reversed_by_id: UUID | None
    created_at: str  # when it was recorded
    version: int
    created: bool = False  # this command made it (else the id named an existing one)
    occurred_at: str | None = None  # when it happened, when the client said (else when recorded)


class BatchResult(msgspec.Struct, frozen=True):
    """Per-item outcome of a batch, in request order: a TransferState or the DomainError."""

    atomic: bool
    results: tuple[TransferState | DomainError, ...]


Result = AccountState | TransferState | BatchResult
