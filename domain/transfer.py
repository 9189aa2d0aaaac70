"""The Transfer aggregate: one movement of money from a debit account to a credit account.

A transfer is either posted at once or pending (a two-phase hold). A hold is later posted in
full or in part (the rest is released), voided, or expires. A posted transfer is never edited:
it is reversed by a new compensating transfer, and records that it was.

The Transfer only tracks its own lifecycle; the matching balance changes are events of the two
Accounts, recorded in the same commit by the application. What a client asked for is one value,
`TransferTerms`: validated once, stored in `Transfer.Initiated`, and compared with `==` when the
same transfer id is sent again.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.errors import (
    AlreadyReversed,
    CurrencyMismatch,
    ExceedsHeldAmount,
    SameAccount,
    TransferExpired,
    TransferNotPending,
    TransferNotPosted,
    ValidationFailed,
)
from domain.events import new_event
from domain.limits import check_metadata, check_reference, check_timeout
from domain.money import check_amount, check_currency

PENDING = "pending"
POSTED = "posted"
VOIDED = "voided"
EXPIRED = "expired"

# What a transfer stands for; deposits and withdrawals are transfers against settlement.
TRANSFER = "transfer"
DEPOSIT = "deposit"
WITHDRAWAL = "withdrawal"
REVERSAL = "reversal"


class TransferTerms(NamedTuple):
    """What a client asks to move, in its tenant's ids (public ids, domain/identity.py).

    Immutable and compared with `==` (a NamedTuple: built once per transfer on the writer's hot
    path, several times cheaper than a frozen dataclass). `metadata` is never mutated."""

    kind: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    currency: str
    reference: str | None = None
    metadata: dict[str, Any] = {}  # noqa: RUF012 - shared default, never mutated
    pending: bool = False
    timeout_s: int | None = None
    # When it happened, when the client says so (history imported, a backfill); None: when it is
    # recorded. Part of the request: the same id with another occurred_at is another request.
    occurred_at: datetime | None = None

    def validate(self) -> TransferTerms:
        """The transfer's own rules (the accounts' rules are checked by the accounts)."""
        check_amount(self.amount_minor)
        check_currency(self.currency)
        check_reference(self.reference)
        check_metadata(self.metadata)
        check_timeout(self.timeout_s)
        if self.debit_account_id == self.credit_account_id:
            raise SameAccount("debit and credit account must differ", account_id=str(self.debit_account_id))
        if self.timeout_s is not None and not self.pending:
            raise ValidationFailed("timeout_seconds applies only to pending transfers")
        return self

    def check_currencies(self, debit_currency: str, credit_currency: str) -> None:
        if debit_currency != self.currency or credit_currency != self.currency:
            raise CurrencyMismatch(
                "transfer currency must equal both accounts' currency",
                currency=self.currency,
                debit_currency=debit_currency,
                credit_currency=credit_currency,
            )


class Transfer(Aggregate):
    """Stored under its storage key (`id`); `public_id` is the id its tenant knows it by. The
    `*_account_id` and `reverses_id` fields are storage keys; `terms` holds the public ids."""

    class Initiated(Aggregate.Created):
        tenant: str
        public_id: UUID
        kind: str
        debit_account_id: UUID
        credit_account_id: UUID
        debit_public_id: UUID
        credit_public_id: UUID
        amount_minor: int
        currency: str
        reference: str | None
        metadata: dict[str, Any]
        pending: bool
        timeout_s: int | None
        reverses_id: UUID | None
        reverses_public_id: UUID | None
        occurred_at: datetime | None = None  # None: when recorded (`timestamp`); not stored then

        def apply(self, aggregate: Transfer) -> None:
            aggregate.tenant = self.tenant
            aggregate.public_id = self.public_id
            aggregate.kind = self.kind
            aggregate.debit_account_id = self.debit_account_id
            aggregate.credit_account_id = self.credit_account_id
            aggregate.debit_public_id = self.debit_public_id
            aggregate.credit_public_id = self.credit_public_id
            aggregate.amount_minor = self.amount_minor
            aggregate.currency = self.currency
            aggregate.reference = self.reference
            aggregate.metadata = self.metadata
            aggregate.pending = self.pending
            aggregate.timeout_s = self.timeout_s
            aggregate.reverses_id = self.reverses_id
            aggregate.reverses_public_id = self.reverses_public_id
            aggregate.status = PENDING if self.pending else POSTED
            aggregate.posted_amount_minor = 0 if self.pending else self.amount_minor
            aggregate.reversed_by_id = None
            aggregate.reversed_by_public_id = None
            aggregate.occurred_at = self.occurred_at

    class HoldPosted(Aggregate.Event):
        amount_minor: int

        def apply(self, aggregate: Transfer) -> None:
            aggregate.status = POSTED
            aggregate.posted_amount_minor = self.amount_minor

    class HoldVoided(Aggregate.Event):
        def apply(self, aggregate: Transfer) -> None:
            aggregate.status = VOIDED

    class HoldExpired(Aggregate.Event):
        def apply(self, aggregate: Transfer) -> None:
            aggregate.status = EXPIRED

    class Reversed(Aggregate.Event):
        reversal_id: UUID
        reversal_public_id: UUID

        def apply(self, aggregate: Transfer) -> None:
            aggregate.reversed_by_id = self.reversal_id
            aggregate.reversed_by_public_id = self.reversal_public_id

    # State attributes are set only by the events' apply methods (the aggregate metaclass
    # would turn class-level annotations into constructor parameters).
    @classmethod
    def initiate(
        cls,
        *,
        transfer_id: UUID,
        public_id: UUID,
        tenant: str,
        terms: TransferTerms,
        debit_account_id: UUID,
        credit_account_id: UUID,
        reverses: Transfer | None = None,
        created_on: datetime | None = None,
    ) -> Transfer:
        """`terms` must have been validated; the account ids are the accounts' storage keys."""
        # `created_on` starts the hold's timeout: it must come from the same clock that later
        # decides whether the hold is due (the ledger's), not the event's own wall clock.
        # Built as `cls._create(cls.Initiated, id=…, …)` builds it, without its generic keyword
        # handling (domain/events.py); the library's own `mutate` makes the aggregate.
        event = new_event(
            cls.Initiated,
            transfer_id,
            cls.INITIAL_VERSION,
            created_on if created_on is not None else cls.Initiated.create_timestamp(),
            originator_topic=_TOPIC,
            tenant=tenant,
            public_id=public_id,
            kind=terms.kind,
            debit_account_id=debit_account_id,
            credit_account_id=credit_account_id,
            debit_public_id=terms.debit_account_id,
            credit_public_id=terms.credit_account_id,
            amount_minor=terms.amount_minor,
            currency=terms.currency,
            reference=terms.reference,
            metadata=dict(terms.metadata or {}),
            pending=terms.pending,
            timeout_s=terms.timeout_s,
            reverses_id=None if reverses is None else reverses.id,
            reverses_public_id=None if reverses is None else reverses.public_id,
            occurred_at=terms.occurred_at,
        )
        agg = event.mutate(None)
        agg._pending_events.append(event)  # noqa: SLF001 - as _create does
        return agg

    # ---- queries -------------------------------------------------------------------------

    @property
    def expires_at(self) -> datetime | None:
        if not self.pending or self.timeout_s is None:
            return None
        return self.created_on + timedelta(seconds=self.timeout_s)

    def is_due(self, now: datetime) -> bool:
        expires_at = self.expires_at
        return self.status == PENDING and expires_at is not None and now >= expires_at

    @property
    def terms(self) -> TransferTerms:
        """What this transfer was made with, to compare with a repeated request (`==`)."""
        return TransferTerms(
            kind=self.kind,
            debit_account_id=self.debit_public_id,
            credit_account_id=self.credit_public_id,
            amount_minor=self.amount_minor,
            currency=self.currency,
            reference=self.reference,
            metadata=self.metadata,
            pending=self.pending,
            timeout_s=self.timeout_s,
            occurred_at=self.occurred_at,
        )

    @property
    def event_time(self) -> datetime:
        """When it happened: as the client said, else when it was recorded."""
        return self.occurred_at or self.created_on

    # ---- rules and commands -----------------------------------------------------------------

    def check_can_finish(self, now: datetime) -> None:
        # The same answer whether or not the expiry worker has recorded the expiry yet.
        if self.status == EXPIRED:
            raise TransferExpired("the hold has expired", transfer_id=str(self.public_id))
        if self.status != PENDING:
            raise TransferNotPending(f"transfer is {self.status}, not pending", transfer_id=str(self.public_id), status=self.status)
        if self.is_due(now):
            raise TransferExpired("the hold has expired", transfer_id=str(self.public_id))

    def post_hold(self, amount_minor: int | None, now: datetime) -> int:
        """Posts `amount_minor` (default: all) of the hold; returns the amount posted."""
        self.check_can_finish(now)
        amount = self.amount_minor if amount_minor is None else check_amount(amount_minor)
        if amount > self.amount_minor:
            raise ExceedsHeldAmount(
                "cannot post more than is held", transfer_id=str(self.public_id), held=self.amount_minor, amount=amount
            )
        self.trigger_event(self.HoldPosted, amount_minor=amount)
        return amount

    def void_hold(self, now: datetime) -> None:
        self.check_can_finish(now)
        self.trigger_event(self.HoldVoided)

    def expire_hold(self, now: datetime) -> None:
        assert self.is_due(now), "expire_hold on a hold that is not due"
        self.trigger_event(self.HoldExpired)

    def check_can_reverse(self) -> None:
        if self.status != POSTED:
            raise TransferNotPosted(f"only posted transfers can be reversed; this one is {self.status}", transfer_id=str(self.public_id))
        if self.reversed_by_id is not None:
            raise AlreadyReversed("transfer was already reversed", transfer_id=str(self.public_id), reversal_id=str(self.reversed_by_public_id))
        if self.posted_amount_minor == 0:
            raise TransferNotPosted("nothing was posted, nothing to reverse", transfer_id=str(self.public_id))

    def mark_reversed(self, reversal: Transfer) -> None:
        self.check_can_reverse()
        self.trigger_event(self.Reversed, reversal_id=reversal.id, reversal_public_id=reversal.public_id)


_TOPIC = get_topic(Transfer)
