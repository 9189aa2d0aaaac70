"""The unit of work of one batch: the aggregates it touches, with a savepoint per command.

A savepoint copies each aggregate's attributes the first time a command touches it; rolling
back restores them (aggregate state is flat: ints, strings and immutable values), so a rejected
or failed command contributes no events to the commit. It knows no handler and no Ledger: it
loads through the writer's cache and a store it is handed, and runs whatever it is given.

Failure isolation: a command that raises a DomainError is rejected; one that raises anything
else (a bug) fails alone as `CommandFailed` (500 `internal_error`, logged with the command),
rolled back like a rejection, and its batch-mates commit. Only a failure of the store itself
(it cannot be reached) fails the whole batch, because then nothing can commit.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from application.aggregate_cache import Aggregate, AggregateCache
from domain.account import Account
from domain.errors import DomainError, NotFound
from domain.identity import settlement_key
from domain.transfer import PENDING, Transfer

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures of the store (or the network to it): transient, and they fail a whole batch.
STORE_FAILURES: tuple[type[BaseException], ...] = (PersistenceError, OSError, TimeoutError)


class CommandFailed(DomainError):
    """A command failed for a reason that is not a rule of the ledger: a bug. Nothing of it was
    applied; the rest of its batch was. Never retried (it would fail again)."""

    code = "internal_error"


class AggregateStore(Protocol):
    def load(self, key: UUID) -> Aggregate | None:
        """The aggregate's current state from the store, or None if it does not exist."""


class UnitOfWork:
    def __init__(self, cache: AggregateCache, store: AggregateStore, now: datetime, *, check_existing: bool) -> None:
        self.cache = cache
        self.store = store
        self.now = now
        # Without check_existing, an id missing from the cache is taken to be new: a clash with
        # a stored aggregate then fails the commit, and the batch re-runs with checks on.
        self.check_existing = check_existing
        self.aggregates: dict[UUID, Aggregate] = {}
        self._saved: dict[UUID, dict[str, Any] | None] | None = None
        self._from_cache: set[UUID] = set()  # aggregates this batch took from the cache
        self.rejected_on_cached = False  # a command was rejected after reading one of them
        self._absent_unverified = False  # `existing` answered "new" without reading the store

    # ---- savepoints ------------------------------------------------------------------------

    def _touch(self, agg: Aggregate, *, new: bool = False) -> None:
        if self._saved is not None and agg.id not in self._saved:
            if new:
                self._saved[agg.id] = None
            else:
                state = dict(agg.__dict__)
                state["_pending_events"] = list(agg._pending_events)  # noqa: SLF001 - the savepoint
                self._saved[agg.id] = state
        self.aggregates[agg.id] = agg

    def _rollback(self) -> None:
        assert self._saved is not None
        for agg_id, state in self._saved.items():
            agg = self.aggregates[agg_id]
            if state is None:
                del self.aggregates[agg_id]
            else:
                agg.__dict__.clear()
                agg.__dict__.update(state)
        self._saved = None

    def run(self, handler: Callable[..., T], command: Any, *args: Any) -> T | DomainError:
        """Runs `handler(self, command, *args)` under a savepoint: its result, or the error that
        undid it."""
        self._saved = {}
        self._absent_unverified = False
        try:
            result = handler(self, command, *args)
        except DomainError as e:
            if self._absent_unverified and not self.check_existing:
                # The command took its id to be new without reading the store, then was refused:
                # it may be a repeat whose original the store holds (answered with the original,
                # not with today's refusal). Read the store and run it again.
                self._rollback()
                self.check_existing = True
                try:
                    return self.run(handler, command, *args)
                finally:
                    self.check_existing = False
            if not self._from_cache.isdisjoint(self._saved):
                self.rejected_on_cached = True
            self._rollback()
            if e.after_rollback is not None:  # the refusal itself, as a fact (outside the savepoint)
                e.after_rollback()
            return e
        except STORE_FAILURES:
            self._rollback()
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one command must not fail its batch-mates
            self._rollback()
            log.error("command %s failed: %s", type(command).__name__, type(e).__name__, exc_info=e)
            return CommandFailed("the command failed unexpectedly; it has been logged and nothing of it was applied")
        self._saved = None
        return result

    # ---- loading ---------------------------------------------------------------------------

    def _load(self, key: UUID) -> Aggregate | None:
        agg = self.aggregates.get(key)
        if agg is None:
            agg = self.cache.get(key)
            if agg is not None:
                self._from_cache.add(key)
            else:
                agg = self.store.load(key)
                if agg is None:
                    return None
                self.cache.put(agg)
        self._touch(agg)
        return agg

    def account(self, key: UUID, tenant: str | None) -> Account:
        """The account stored at `key`; NotFound unless it is an Account (of `tenant`, if given)."""
        agg = self._load(key)
        if not isinstance(agg, Account) or (tenant is not None and agg.tenant != tenant):
            raise NotFound("account not found")
        return agg

    def transfer(self, key: UUID, tenant: str | None) -> Transfer:
        agg = self._load(key)
        if not isinstance(agg, Transfer) or (tenant is not None and agg.tenant != tenant):
            raise NotFound("transfer not found")
        return agg

    def existing(self, key: UUID) -> Aggregate | None:
        """The aggregate at `key` if it exists, for create-or-return-original commands.

        Without check_existing only this batch and the cache are asked (a clash with the store
        fails the commit, which re-runs the batch with check_existing on: then the store is read).
        """
        agg = self.aggregates.get(key)
        if agg is None:
            agg = self.cache.get(key)
            if agg is not None:
                self._from_cache.add(key)
        if agg is not None:
            self._touch(agg)
            return agg
        if not self.check_existing:
            self._absent_unverified = True
            return None
        return self._load(key)

    def settlement(self, tenant: str, currency: str) -> Account:
        """The tenant's settlement account in `currency`, opened on first use. Its key lives in a
        namespace no client id reaches (domain/identity.py), so it can only be this account."""
        agg = self._load(settlement_key(tenant, currency))
        if agg is None:
            agg = Account.open_settlement(tenant=tenant, currency=currency)
            self.add(agg)
        if not isinstance(agg, Account) or not agg.is_settlement or agg.tenant != tenant:
            raise AssertionError(f"settlement key of {tenant}/{currency} holds something else")
        return agg

    def add(self, agg: Aggregate) -> None:
        self._touch(agg, new=True)

    # ---- after the commands ----------------------------------------------------------------

    def touched(self) -> list[Aggregate]:
        return [a for a in self.aggregates.values() if a.pending_events]

    def check_conservation(self) -> None:
        """TigerStyle: per tenant and currency, the posted balance changes of this unit of work
        sum to zero, and so do the held amounts on each side. Broken: a bug; never commit it."""
        posted: dict[tuple[str, str], int] = defaultdict(int)
        held: dict[tuple[str, str], int] = defaultdict(int)
        for agg in self.aggregates.values():
            if type(agg) is not Account:
                continue
            key = (agg.tenant, agg.currency)
            for e in agg.pending_events:
                delta = _DELTAS.get(type(e))
                if delta is not None:
                    d_posted, d_held = delta(e)
                    posted[key] += d_posted
                    held[key] += d_held
        broken = {k: v for k, v in posted.items() if v} | {k: v for k, v in held.items() if v}
        if broken:
            raise AssertionError(f"conservation broken by this unit of work: {broken}")

    def keep(self) -> None:
        """After a commit: keep accounts and open holds cached (finished transfers are rarely
        touched again; those few reload from the store)."""
        for agg in self.aggregates.values():
            if isinstance(agg, Transfer) and agg.status != PENDING:
                self.cache.evict(agg.id)
            else:
                self.cache.put(agg)

    def evict_all(self) -> None:
        for key in self.aggregates:
            self.cache.evict(key)


# (posted change, held change) of each balance event, for check_conservation: debits and held
# debits count negative, so a balanced unit of work sums to (0, 0) per tenant and currency.
_DELTAS: dict[type, Callable[[Any], tuple[int, int]]] = {
    Account.Debited: lambda e: (-e.amount_minor, 0),
    Account.Credited: lambda e: (e.amount_minor, 0),
    Account.DebitHeld: lambda e: (0, e.amount_minor),
    Account.CreditHeld: lambda e: (0, -e.amount_minor),
    Account.DebitHoldSettled: lambda e: (-e.posted_minor, -e.held_minor),
    Account.CreditHoldSettled: lambda e: (e.posted_minor, e.held_minor),
}

