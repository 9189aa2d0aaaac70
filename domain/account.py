"""The Account aggregate: one currency, a status, an overdraft limit and its balances.

Balances (all `int` minor units):
  posted            = credits - debits that are final
  pending_debits    = sum of open holds where this account is debited
  pending_credits   = sum of open holds where this account is credited
  available         = posted - pending_debits + overdraft_limit

Every command checks its rule and raises a DomainError before it triggers an event; the
`apply` method of each event is the only place state changes.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import (
    AccountClosed,
    EventTimeOutOfRange,
    AccountFrozen,
    AccountNotEmpty,
    BalanceOverflow,
    InsufficientFunds,
    SettlementAccountRestricted,
    ValidationFailed,
)
from domain.events import new_event
from domain.identity import settlement_key, settlement_public_id
from domain.limits import check_metadata, check_tenant
from domain.money import BALANCE_MAX_MINOR, BALANCE_MIN_MINOR, check_amount, check_currency

OPEN = "open"
FROZEN = "frozen"
CLOSED = "closed"

CUSTOMER = "customer"
SETTLEMENT = "settlement"

# How far a movement's event time may go back behind the latest one on its account.
EVENT_TIME_REORDER_TOLERANCE = timedelta(hours=1)
RECENT_REFUSALS_KEPT = 8  # refused transfer ids an account remembers, so a retried attempt counts once


class Account(Aggregate):
    """Stored under its storage key (`id`, domain/identity.py); `public_id` is the id its tenant
    knows it by."""

    # Attributes that are not named like an Opened field, with their types, for snapshots (which
    # store state as JSON): infrastructure/mapper.py restores them typed.
    snapshot_types: ClassVar[dict[str, Any]] = {
        "opened_at": datetime, "last_occurred_at": datetime, "recent_refusals": tuple[UUID, ...],
    }

    class Opened(Aggregate.Created):
        tenant: str
        public_id: UUID
        currency: str
        kind: str
        overdraft_limit_minor: int
        holder: dict[str, Any] | None
        metadata: dict[str, Any]
        # When it happened, when the client said (an import of history); None: when it was
        # recorded (`timestamp`). Not stored when None (infrastructure/mapper.py).
        occurred_at: datetime | None = None

        def apply(self, aggregate: Account) -> None:
            aggregate.tenant = self.tenant
            aggregate.public_id = self.public_id
            aggregate.currency = self.currency
            aggregate.kind = self.kind
            aggregate.overdraft_limit_minor = self.overdraft_limit_minor
            aggregate.holder = self.holder
            aggregate.holder_erased = False
            aggregate.metadata = self.metadata
            aggregate.status = OPEN
            aggregate.posted_minor = 0
            aggregate.pending_debits_minor = 0
            aggregate.pending_credits_minor = 0
            aggregate.opened_at = self.occurred_at or self.timestamp
            aggregate.last_occurred_at = aggregate.opened_at

    class Debited(Aggregate.Event):
        transfer_id: UUID
        amount_minor: int
        occurred_at: datetime | None = None  # the transfer's, when the client said

        def apply(self, aggregate: Account) -> None:
            aggregate.posted_minor -= self.amount_minor
            if self.occurred_at is not None and self.occurred_at > aggregate.last_occurred_at:
                aggregate.last_occurred_at = self.occurred_at

    class Credited(Aggregate.Event):
        transfer_id: UUID
        amount_minor: int
        occurred_at: datetime | None = None  # the transfer's, when the client said

        def apply(self, aggregate: Account) -> None:
            aggregate.posted_minor += self.amount_minor
            if self.occurred_at is not None and self.occurred_at > aggregate.last_occurred_at:
                aggregate.last_occurred_at = self.occurred_at

    class DebitHeld(Aggregate.Event):
        transfer_id: UUID
        amount_minor: int
        occurred_at: datetime | None = None  # the transfer's, when the client said

        def apply(self, aggregate: Account) -> None:
            aggregate.pending_debits_minor += self.amount_minor
            if self.occurred_at is not None and self.occurred_at > aggregate.last_occurred_at:
                aggregate.last_occurred_at = self.occurred_at

    class CreditHeld(Aggregate.Event):
        transfer_id: UUID
        amount_minor: int
        occurred_at: datetime | None = None  # the transfer's, when the client said

        def apply(self, aggregate: Account) -> None:
            aggregate.pending_credits_minor += self.amount_minor
            if self.occurred_at is not None and self.occurred_at > aggregate.last_occurred_at:
                aggregate.last_occurred_at = self.occurred_at

    class DebitHoldSettled(Aggregate.Event):
        """A debit hold ended: `posted_minor` of `held_minor` became final, the rest was released."""

        transfer_id: UUID
        held_minor: int
        posted_minor: int

        def apply(self, aggregate: Account) -> None:
            aggregate.pending_debits_minor -= self.held_minor
            aggregate.posted_minor -= self.posted_minor

    class CreditHoldSettled(Aggregate.Event):
        transfer_id: UUID
        held_minor: int
        posted_minor: int

        def apply(self, aggregate: Account) -> None:
            aggregate.pending_credits_minor -= self.held_minor
            aggregate.posted_minor += self.posted_minor

    class DebitRefused(Aggregate.Event):
        """A movement out of this account was refused (insufficient funds, frozen, closed): a
        fact the fraud module counts (repeated failed attempts are a takeover's signature). It
        changes no balance. `transfer_id`: the storage key the refused transfer would have had."""

        transfer_id: UUID
        amount_minor: int
        reason: str  # the refusal's error code
        occurred_at: datetime | None = None

        def apply(self, aggregate: Account) -> None:
            recent = getattr(aggregate, "recent_refusals", ())  # absent from snapshots made before it
            aggregate.recent_refusals = (*recent, self.transfer_id)[-RECENT_REFUSALS_KEPT:]

    class Frozen(Aggregate.Event):
        def apply(self, aggregate: Account) -> None:
            aggregate.status = FROZEN

    class Unfrozen(Aggregate.Event):
        def apply(self, aggregate: Account) -> None:
            aggregate.status = OPEN

    class Closed(Aggregate.Event):
        def apply(self, aggregate: Account) -> None:
            aggregate.status = CLOSED

    class HolderErased(Aggregate.Event):
        """The holder's personal data key was destroyed; the stored holder data is unreadable."""

        def apply(self, aggregate: Account) -> None:
            aggregate.holder = None
            aggregate.holder_erased = True

    # State attributes are set only by the events' apply methods (the aggregate metaclass
    # would turn class-level annotations into constructor parameters).
    @classmethod
    def open(
        cls,
        *,
        account_id: UUID,
        public_id: UUID,
        tenant: str,
        currency: str,
        overdraft_limit_minor: int = 0,
        holder: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> Account:
        check_currency(currency)
        if type(overdraft_limit_minor) is not int or not 0 <= overdraft_limit_minor <= BALANCE_MAX_MINOR:
            raise ValidationFailed("overdraft_limit must be a non-negative integer", overdraft_limit=str(overdraft_limit_minor))
        check_tenant(tenant)
        return cls._create(
            cls.Opened,
            id=account_id,
            tenant=tenant,
            public_id=public_id,
            currency=currency,
            kind=CUSTOMER,
            overdraft_limit_minor=overdraft_limit_minor,
            holder=holder,
            metadata=dict(check_metadata(metadata)),
            **({"occurred_at": occurred_at} if occurred_at is not None else {}),
        )

    @classmethod
    def open_settlement(cls, *, tenant: str, currency: str) -> Account:
        """The tenant's account for money outside the ledger; it may go negative without limit."""
        check_currency(currency)
        check_tenant(tenant)
        return cls._create(
            cls.Opened,
            id=settlement_key(tenant, currency),
            tenant=tenant,
            public_id=settlement_public_id(currency),
            currency=currency,
            kind=SETTLEMENT,
            overdraft_limit_minor=0,
            holder=None,
            metadata={},
        )

    # ---- queries -------------------------------------------------------------------------

    @property
    def is_settlement(self) -> bool:
        return self.kind == SETTLEMENT

    @property
    def available_minor(self) -> int:
        return self.posted_minor - self.pending_debits_minor + self.overdraft_limit_minor

    # ---- rules ---------------------------------------------------------------------------

    def check_can_debit(self, amount_minor: int) -> None:
        check_amount(amount_minor)
        if self.status == FROZEN:
            raise AccountFrozen("account is frozen; debits are not allowed", account_id=str(self.public_id))
        if self.status == CLOSED:
            raise AccountClosed("account is closed", account_id=str(self.public_id))
        if self.is_settlement:
            # Settlement balances are unbounded below, but must stay in 64-bit range.
            if self.posted_minor - self.pending_debits_minor - amount_minor < BALANCE_MIN_MINOR:
                raise BalanceOverflow("settlement balance would leave the 64-bit range", account_id=str(self.public_id))
            return
        if self.available_minor - amount_minor < 0:
            raise InsufficientFunds(
                "insufficient funds",
                account_id=str(self.public_id),
                available=self.available_minor,
                amount=amount_minor,
            )

    def check_can_credit(self, amount_minor: int) -> None:
        check_amount(amount_minor)
        if self.status == CLOSED:
            raise AccountClosed("account is closed", account_id=str(self.public_id))
        if self.posted_minor + self.pending_credits_minor + amount_minor > BALANCE_MAX_MINOR:
            raise BalanceOverflow("balance would leave the 64-bit range", account_id=str(self.public_id))

    # ---- commands ------------------------------------------------------------------------

    def debit(self, transfer_id: UUID, amount_minor: int, occurred_at: datetime | None = None) -> None:
        self.check_can_debit(amount_minor)
        self._trigger(self.Debited, transfer_id, amount_minor, occurred_at)

    def credit(self, transfer_id: UUID, amount_minor: int, occurred_at: datetime | None = None) -> None:
        self.check_can_credit(amount_minor)
        self._trigger(self.Credited, transfer_id, amount_minor, occurred_at)

    def hold_debit(self, transfer_id: UUID, amount_minor: int, occurred_at: datetime | None = None) -> None:
        self.check_can_debit(amount_minor)
        self._trigger(self.DebitHeld, transfer_id, amount_minor, occurred_at)

    def hold_credit(self, transfer_id: UUID, amount_minor: int, occurred_at: datetime | None = None) -> None:
        self.check_can_credit(amount_minor)
        self._trigger(self.CreditHeld, transfer_id, amount_minor, occurred_at)

    def _trigger(self, event_class: type, transfer_id: UUID, amount_minor: int, occurred_at: datetime | None) -> None:
        """`trigger_event(event_class, …)` for a balance event, without the generic machinery
        (domain/events.py): built, applied, versioned and made pending exactly as it does."""
        event = new_event(event_class, self.id, self.version + 1, event_class.create_timestamp(),
                          transfer_id=transfer_id, amount_minor=amount_minor, occurred_at=occurred_at)  # fmt: skip
        event.apply(self)
        self.version = event.originator_version
        self.modified_on = event.timestamp
        self._pending_events.append(event)

    def check_event_time(self, occurred_at: datetime) -> None:
        """A movement said to have happened at `occurred_at` (SPEC: event time): not before the
        account was opened, and not more than EVENT_TIME_REORDER_TOLERANCE before the latest event
        time already on it (history arrives in order, give or take)."""
        if occurred_at < self.opened_at:
            raise EventTimeOutOfRange(
                "occurred_at is before the account was opened", field="occurred_at", account_id=str(self.public_id),
                opened_at=self.opened_at.isoformat(),
            )  # fmt: skip
        if occurred_at < self.last_occurred_at - EVENT_TIME_REORDER_TOLERANCE:
            raise EventTimeOutOfRange(
                f"occurred_at is more than {int(EVENT_TIME_REORDER_TOLERANCE.total_seconds())} s before the latest "
                "movement of this account", field="occurred_at", account_id=str(self.public_id),
                latest=self.last_occurred_at.isoformat(),
            )  # fmt: skip

    def settle_debit_hold(self, transfer_id: UUID, held_minor: int, posted_minor: int) -> None:
        # Posting a hold never needs new funds: they were reserved when the hold was placed,
        # so a frozen account's holds can still be posted or released.
        assert 0 <= posted_minor <= held_minor <= self.pending_debits_minor, "hold bookkeeping broken"
        self.trigger_event(
            self.DebitHoldSettled, transfer_id=transfer_id, held_minor=held_minor, posted_minor=posted_minor
        )

    def settle_credit_hold(self, transfer_id: UUID, held_minor: int, posted_minor: int) -> None:
        assert 0 <= posted_minor <= held_minor <= self.pending_credits_minor, "hold bookkeeping broken"
        self.trigger_event(
            self.CreditHoldSettled, transfer_id=transfer_id, held_minor=held_minor, posted_minor=posted_minor
        )

    def record_refused_debit(self, transfer_id: UUID, amount_minor: int, reason: str, occurred_at: datetime | None) -> None:
        """Records the refusal once per attempt: the same transfer refused again (a retry of the same
        request, an import run again) among the account's last RECENT_REFUSALS_KEPT refusals is not
        a new attempt."""
        if transfer_id in getattr(self, "recent_refusals", ()):
            return
        extra = {"occurred_at": occurred_at} if occurred_at is not None else {}
        self.trigger_event(self.DebitRefused, transfer_id=transfer_id, amount_minor=amount_minor, reason=reason, **extra)

    def freeze(self) -> bool:
        """Returns False (and records nothing) when the account is already frozen."""
        self._check_customer_status_change()
        if self.status == FROZEN:
            return False
        self.trigger_event(self.Frozen)
        return True

    def unfreeze(self) -> bool:
        self._check_customer_status_change()
        if self.status == OPEN:
            return False
        self.trigger_event(self.Unfrozen)
        return True

    def close(self) -> bool:
        if self.is_settlement:
            raise SettlementAccountRestricted("settlement accounts cannot be closed", account_id=str(self.public_id))
        if self.status == CLOSED:
            return False
        if self.posted_minor != 0 or self.pending_debits_minor != 0 or self.pending_credits_minor != 0:
            raise AccountNotEmpty(
                "only an account with zero posted and pending balances can be closed",
                account_id=str(self.public_id),
                posted=self.posted_minor,
                pending_debits=self.pending_debits_minor,
                pending_credits=self.pending_credits_minor,
            )
        self.trigger_event(self.Closed)
        return True

    def erase_holder(self) -> bool:
        if self.holder is None:
            return False
        self.trigger_event(self.HolderErased)
        return True

    def _check_customer_status_change(self) -> None:
        if self.is_settlement:
            raise SettlementAccountRestricted("settlement accounts cannot be frozen", account_id=str(self.public_id))
        if self.status == CLOSED:
            raise AccountClosed("account is closed", account_id=str(self.public_id))
