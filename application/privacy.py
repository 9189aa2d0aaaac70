"""Holder personal data: sealed with a per-holder key before it enters an event, erasable.

The port `HolderVault` is implemented in infrastructure/audit_store.py. The Ledger seals the
holder of a new account (Account.Opened stores only the sealed form); reads reveal it. Erasing
destroys the key (crypto-shredding) and records Account.HolderErased, so every copy of the
sealed data (events, snapshots, read models, backups) becomes unreadable at once, while the
stored bytes, and so the hash chain, balances and replays, stay exactly as they were.
This module must never store or log a holder's plaintext.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID


from application.commands import AccountState, EraseHolder

SEALED_FORMAT = "holder/1"
# What a reader sees where erased personal data used to be.
ERASED: dict[str, Any] = {"erased": True}


class HolderVault(Protocol):
    def seal(self, subject_id: UUID, holder: dict[str, Any]) -> dict[str, Any]:
        """The sealed form to store in the event (ciphertext and key id, nothing readable)."""
        ...

    def reveal(self, sealed: dict[str, Any]) -> dict[str, Any]:
        """The plaintext holder, or ERASED once the key was destroyed."""
        ...

    def describe(self, sealed: dict[str, Any]) -> dict[str, Any]:
        """For audit views: whether it is still encrypted or erased, never the plaintext."""
        ...

    def erase(self, subject_id: UUID) -> bool:
        """Destroys the subject's key. True if a key was destroyed now."""
        ...


def erase_holder(
    vault: HolderVault,
    get_account: Callable[[UUID], AccountState],
    execute: Callable[[EraseHolder], Any],
    account_key: UUID,
) -> AccountState:
    """The admin path: destroy the key first, then record the fact (account by storage key).

    Key first: if recording the event fails, the data is already unreadable (the point of the
    request) and a repeat of the request records the event.
    """
    get_account(account_key)  # NotFound before anything is destroyed
    vault.erase(account_key)
    return execute(EraseHolder(account_key=account_key))
