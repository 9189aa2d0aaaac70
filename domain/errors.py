"""Domain errors: every rule of the ledger that a command can break.

Each error has a stable `code` that the API exposes unchanged, so clients can branch on it.
Errors are raised by commands *before* any event is triggered: a failed command changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # What to record once the refused command's changes are undone (e.g. the refused attempt
        # itself, as a fact): called by the unit of work after its rollback. None: nothing.
        self.after_rollback: Callable[[], None] | None = None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.message == self.message  # type: ignore[attr-defined]
            and other.details == self.details  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))


class ValidationFailed(DomainError):
    code = "validation_error"


class InvalidAmount(ValidationFailed):
    code = "invalid_amount"


class InvalidCurrency(ValidationFailed):
    code = "invalid_currency"


class NotFound(DomainError):
    code = "not_found"


class InsufficientFunds(DomainError):
    code = "insufficient_funds"


class AccountFrozen(DomainError):
    code = "account_frozen"


class AccountClosed(DomainError):
    code = "account_closed"


class AccountNotEmpty(DomainError):
    code = "account_not_empty"


class SettlementAccountRestricted(DomainError):
    code = "settlement_account_restricted"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"


class SameAccount(DomainError):
    code = "same_account"


class ExceedsHeldAmount(DomainError):
    code = "exceeds_held_amount"


class TransferNotPending(DomainError):
    code = "transfer_not_pending"


class TransferExpired(DomainError):
    code = "transfer_expired"


class TransferNotPosted(DomainError):
    code = "transfer_not_posted"


class AlreadyReversed(DomainError):
    code = "already_reversed"


class EventTimeOutOfRange(DomainError):
    """`occurred_at` too far in the future, before an account existed, or out of its order: a
    rule of the ledger about *this* time against the clock and the accounts (a well-formed
    request, so not `validation_error`); the problem names `field: occurred_at`."""

    code = "event_time_out_of_range"


class BalanceOverflow(DomainError):
    code = "balance_overflow"


class ExistsWithDifferentFields(DomainError):
    code = "exists_with_different_fields"


class ConcurrencyConflict(DomainError):
    """Optimistic-concurrency retries were exhausted; the command was not applied."""

    code = "concurrency_conflict"
