"""The Ledger application: every money movement, as commands applied to Account and Transfer
aggregates and saved with one `save(...)` per commit.

`Ledger.execute_batch` is the single write path. It applies a list of commands in order to a
unit of work, giving each command a savepoint so that a failing command leaves no trace, then
saves everything in one commit. A conflict with another writer (optimistic concurrency) re-runs
the whole batch against fresh state, a bounded number of times.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError

from application.commands import (
    AccountState,
    BatchResult,
    CloseAccount,
    Command,
    Deposit,
    ExpireHold,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    Result,
    ReverseTransfer,
    TransferBatch,
    TransferState,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
)
from application.ports import AggregateLoader, IdempotencyRecord, NoLease, WriteLease
from application.privacy import ERASED, EraseHolder, HolderVault
from domain.account import Account, settlement_account_id
from domain.errors import (
    ConcurrencyConflict,
    DomainError,
    ExistsWithDifferentFields,
    NotFound,
    SameAccount,
    TransferExpired,
    ValidationFailed,
)
from domain.limits import check_metadata
from domain.money import check_amount, check_currency
from domain.transfer import DEPOSIT, PENDING, REVERSAL, TRANSFER, WITHDRAWAL, Transfer

log = logging.getLogger(__name__)

CONFLICT_RETRIES_MAX = 30
CONFLICT_BACKOFF_MAX_S = 0.05
# How long a writer waits for another process's batch before going ahead optimistically.
LEASE_WAIT_S = 2.0
# More foreign events than this since the last batch: drop the whole cache instead.
CACHE_TAIL_MAX = 20_000
BATCH_ITEMS_MAX = 1000
AGGREGATE_CACHE_MAX = 200_000
# Reversal ids are derived from the original, so a repeated reverse can never reverse twice.
REVERSAL_NAMESPACE = UUID("0f3c5a2e-7d4b-4c1e-b6a9-5e2d8c7f1a34")


def utcnow() -> datetime:
    return datetime.now(tz=timezone.utc)


def account_state(a: Account, vault: HolderVault | None = None) -> AccountState:
    # The aggregate holds the holder sealed (application/privacy.py); only here is it revealed.
    if getattr(a, "holder_erased", False):
        holder: dict[str, Any] | None = dict(ERASED)  # shown as erased, not as "never had one"
    else:
        holder = vault.reveal(a.holder) if vault is not None and a.holder is not None else a.holder
    return AccountState(
        id=a.id,
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
    )


def transfer_state(t: Transfer) -> TransferState:
    return TransferState(
        id=t.id,
        tenant=t.tenant,
        kind=t.kind,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount_minor=t.amount_minor,
        currency=t.currency,
        reference=t.reference,
        metadata=t.metadata,
        pending=t.pending,
        timeout_s=t.timeout_s,
        status=t.status,
        posted_amount_minor=t.posted_amount_minor,
        reverses_id=t.reverses_id,
        reversed_by_id=t.reversed_by_id,
        created_at=t.created_on.isoformat(),
        version=t.version,
    )


class Ledger(Application[UUID]):
    name = "ledger"
    snapshotting_intervals = {Account: 100}  # noqa: RUF012 - eventsourcing reads a class attribute

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env)
        # The writer's cache of current aggregates. Only the thread that runs execute_batch
        # touches it; anything that fails to save is evicted and reloaded on retry.
        self._cache: OrderedDict[UUID, Account | Transfer] = OrderedDict()
        # Time as the ledger sees it when deciding whether a hold is due; tests move it.
        self.clock: Callable[[], datetime] = utcnow
        # Seals holder personal data before it enters an event; set by the composition root.
        self.holder_vault: HolderVault | None = None
        # Serialises batches across processes on one database; set by the composition root.
        self.write_lease: WriteLease = NoLease()
        # Loads a batch's uncached aggregates in one round trip (PostgreSQL); None: one by one.
        self.aggregate_loader: AggregateLoader | None = None
        # Cache coherence across processes: the log position up to which the cache is known to
        # be current, and the positions of our own commits after it (those need no eviction).
        self._seen: int | None = None
        self._own_positions: set[int] = set()
        # Batches re-run after an optimistic-concurrency conflict (exported as a metric).
        self.conflict_retries = 0
        # The cache and its aggregates are mutated by a batch: one batch at a time per process
        # (the group-commit writer is the usual only caller; this makes direct callers safe).
        self._batch_lock = threading.Lock()

    def close(self) -> None:
        self.write_lease.close()
        super().close()

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """As Application.save, for aggregates only, without its per-object isinstance checks
        against runtime Protocols (~30 µs each: a third of a 1,000-transfer batch's CPU)."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        due: list[Any] = []  # aggregates whose new events reach a multiple of their snapshot interval
        for agg in objs:
            events = agg.collect_events()
            processing_event.events.extend(events)
            processing_event.aggregates[agg.id] = agg
            interval = self.snapshotting_intervals.get(type(agg))
            if interval and events and agg.version // interval != (agg.version - len(events)) // interval:
                due.append(agg)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._snapshot(due)
        self._notify(recordings)
        return recordings

    def _snapshot(self, aggregates: list[Any]) -> None:
        """Snapshots of aggregates just saved, from the aggregates in hand — their saved state,
        all of it committed now — where the library reloads each from the store (a snapshot and
        up to 99 events, a round trip, runtime Protocol checks per event: that was 8 ms of a
        40-transfer batch's 24 ms). An aggregate whose batch crossed a multiple of its interval
        is snapshotted at the batch's end, so snapshots are at most one batch apart from there."""
        if self.snapshots is not None and aggregates:
            self.snapshots.put([type(agg).Snapshot.take(agg) for agg in aggregates])

    # ---- queries (read the store; never the writer's cache, which is not thread-safe) ----

    def get_account(self, account_id: UUID, tenant: str | None = None) -> AccountState:
        return account_state(self._load_account(account_id, tenant), self.holder_vault)

    def get_transfer(self, transfer_id: UUID, tenant: str | None = None) -> TransferState:
        t = self._read(transfer_id)
        if t is None:
            raise NotFound("transfer not found", transfer_id=str(transfer_id))
        if not isinstance(t, Transfer) or (tenant is not None and t.tenant != tenant):
            raise NotFound("transfer not found", transfer_id=str(transfer_id))
        return transfer_state(t)

    def account_at(self, account_id: UUID, version: int) -> AccountState:
        try:
            a = self.repository.get(account_id, version=version)
        except AggregateNotFoundError:
            raise NotFound("account not found", account_id=str(account_id)) from None
        if not isinstance(a, Account):
            raise NotFound("account not found", account_id=str(account_id))
        return account_state(a, self.holder_vault)

    def _read(self, aggregate_id: UUID) -> Any:
        """The aggregate's current state from the store (None if it does not exist), for reads
        on any thread. With the bulk loader: one round trip for snapshot and events, where the
        repository makes two transactions of three each (6 of a balance read's round trips)."""
        if self.aggregate_loader is None:
            try:
                return self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
        return self._fold(self.aggregate_loader.load([aggregate_id]).get(aggregate_id, []))

    def _fold(self, stored: Sequence[Any]) -> Any:
        agg: Any = None
        for event in map(self.mapper.to_domain_event, stored):
            agg = event.mutate(agg)
        return agg

    def _load_account(self, account_id: UUID, tenant: str | None) -> Account:
        a = self._read(account_id)
        if a is None:
            raise NotFound("account not found", account_id=str(account_id))
        if not isinstance(a, Account) or (tenant is not None and a.tenant != tenant):
            raise NotFound("account not found", account_id=str(account_id))
        return a

    # ---- the write path --------------------------------------------------------------------

    def execute(self, command: Command) -> Result:
        """Runs one command in its own commit; raises its DomainError. For tests and the CLI."""
        (outcome,) = self.execute_batch([command])
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    def execute_batch(
        self,
        commands: Sequence[Command],
        idempotency: Sequence[Callable[[Result | DomainError], IdempotencyRecord | None] | None] | None = None,
    ) -> list[Result | DomainError]:
        """Applies `commands` in order and commits all their effects at once.

        Returns one outcome per command: its result, or the DomainError that rejected it (and
        left no trace). `idempotency[i]`, when given, renders command i's outcome as the
        IdempotencyRecord that is stored in the same transaction as the effect.
        """
        with self._batch_lock:
            leased = self.write_lease.acquire(LEASE_WAIT_S)
            try:
                self._forget_foreign_writes()
                return self._execute_batch(commands, idempotency, cache_is_current=leased)
            finally:
                if leased:
                    self.write_lease.release()

    def _forget_foreign_writes(self) -> None:
        """Brings the cache up to date with what other processes committed since our last batch.

        Reads the log after the last position we have accounted for. An event that is not one
        of our own commits is applied to our cached copy of its aggregate when it is the next
        version (cheap replication: no reload), and evicts the copy otherwise.
        """
        if self._seen is None:
            self._seen = self.recorder.max_notification_id() or 0
            self._cache.clear()
            return
        tail = self.recorder.select_notifications(start=self._seen, limit=CACHE_TAIL_MAX, inclusive_of_start=False)
        if len(tail) >= CACHE_TAIL_MAX:
            self._cache.clear()
            self._own_positions.clear()
            self._seen = self.recorder.max_notification_id() or 0
            return
        for n in tail:
            assert n.id > self._seen, "notification log positions must increase"
            self._seen = n.id
            if n.id in self._own_positions:
                continue
            cached = self._cache.get(n.originator_id)
            if cached is None:
                continue
            if n.originator_version == cached.version + 1:
                try:
                    self.mapper.to_domain_event(n).mutate(cached)
                    continue
                except Exception:  # noqa: BLE001 - any doubt: reload from the store instead
                    log.warning("could not apply foreign event at %d; evicting", n.id)
            self._cache.pop(n.originator_id, None)
        self._own_positions = {p for p in self._own_positions if p > self._seen}

    def _note_own_commit(self, positions: list[int]) -> None:
        """Our commit's positions: directly after what we have seen means nobody else committed
        in between (positions are handed out under the events table lock), so skip them."""
        if not positions:
            return
        contiguous = positions[-1] - positions[0] == len(positions) - 1
        if self._seen is not None and contiguous and positions[0] == self._seen + 1 and not self._own_positions:
            self._seen = positions[-1]
        else:
            self._own_positions.update(positions)

    def _execute_batch(
        self,
        commands: Sequence[Command],
        idempotency: Sequence[Callable[[Result | DomainError], IdempotencyRecord | None] | None] | None,
        *,
        cache_is_current: bool,
    ) -> list[Result | DomainError]:
        check_existing = False
        renders = list(idempotency) if idempotency else [None] * len(commands)
        for attempt in range(CONFLICT_RETRIES_MAX):
            uow = UnitOfWork(self, check_existing=check_existing)
            try:
                self._prefetch(commands)
                outcomes, skipped = self._run_all(uow, commands, renders, check_existing=check_existing)
                if attempt == 0 and uow.rejected_on_cached and not cache_is_current:
                    # A rejection (insufficient funds, frozen, ...) decided on a cached
                    # aggregate that another process may have changed since: the commit checks
                    # only aggregates that change, so re-decide once against stored state
                    # before a stale "no" is answered and stored as the idempotent response.
                    # (Under the write lease the cache was just brought up to date from the log.)
                    uow.evict_all()
                    continue
                records: list[IdempotencyRecord] = []
                for i, (render, outcome) in enumerate(zip(renders, outcomes, strict=True)):
                    if render is not None and i not in skipped:
                        record = render(outcome)
                        if record is not None:
                            records.append(record)
                recordings = self.save(*uow.touched(), idempotency=records)
            except IntegrityError:
                # Another writer got there first (same aggregate version, same new id, or same
                # idempotency key). Forget what we believed and re-run against fresh state.
                uow.evict_all()
                check_existing = True
                self.conflict_retries += 1
                # Jittered exponential backoff, so two writers hammering the same accounts
                # stop colliding in lock-step.
                time.sleep(random.uniform(0, min(CONFLICT_BACKOFF_MAX_S, 0.001 * 2**attempt)))
                log.info("ledger batch conflict, retrying (attempt %d, %d commands)", attempt + 1, len(commands))
                continue
            except BaseException:
                # Whatever failed — the store while loading an aggregate, a renderer's lookup,
                # the commit — the cached aggregates this batch changed hold events that were
                # never saved. Kept, a later batch would save them: a transfer applied twice.
                uow.evict_all()
                raise
            uow.keep()
            self._note_own_commit(sorted(r.notification.id for r in recordings))
            return outcomes
        conflict = ConcurrencyConflict("the command conflicted with concurrent writes; retry it")
        return [conflict for _ in commands]

    @staticmethod
    def _run_all(
        uow: UnitOfWork, commands: Sequence[Command], renders: list[Any], *, check_existing: bool
    ) -> tuple[list[Result | DomainError], set[int]]:
        outcomes: list[Result | DomainError] = []
        skipped: set[int] = set()
        for i, (c, render) in enumerate(zip(commands, renders, strict=True)):
            if check_existing and _already_recorded(render):
                # Another writer stored this command's response first (a retry of the same
                # Idempotency-Key racing in another process). Its outcome is the answer, so
                # this command must add nothing: not even when that outcome was a rejection.
                outcomes.append(ConcurrencyConflict("answered by another writer"))
                skipped.add(i)
                continue
            outcomes.append(uow.run(c))
        return outcomes, skipped

    def _prefetch(self, commands: Sequence[Command]) -> None:
        """Puts the aggregates `commands` name into the cache, those missing loaded in one query.

        They are current as of that read, like any aggregate loaded on demand: another
        process's later commit is caught by the commit's version check and the log tail.
        """
        if self.aggregate_loader is None:
            return
        missing = [i for i in dict.fromkeys(_named_ids(commands)) if i not in self._cache]
        if len(missing) < 2:  # one aggregate: loading it on demand costs the same
            return
        for stored in self.aggregate_loader.load(missing).values():
            agg = self._fold(stored)
            if isinstance(agg, (Account, Transfer)):
                self._cache_put(agg)

    # cache helpers used by UnitOfWork
    def _cache_get(self, aggregate_id: UUID) -> Account | Transfer | None:
        agg = self._cache.get(aggregate_id)
        if agg is not None:
            self._cache.move_to_end(aggregate_id)
        return agg

    def _cache_put(self, agg: Account | Transfer) -> None:
        self._cache[agg.id] = agg
        self._cache.move_to_end(agg.id)
        while len(self._cache) > AGGREGATE_CACHE_MAX:
            self._cache.popitem(last=False)

    def _cache_evict(self, aggregate_id: UUID) -> None:
        self._cache.pop(aggregate_id, None)


def _named_ids(commands: Sequence[Command]) -> list[UUID]:
    """The existing aggregates commands will load, as far as the commands name them."""
    ids: list[UUID] = []
    for c in commands:
        if isinstance(c, MakeTransfer):
            ids += (c.debit_account_id, c.credit_account_id)
        elif isinstance(c, TransferBatch):
            for item in c.items:
                ids += (item.debit_account_id, item.credit_account_id)
        elif isinstance(c, (Deposit, Withdraw)):
            ids += (c.account_id, settlement_account_id(c.tenant, c.currency))
        elif isinstance(c, (FreezeAccount, UnfreezeAccount, CloseAccount, EraseHolder)):
            ids.append(c.account_id)
        elif isinstance(c, (PostTransfer, VoidTransfer, ReverseTransfer, ExpireHold)):
            ids.append(c.transfer_id)
    return ids


def _already_recorded(render: Any) -> bool:
    """Whether the idempotency renderer's key already has a stored response (renderers may
    offer `recorded()`; the API's do)."""
    recorded = getattr(render, "recorded", None)
    return bool(recorded is not None and recorded())


class UnitOfWork:
    """The aggregates one batch touches, with a savepoint per command.

    A savepoint copies each aggregate's attributes the first time a command touches it;
    rolling back restores them (aggregate state is flat: ints, strings and immutable values),
    so a rejected command contributes no events to the commit.
    """

    def __init__(self, ledger: Ledger, *, check_existing: bool) -> None:
        self.ledger = ledger
        # Without check_existing, an id missing from the cache is taken to be new: a clash with
        # a stored aggregate then fails the commit, and the batch re-runs with checks on.
        self.check_existing = check_existing
        self.aggregates: dict[UUID, Account | Transfer] = {}
        self._saved: dict[UUID, dict[str, Any] | None] | None = None
        self.now = ledger.clock()
        self._from_cache: set[UUID] = set()  # aggregates this batch took from the ledger's cache
        self.rejected_on_cached = False  # a command was rejected after reading one of them

    # ---- savepoints ------------------------------------------------------------------------

    def _touch(self, agg: Account | Transfer, *, new: bool = False) -> None:
        if self._saved is not None and agg.id not in self._saved:
            if new:
                self._saved[agg.id] = None
            else:
                state = dict(agg.__dict__)
                state["_pending_events"] = list(agg._pending_events)  # noqa: SLF001
                self._saved[agg.id] = state
        self.aggregates[agg.id] = agg

    def _begin(self) -> None:
        self._saved = {}

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

    def _release(self) -> None:
        self._saved = None

    def run(self, command: Command) -> Result | DomainError:
        if isinstance(command, TransferBatch) and not command.atomic:
            if len(command.items) > BATCH_ITEMS_MAX:
                return ValidationFailed(f"a batch holds at most {BATCH_ITEMS_MAX} transfers", size=len(command.items))
            return BatchResult(atomic=False, results=tuple(self._run_one(item) for item in command.items))
        return self._run_one(command)

    def _run_one(self, command: Command) -> Any:
        self._begin()
        try:
            result = HANDLERS[type(command)](self, command)
        except DomainError as e:
            if self._saved is not None and not self._from_cache.isdisjoint(self._saved):
                self.rejected_on_cached = True
            self._rollback()
            return e
        except BaseException:
            self._rollback()
            raise
        self._release()
        return result

    # ---- loading ---------------------------------------------------------------------------

    def _load(self, aggregate_id: UUID) -> Account | Transfer | None:
        agg = self.aggregates.get(aggregate_id)
        if agg is None:
            agg = self.ledger._cache_get(aggregate_id)  # noqa: SLF001
            if agg is not None:
                self._from_cache.add(aggregate_id)
            else:
                try:
                    agg = self.ledger.repository.get(aggregate_id)
                except AggregateNotFoundError:
                    return None
                self.ledger._cache_put(agg)  # noqa: SLF001
        self._touch(agg)
        return agg

    def account(self, account_id: UUID, tenant: str | None) -> Account:
        agg = self._load(account_id)
        if not isinstance(agg, Account) or (tenant is not None and agg.tenant != tenant):
            raise NotFound("account not found", account_id=str(account_id))
        return agg

    def transfer(self, transfer_id: UUID, tenant: str | None) -> Transfer:
        agg = self._load(transfer_id)
        if not isinstance(agg, Transfer) or (tenant is not None and agg.tenant != tenant):
            raise NotFound("transfer not found", transfer_id=str(transfer_id))
        return agg

    def existing(self, aggregate_id: UUID, *, client_supplied: bool) -> Account | Transfer | None:
        """The aggregate with this id if it exists, for create-or-return-original commands."""
        agg = self.aggregates.get(aggregate_id)
        if agg is None:
            agg = self.ledger._cache_get(aggregate_id)  # noqa: SLF001
            if agg is not None:
                self._from_cache.add(aggregate_id)
        if agg is not None:
            self._touch(agg)
            return agg
        if not client_supplied or not self.check_existing:
            return None
        return self._load(aggregate_id)

    def settlement(self, tenant: str, currency: str) -> Account:
        account_id = settlement_account_id(tenant, currency)
        agg = self._load(account_id)
        if agg is None:
            agg = Account.open_settlement(tenant=tenant, currency=currency)
            self.add(agg)
        assert isinstance(agg, Account)
        return agg

    def add(self, agg: Account | Transfer) -> None:
        self._touch(agg, new=True)

    # ---- after the commit ------------------------------------------------------------------

    def touched(self) -> list[Account | Transfer]:
        return [a for a in self.aggregates.values() if a.pending_events]

    def keep(self) -> None:
        for agg in self.aggregates.values():
            if isinstance(agg, Transfer) and agg.status != PENDING:
                # A finished transfer is rarely touched again (a reverse, a repeated id): keep
                # memory for accounts and open holds; those few reload from the store.
                self.ledger._cache_evict(agg.id)  # noqa: SLF001
            else:
                self.ledger._cache_put(agg)  # noqa: SLF001

    def evict_all(self) -> None:
        for agg_id in self.aggregates:
            self.ledger._cache_evict(agg_id)  # noqa: SLF001


# ---- handlers: each checks every rule before it triggers any event --------------------------


def _open_account(uow: UnitOfWork, c: OpenAccount) -> AccountState:
    check_currency(c.currency)
    metadata = check_metadata(c.metadata)
    account_id = c.account_id or uuid.uuid4()
    found = uow.existing(account_id, client_supplied=c.account_id is not None)
    if found is not None:
        same = (
            isinstance(found, Account)
            and found.tenant == c.tenant
            and found.currency == c.currency
            and found.overdraft_limit_minor == c.overdraft_limit_minor
            and found.metadata == metadata
        )
        if not same:
            if isinstance(found, Account) and found.tenant != c.tenant:
                # Never reveal another tenant's account; the id is simply unavailable.
                raise ExistsWithDifferentFields("an account with this id already exists", account_id=str(account_id))
            raise ExistsWithDifferentFields("an account with this id exists with different fields", account_id=str(account_id))
        return account_state(found, uow.ledger.holder_vault)
    account = Account.open(
        account_id=account_id,
        tenant=c.tenant,
        currency=c.currency,
        overdraft_limit_minor=c.overdraft_limit_minor,
        holder=_seal_holder(uow.ledger.holder_vault, account_id, c.holder),
        metadata=metadata,
    )
    uow.add(account)
    return account_state(account, uow.ledger.holder_vault)


def _seal_holder(vault: HolderVault | None, account_id: UUID, holder: dict[str, Any] | None) -> dict[str, Any] | None:
    if holder is None or vault is None:
        return holder
    if not isinstance(holder, dict):
        raise ValidationFailed("holder must be an object")
    return vault.seal(account_id, holder)


def _move(
    uow: UnitOfWork,
    *,
    tenant: str,
    kind: str,
    transfer_id: UUID | None,
    debit: Account,
    credit: Account,
    amount_minor: int,
    currency: str,
    reference: str | None,
    metadata: dict[str, Any] | None,
    pending: bool = False,
    timeout_s: int | None = None,
    reverses_id: UUID | None = None,
) -> TransferState:
    Transfer.validate(
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        debit_currency=debit.currency,
        credit_currency=credit.currency,
        amount_minor=amount_minor,
        currency=currency,
        reference=reference,
        metadata=metadata,
        pending=pending,
        timeout_s=timeout_s,
    )
    debit.check_can_debit(amount_minor)
    credit.check_can_credit(amount_minor)
    transfer = Transfer.initiate(
        transfer_id=transfer_id or uuid.uuid4(),
        tenant=tenant,
        kind=kind,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount_minor=amount_minor,
        currency=currency,
        reference=reference,
        metadata=metadata,
        pending=pending,
        timeout_s=timeout_s,
        reverses_id=reverses_id,
        created_on=uow.now,
    )
    uow.add(transfer)
    if pending:
        debit.hold_debit(transfer.id, amount_minor)
        credit.hold_credit(transfer.id, amount_minor)
    else:
        debit.debit(transfer.id, amount_minor)
        credit.credit(transfer.id, amount_minor)
    return transfer_state(transfer)


def _repeat(uow: UnitOfWork, transfer_id: UUID | None, **fields: Any) -> TransferState | None:
    """The original result when this transfer id was already used with the same fields."""
    if transfer_id is None:
        return None
    found = uow.existing(transfer_id, client_supplied=True)
    if found is None:
        return None
    if isinstance(found, Transfer) and found.same_request(**fields):
        return transfer_state(found)
    raise ExistsWithDifferentFields("a transfer with this id exists with different fields", transfer_id=str(transfer_id))


def _make_transfer(uow: UnitOfWork, c: MakeTransfer) -> TransferState:
    check_amount(c.amount_minor)
    metadata = check_metadata(c.metadata)
    repeated = _repeat(
        uow,
        c.transfer_id,
        tenant=c.tenant,
        kind=TRANSFER,
        debit_account_id=c.debit_account_id,
        credit_account_id=c.credit_account_id,
        amount_minor=c.amount_minor,
        currency=c.currency,
        reference=c.reference,
        metadata=metadata,
        pending=c.pending,
        timeout_s=c.timeout_s,
    )
    if repeated is not None:
        return repeated
    if c.debit_account_id == c.credit_account_id:
        raise SameAccount("debit and credit account must differ", account_id=str(c.debit_account_id))
    return _move(
        uow,
        tenant=c.tenant,
        kind=TRANSFER,
        transfer_id=c.transfer_id,
        debit=uow.account(c.debit_account_id, c.tenant),
        credit=uow.account(c.credit_account_id, c.tenant),
        amount_minor=c.amount_minor,
        currency=c.currency,
        reference=c.reference,
        metadata=metadata,
        pending=c.pending,
        timeout_s=c.timeout_s,
    )


def _deposit(uow: UnitOfWork, c: Deposit) -> TransferState:
    return _against_settlement(uow, c, DEPOSIT)


def _withdraw(uow: UnitOfWork, c: Withdraw) -> TransferState:
    return _against_settlement(uow, c, WITHDRAWAL)


def _against_settlement(uow: UnitOfWork, c: Deposit | Withdraw, kind: str) -> TransferState:
    """A deposit credits the account from the tenant's settlement account; a withdrawal debits it."""
    check_amount(c.amount_minor)
    check_currency(c.currency)
    metadata = check_metadata(c.metadata)
    settlement_id = settlement_account_id(c.tenant, c.currency)
    debit_id, credit_id = (settlement_id, c.account_id) if kind == DEPOSIT else (c.account_id, settlement_id)
    repeated = _repeat(
        uow, c.transfer_id, tenant=c.tenant, kind=kind, debit_account_id=debit_id, credit_account_id=credit_id,
        amount_minor=c.amount_minor, currency=c.currency, reference=c.reference, metadata=metadata,
        pending=False, timeout_s=None,
    )  # fmt: skip
    if repeated is not None:
        return repeated
    account = uow.account(c.account_id, c.tenant)
    settlement = uow.settlement(c.tenant, c.currency)
    debit, credit = (settlement, account) if kind == DEPOSIT else (account, settlement)
    return _move(
        uow, tenant=c.tenant, kind=kind, transfer_id=c.transfer_id, debit=debit, credit=credit,
        amount_minor=c.amount_minor, currency=c.currency, reference=c.reference, metadata=metadata,
    )  # fmt: skip


def _atomic_batch(uow: UnitOfWork, c: TransferBatch) -> BatchResult:
    if len(c.items) > BATCH_ITEMS_MAX:
        raise ValidationFailed(f"a batch holds at most {BATCH_ITEMS_MAX} transfers", size=len(c.items))
    results: list[TransferState] = []
    for index, item in enumerate(c.items):
        try:
            results.append(_make_transfer(uow, item))
        except DomainError as e:
            # One failure fails the batch; the caller's savepoint undoes every item.
            e.details["index"] = index
            raise
    return BatchResult(atomic=True, results=tuple(results))


def _post(uow: UnitOfWork, c: PostTransfer) -> TransferState:
    t = uow.transfer(c.transfer_id, c.tenant)
    if t.is_due(uow.now):
        return _expire_instead(uow, t)
    held = t.amount_minor
    amount = t.post_hold(c.amount_minor, uow.now)
    uow.account(t.debit_account_id, None).settle_debit_hold(t.id, held, amount)
    uow.account(t.credit_account_id, None).settle_credit_hold(t.id, held, amount)
    return transfer_state(t)


def _void(uow: UnitOfWork, c: VoidTransfer) -> TransferState:
    t = uow.transfer(c.transfer_id, c.tenant)
    if t.is_due(uow.now):
        return _expire_instead(uow, t)
    t.void_hold(uow.now)
    uow.account(t.debit_account_id, None).settle_debit_hold(t.id, t.amount_minor, 0)
    uow.account(t.credit_account_id, None).settle_credit_hold(t.id, t.amount_minor, 0)
    return transfer_state(t)


def _expire(uow: UnitOfWork, t: Transfer) -> None:
    t.expire_hold(uow.now)
    uow.account(t.debit_account_id, None).settle_debit_hold(t.id, t.amount_minor, 0)
    uow.account(t.credit_account_id, None).settle_credit_hold(t.id, t.amount_minor, 0)


def _expire_instead(uow: UnitOfWork, t: Transfer) -> TransferExpired:
    # The hold ran out before anyone expired it: record the expiry (it happened) and reject
    # the command. Returning, not raising, the error keeps the expiry events in the commit.
    _expire(uow, t)
    return TransferExpired("the hold has expired", transfer_id=str(t.id))


def _expire_hold(uow: UnitOfWork, c: ExpireHold) -> TransferState:
    t = uow.transfer(c.transfer_id, None)
    if t.is_due(uow.now):
        _expire(uow, t)
    return transfer_state(t)


def _reverse(uow: UnitOfWork, c: ReverseTransfer) -> TransferState:
    original = uow.transfer(c.transfer_id, c.tenant)
    reversal_id = c.reversal_id or uuid.uuid5(REVERSAL_NAMESPACE, str(original.id))
    if original.reversed_by_id is not None and original.reversed_by_id == reversal_id:
        # The same reverse again: answer with the reversal that was made.
        return transfer_state(uow.transfer(reversal_id, c.tenant))
    original.check_can_reverse()
    if uow.existing(reversal_id, client_supplied=c.reversal_id is not None) is not None:
        raise ExistsWithDifferentFields("a transfer with this id already exists", transfer_id=str(reversal_id))
    reversal = _move(
        uow,
        tenant=original.tenant,
        kind=REVERSAL,
        transfer_id=reversal_id,
        debit=uow.account(original.credit_account_id, None),
        credit=uow.account(original.debit_account_id, None),
        amount_minor=original.posted_amount_minor,
        currency=original.currency,
        reference=f"reversal of {original.id}",
        metadata={},
        reverses_id=original.id,
    )
    original.mark_reversed(reversal.id)
    return reversal


def _freeze(uow: UnitOfWork, c: FreezeAccount) -> AccountState:
    a = uow.account(c.account_id, c.tenant)
    a.freeze()
    return account_state(a, uow.ledger.holder_vault)


def _unfreeze(uow: UnitOfWork, c: UnfreezeAccount) -> AccountState:
    a = uow.account(c.account_id, c.tenant)
    a.unfreeze()
    return account_state(a, uow.ledger.holder_vault)


def _close(uow: UnitOfWork, c: CloseAccount) -> AccountState:
    a = uow.account(c.account_id, c.tenant)
    a.close()
    return account_state(a, uow.ledger.holder_vault)


def _erase_holder(uow: UnitOfWork, c: EraseHolder) -> AccountState:
    a = uow.account(c.account_id, c.tenant)
    a.erase_holder()
    return account_state(a, uow.ledger.holder_vault)


HANDLERS: dict[type, Callable[[UnitOfWork, Any], Any]] = {
    OpenAccount: _open_account,
    MakeTransfer: _make_transfer,
    Deposit: _deposit,
    Withdraw: _withdraw,
    TransferBatch: _atomic_batch,
    PostTransfer: _post,
    VoidTransfer: _void,
    ReverseTransfer: _reverse,
    FreezeAccount: _freeze,
    UnfreezeAccount: _unfreeze,
    CloseAccount: _close,
    ExpireHold: _expire_hold,
    EraseHolder: _erase_holder,
}
