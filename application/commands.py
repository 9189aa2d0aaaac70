"""Commands the ledger accepts and the results it returns.

Commands are plain, immutable values: they can be queued, coalesced into one commit by the
group-commit writer, and retried after an optimistic-concurrency conflict without side effects.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from domain.errors import DomainError


class OpenAccount(msgspec.Struct, frozen=True):
    tenant: str
    currency: str
    account_id: UUID | None = None
    overdraft_limit_minor: int = 0
    holder: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


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


class Deposit(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID
    amount_minor: int
    currency: str
    transfer_id: UUID | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None


class Withdraw(msgspec.Struct, frozen=True):
    tenant: str
    account_id: UUID
    amount_minor: int
    currency: str
    transfer_id: UUID | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None


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
    """Internal: expire one due hold (any tenant). A hold not yet due is left alone."""

    transfer_id: UUID


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
)


class AccountState(msgspec.Struct, frozen=True):
    id: UUID
    tenant: str
    currency: str
    kind: str
    status: str
    overdraft_limit_minor: int
    posted_minor: int
    pending_debits_minor: int
    pending_credits_minor: int
    available_minor: int
    holder: dict[str, Any] | None
    metadata: dict[str, Any]
    version: int


class TransferState(msgspec.Struct, frozen=True):
    id: UUID
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
    created_at: str
    version: int


class BatchResult(msgspec.Struct, frozen=True):
    """Per-item outcome of a batch, in request order: a TransferState or the DomainError."""

    atomic: bool
    results: tuple[TransferState | DomainError, ...]

    @property
    def all_ok(self) -> bool:
        return not any(isinstance(r, DomainError) for r in self.results)


Result = AccountState | TransferState | BatchResult
