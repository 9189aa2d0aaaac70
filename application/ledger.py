"""The Ledger application: every money movement, as commands applied to Account and Transfer
aggregates and saved with one `save(...)` per commit.

`Ledger.execute_batch` is the single write path. It applies a list of commands in order to a
unit of work (application/unit_of_work.py), each under a savepoint so that a failing command
leaves no trace, dispatching each to its handler (application/handlers.py), then saves
everything in one commit. Isolation of failures:
- a command that breaks a rule (DomainError) or fails with a bug (CommandFailed, 500) fails
  alone; its batch-mates commit;
- a commit that fails for a deterministic reason (not a conflict, not the store being away) is
  split in halves and retried until the one command that causes it fails alone;
- an optimistic-concurrency conflict with another writer re-runs the batch against fresh
  state, for at most CONFLICT_RETRY_BUDGET_MS, then answers `concurrency_conflict` (503);
- only an unreachable store fails every command of the batch (nothing can commit).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from application.aggregate_cache import AggregateCache, LogHead
from application.commands import AccountState, BatchResult, Command, Result, TransferBatch, TransferState
from application.handlers import HANDLERS, check_batch_size, make_transfer, named_keys
from application.ports import AccountDirectory, AggregateLoader, NoLease, OutcomeRecorder, WriteLease
from application.privacy import HolderVault
from application.results import account_state, transfer_state
from application.unit_of_work import CommandFailed, UnitOfWork
from domain.account import Account
from domain.errors import ConcurrencyConflict, DomainError, NotFound
from domain.identity import account_key, transfer_key
from domain.transfer import Transfer

log = logging.getLogger(__name__)

CONFLICT_RETRIES_MAX = 30
# How long one batch may keep re-running after conflicts: the writer serves everyone, so one
# contended command must not hold it (a squatted id once kept it busy for seconds).
CONFLICT_RETRY_BUDGET_MS = 250
CONFLICT_BACKOFF_MAX_S = 0.05
# How long a writer waits for another process's batch before going ahead optimistically.
LEASE_WAIT_S = 2.0
# Commit failures that are not about the commands: the store is away; retrying later may work.
TRANSIENT_FAILURES: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, OSError, TimeoutError)

# One command's outcome: its result, the DomainError that rejected it, or (store failure) the
# exception that kept its group from committing.
Outcome = Result | DomainError | BaseException


def utcnow() -> datetime:
    return datetime.now(tz=timezone.utc)


class Ledger(Application[UUID]):
    name = "ledger"
    snapshotting_intervals = {Account: 100}  # noqa: RUF012 - eventsourcing reads a class attribute

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env)
        # The writer's cache of current aggregates (only the thread that runs batches uses it).
        self.cache = AggregateCache(self.recorder, self.mapper)  # type: ignore[arg-type]
        # The log head as readers need it (read after they asked, one query for all at a time).
        self.log_head = LogHead(self.recorder.max_notification_id)
        # Time as the ledger sees it when deciding whether a hold is due; tests move it.
        self.clock: Callable[[], datetime] = utcnow
        # Seals holder personal data before it enters an event; set by the composition root.
        self.holder_vault: HolderVault | None = None
        # Serialises batches across processes on one database; set by the composition root.
        self.write_lease: WriteLease = NoLease()
        # Loads a batch's uncached aggregates in one round trip (PostgreSQL); None: one by one.
        self.aggregate_loader: AggregateLoader | None = None
        # Every account's (public id, tenant, storage key), written with its opening; set by the
        # composition root.
        self.account_directory: AccountDirectory | None = None
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

    def get_account(self, account_id: UUID, tenant: str) -> AccountState:
        """The tenant's account `account_id` (a public id); NotFound, also for any other tenant's.

        As committed, from the writer's copy when that is known to be current (nothing but this
        process's writer wrote since), else from the store: either way it includes every write
        acknowledged before the call."""
        key = account_key(tenant, account_id)
        known = self.committed_account(key)
        if known is not None:
            if known.tenant != tenant:
                raise NotFound("account not found")
            return account_state(known, self.holder_vault)
        return self.account_by_key(key, tenant)

    def account_if_current(self, account_id: UUID, tenant: str, head: int) -> AccountState | None:
        """`get_account` from the writer's copy alone, without touching the store, when that copy
        holds every event up to `head` (a log head read after the caller asked) and has no sealed
        holder to reveal (a key lookup); None: call `get_account`."""
        known = self._known(account_key(tenant, account_id), head)
        if known is None:
            return None
        a = known[0]
        if a.tenant != tenant or (a.holder is not None and not a.holder_erased):
            return None
        return account_state(a, None)

    def committed_account(self, key: UUID) -> Account | None:
        """The writer's copy of the account stored at `key` as last committed, if it holds every
        event committed before this call; None: read the store."""
        known = self._known(key)
        return known[0] if known is not None else None

    def latest_position(self, key: UUID, head: int | None = None) -> int | None:
        """The log position of the latest event of the account stored at `key`, when the writer
        knows it to be current (as `committed_account`; `head`: a log head the caller read after
        it was asked, else one is read now); None: read the log."""
        known = self._known(key, head)
        return known[1] if known is not None else None

    def _known(self, key: UUID, head: int | None = None) -> tuple[Account, int | None] | None:
        """(copy, latest position) when current through `head` (read now if not given; not read
        at all when there is no copy)."""
        if not self.cache.has_committed(key):
            return None
        if head is None:
            head = self.log_head.current()
        return self.cache.committed(key, head) if head is not None else None

    def account_by_key(self, key: UUID, tenant: str | None = None) -> AccountState:
        a = self.load(key)
        if not isinstance(a, Account) or (tenant is not None and a.tenant != tenant):
            raise NotFound("account not found")
        return account_state(a, self.holder_vault)

    def account_keys_named(self, public_id: UUID) -> list[UUID]:
        """The storage keys of every tenant's account with this public id (for auditors and admins)."""
        if self.account_directory is None:
            return []
        return self.account_directory.keys_of(public_id)

    def get_transfer(self, transfer_id: UUID, tenant: str) -> TransferState:
        return self.transfer_by_key(transfer_key(tenant, transfer_id), tenant)

    def transfer_by_key(self, key: UUID, tenant: str | None = None) -> TransferState:
        t = self.load(key)
        if not isinstance(t, Transfer) or (tenant is not None and t.tenant != tenant):
            raise NotFound("transfer not found")
        return transfer_state(t)

    def account_at(self, key: UUID, version: int) -> AccountState:
        """The account stored at `key` as of its `version` (rebuilt from its events)."""
        try:
            a = self.repository.get(key, version=version)
        except AggregateNotFoundError:
            raise NotFound("account not found") from None
        if not isinstance(a, Account):
            raise NotFound("account not found")
        return account_state(a, self.holder_vault)

    def load(self, key: UUID) -> Any:
        """The aggregate's current state from the store (None if it does not exist), for reads
        on any thread. With the bulk loader: one round trip for snapshot and events, where the
        repository makes two transactions of three each (6 of a balance read's round trips)."""
        if self.aggregate_loader is None:
            try:
                return self.repository.get(key)
            except AggregateNotFoundError:
                return None
        return self._fold(self.aggregate_loader.load([key]).get(key, []))

    def _fold(self, stored: Sequence[Any]) -> Any:
        agg: Any = None
        for event in map(self.mapper.to_domain_event, stored):
            agg = event.mutate(agg)
        return agg

    # ---- the write path --------------------------------------------------------------------

    def execute(self, command: Command) -> Result:
        """Runs one command in its own commit; raises its error. For tests and the CLI."""
        (outcome,) = self.execute_batch([command])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def execute_batch(
        self, commands: Sequence[Command], recorders: Sequence[OutcomeRecorder | None] | None = None
    ) -> list[Outcome]:
        """Applies `commands` in order and commits their effects, in as few commits as isolation
        allows (one, unless a commit fails deterministically).

        Returns one outcome per command. `recorders[i]`, when given, renders command i's outcome
        as the idempotency record stored in the same transaction as the effect.
        """
        recs = list(recorders) if recorders else [None] * len(commands)
        with self._batch_lock:
            leased = self.write_lease.acquire(LEASE_WAIT_S)
            try:
                self.cache.refresh()
                outcomes: list[Outcome | None] = [None] * len(commands)
                deadline = time.monotonic() + CONFLICT_RETRY_BUDGET_MS / 1000
                groups = [list(range(len(commands)))]
                while groups:
                    group = groups.pop()
                    try:
                        done = self._commit_group([commands[i] for i in group], [recs[i] for i in group], leased, deadline)
                    except TRANSIENT_FAILURES as e:
                        for i in group:
                            outcomes[i] = e
                        continue
                    except Exception as e:  # noqa: BLE001 - deterministic: find the one command that causes it
                        if len(group) == 1:
                            log.error("command %s cannot be committed: %s", type(commands[group[0]]).__name__,
                                      type(e).__name__, exc_info=e)  # fmt: skip
                            outcomes[group[0]] = CommandFailed("the command could not be committed; it has been logged")
                        else:
                            half = len(group) // 2
                            groups += [group[half:], group[:half]]  # the first half commits first
                        continue
                    for i, outcome in zip(group, done, strict=True):
                        outcomes[i] = outcome
                assert all(o is not None for o in outcomes), "every command has an outcome"
                return outcomes  # type: ignore[return-value]
            finally:
                if leased:
                    self.write_lease.release()

    def _commit_group(
        self, commands: list[Command], recorders: list[OutcomeRecorder | None], cache_is_current: bool, deadline: float
    ) -> list[Outcome]:
        check_existing = False
        for attempt in range(CONFLICT_RETRIES_MAX):
            uow = UnitOfWork(self.cache, self, self.clock(), check_existing=check_existing)
            try:
                self._prefetch(commands)
                outcomes, skipped = self._run_all(uow, commands, recorders, check_existing=check_existing)
                if attempt == 0 and uow.rejected_on_cached and not cache_is_current:
                    # A rejection (insufficient funds, frozen, ...) decided on a cached
                    # aggregate that another process may have changed since: the commit checks
                    # only aggregates that change, so re-decide once against stored state
                    # before a stale "no" is answered and stored as the idempotent response.
                    # (Under the write lease the cache was just brought up to date from the log.)
                    uow.evict_all()
                    continue
                records = []
                for i, (recorder, outcome) in enumerate(zip(recorders, outcomes, strict=True)):
                    if recorder is not None and i not in skipped:
                        record = recorder.render(outcome)
                        if record is not None:
                            records.append(record)
                uow.check_conservation()
                touched = uow.touched()
                # The accounts this commit opens, for the directory written with their events.
                opened = [(a.public_id, a.tenant, a.id) for a in touched
                          if isinstance(a, Account) and isinstance(a.pending_events[0], Account.Opened)]  # fmt: skip
                recordings = self.save(*touched, idempotency=records, accounts=opened)
            except IntegrityError:
                # Another writer got there first (same aggregate version, same new id, or same
                # idempotency key). Forget what we believed and re-run against fresh state.
                uow.evict_all()
                check_existing = True
                self.conflict_retries += 1
                if time.monotonic() >= deadline:
                    break
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
            latest = {r.domain_event.originator_id: r.notification.id for r in recordings}  # in log order
            self.cache.note_own_commit(sorted(r.notification.id for r in recordings), uow.aggregates.values(), latest)
            return outcomes
        conflict = ConcurrencyConflict("the command conflicted with concurrent writes; retry it")
        return [conflict for _ in commands]

    def _run_all(
        self, uow: UnitOfWork, commands: Sequence[Command], recorders: list[OutcomeRecorder | None], *, check_existing: bool
    ) -> tuple[list[Outcome], set[int]]:
        outcomes: list[Outcome] = []
        skipped: set[int] = set()
        vault = self.holder_vault
        for i, (c, recorder) in enumerate(zip(commands, recorders, strict=True)):
            if check_existing and recorder is not None and recorder.recorded():
                # Another writer stored this command's response first (a retry of the same
                # Idempotency-Key racing in another process). Its outcome is the answer, so
                # this command must add nothing: not even when that outcome was a rejection.
                outcomes.append(ConcurrencyConflict("answered by another writer"))
                skipped.add(i)
                continue
            outcomes.append(self._dispatch(uow, c, vault))
        return outcomes, skipped

    @staticmethod
    def _dispatch(uow: UnitOfWork, command: Command, vault: HolderVault | None) -> Outcome:
        if isinstance(command, TransferBatch) and not command.atomic:
            try:
                check_batch_size(command)
            except DomainError as e:
                return e
            results = tuple(uow.run(make_transfer, item, vault) for item in command.items)
            return BatchResult(atomic=False, results=results)  # type: ignore[arg-type]
        handler = HANDLERS.get(type(command))
        if handler is None:
            return CommandFailed(f"no handler for {type(command).__name__}")
        return uow.run(handler, command, vault)

    def _prefetch(self, commands: Sequence[Command]) -> None:
        """Puts the aggregates `commands` name into the cache, those missing loaded in one query.

        They are current as of that read, like any aggregate loaded on demand: another
        process's later commit is caught by the commit's version check and the log tail.
        """
        if self.aggregate_loader is None:
            return
        keys: list[UUID] = []
        for c in commands:
            try:
                keys += named_keys(c)
            except Exception:  # noqa: BLE001 - a malformed command fails in its handler, alone
                continue
        missing = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if len(missing) < 2:  # one aggregate: loading it on demand costs the same
            return
        for stored in self.aggregate_loader.load(missing).values():
            agg = self._fold(stored)
            if isinstance(agg, (Account, Transfer)):
                self.cache.put(agg)

