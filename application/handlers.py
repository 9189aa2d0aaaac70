"""One function per use case: resolve the ids inside the tenant, load, decide, record.

Every handler checks every rule before it triggers any event (a rejected command leaves no
trace; the unit of work's savepoint undoes the rest). Ids in commands are public ids: they are
turned into storage keys here, inside the command's tenant, and nowhere else (domain/identity.py),
so another tenant's object can never be loaded, created over or told apart from a missing one.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

from application.commands import (
    AccountState,
    BatchResult,
    CloseAccount,
    Deposit,
    EraseHolder,
    ExpireHold,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    ReverseTransfer,
    TransferBatch,
    TransferState,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
)
from application.privacy import HolderVault
from application.results import account_state, transfer_state
from application.unit_of_work import UnitOfWork
from domain.account import Account
from domain.errors import (
    AccountClosed,
    AccountFrozen,
    DomainError,
    ExistsWithDifferentFields,
    InsufficientFunds,
    TransferExpired,
    ValidationFailed,
)
from domain.identity import account_key, reversal_public_id, settlement_currency, settlement_public_id, transfer_key
from domain.limits import BATCH_ITEMS_MAX, check_event_time, check_metadata, check_tenant
from domain.money import check_currency
from domain.transfer import DEPOSIT, REVERSAL, WITHDRAWAL, Transfer, TransferTerms

Handler = Callable[[UnitOfWork, Any, "HolderVault | None"], Any]
# Refusals of a movement out of an account that are recorded on it (Account.DebitRefused) for the
# fraud module: failed attempts are a takeover's signature (issue #15).
REFUSALS_RECORDED = (InsufficientFunds, AccountFrozen, AccountClosed)


# ---- accounts ----------------------------------------------------------------------------------


def open_account(uow: UnitOfWork, c: OpenAccount, vault: HolderVault | None) -> AccountState:
    check_tenant(c.tenant)
    check_currency(c.currency)
    metadata = check_metadata(c.metadata)
    public_id = c.account_id or uuid.uuid4()
    if settlement_currency(public_id) is not None:
        raise ValidationFailed("this id names a settlement account; choose another id", field="id")
    key = account_key(c.tenant, public_id)
    found = uow.existing(key)
    if found is not None:
        if (
            isinstance(found, Account)
            and found.tenant == c.tenant
            and found.currency == c.currency
            and found.overdraft_limit_minor == c.overdraft_limit_minor
            and found.metadata == metadata
        ):
            return account_state(found, vault)
        raise ExistsWithDifferentFields("an account with this id exists with different fields", account_id=str(public_id))
    if c.occurred_at is not None:
        check_event_time(c.occurred_at, uow.now)
    account = Account.open(
        account_id=key,
        public_id=public_id,
        tenant=c.tenant,
        currency=c.currency,
        overdraft_limit_minor=c.overdraft_limit_minor,
        holder=_seal_holder(vault, key, c.holder),
        metadata=metadata,
        occurred_at=c.occurred_at,
    )
    uow.add(account)
    return account_state(account, vault, created=True)


def _seal_holder(vault: HolderVault | None, key: UUID, holder: dict[str, Any] | None) -> dict[str, Any] | None:
    if holder is None or vault is None:
        return holder
    if not isinstance(holder, dict):
        raise ValidationFailed("holder must be an object")
    return vault.seal(key, holder)


def _account_of(uow: UnitOfWork, tenant: str, public_id: UUID) -> Account:
    return uow.account(account_key(tenant, public_id), tenant)


def freeze(uow: UnitOfWork, c: FreezeAccount, vault: HolderVault | None) -> AccountState:
    a = _account_of(uow, c.tenant, c.account_id)
    a.freeze()
    return account_state(a, vault)


def unfreeze(uow: UnitOfWork, c: UnfreezeAccount, vault: HolderVault | None) -> AccountState:
    a = _account_of(uow, c.tenant, c.account_id)
    a.unfreeze()
    return account_state(a, vault)


def close(uow: UnitOfWork, c: CloseAccount, vault: HolderVault | None) -> AccountState:
    a = _account_of(uow, c.tenant, c.account_id)
    a.close()
    return account_state(a, vault)


def erase_holder(uow: UnitOfWork, c: EraseHolder, vault: HolderVault | None) -> AccountState:
    a = uow.account(c.account_key, c.tenant)
    a.erase_holder()
    return account_state(a, vault)


# ---- transfers ---------------------------------------------------------------------------------


def _move(uow: UnitOfWork, tenant: str, public_id: UUID, terms: TransferTerms, debit: Account, credit: Account,
          reverses: Transfer | None = None) -> Transfer:  # fmt: skip
    """Records a new transfer and its two legs (`terms` validated by the caller)."""
    terms.check_currencies(debit.currency, credit.currency)
    occurred_at = terms.occurred_at
    if occurred_at is not None:
        check_event_time(occurred_at, uow.now)
        for account in (debit, credit):
            if not account.is_settlement:  # money outside the ledger: no history of its own to order
                account.check_event_time(occurred_at)
    try:
        debit.check_can_debit(terms.amount_minor)
    except REFUSALS_RECORDED as e:
        key, reason = transfer_key(tenant, public_id), e.code
        e.after_rollback = lambda: debit.record_refused_debit(key, terms.amount_minor, reason, occurred_at)
        raise
    credit.check_can_credit(terms.amount_minor)
    transfer = Transfer.initiate(
        transfer_id=transfer_key(tenant, public_id),
        public_id=public_id,
        tenant=tenant,
        terms=terms,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        reverses=reverses,
        created_on=uow.now,
    )
    uow.add(transfer)
    if terms.pending:
        debit.hold_debit(transfer.id, terms.amount_minor, occurred_at)
        credit.hold_credit(transfer.id, terms.amount_minor, occurred_at)
    else:
        debit.debit(transfer.id, terms.amount_minor, occurred_at)
        credit.credit(transfer.id, terms.amount_minor, occurred_at)
    return transfer


def _repeat(uow: UnitOfWork, tenant: str, public_id: UUID | None, terms: TransferTerms) -> TransferState | None:
    """The original when this transfer id was already used with the same terms (a repeat)."""
    if public_id is None:
        return None
    found = uow.existing(transfer_key(tenant, public_id))
    if found is None:
        return None
    if isinstance(found, Transfer) and found.tenant == tenant and found.terms == terms:
        return transfer_state(found)
    raise ExistsWithDifferentFields("a transfer with this id exists with different fields", transfer_id=str(public_id))


def make_transfer(uow: UnitOfWork, c: MakeTransfer, vault: HolderVault | None) -> TransferState:
    check_tenant(c.tenant)
    terms = c.terms()
    repeated = _repeat(uow, c.tenant, c.transfer_id, terms)
    if repeated is not None:
        return repeated
    # The accounts first: a request naming an account the tenant does not have is 404 whatever
    # else is wrong with it (the answer a missing and another tenant's account share).
    debit = _account_of(uow, c.tenant, terms.debit_account_id)
    credit = _account_of(uow, c.tenant, terms.credit_account_id)
    terms.validate()
    return transfer_state(_move(uow, c.tenant, c.transfer_id or uuid.uuid4(), terms, debit, credit), created=True)


def deposit(uow: UnitOfWork, c: Deposit, vault: HolderVault | None) -> TransferState:
    return _against_settlement(uow, c, DEPOSIT)


def withdraw(uow: UnitOfWork, c: Withdraw, vault: HolderVault | None) -> TransferState:
    return _against_settlement(uow, c, WITHDRAWAL)


def _against_settlement(uow: UnitOfWork, c: Deposit | Withdraw, kind: str) -> TransferState:
    """A deposit credits the account from the tenant's settlement account; a withdrawal debits it."""
    check_tenant(c.tenant)
    check_currency(c.currency)
    settlement_id = settlement_public_id(c.currency)
    debit_id, credit_id = (settlement_id, c.account_id) if kind == DEPOSIT else (c.account_id, settlement_id)
    terms = TransferTerms(
        kind=kind, debit_account_id=debit_id, credit_account_id=credit_id, amount_minor=c.amount_minor,
        currency=c.currency, reference=c.reference, metadata=check_metadata(c.metadata), occurred_at=c.occurred_at,
    )  # fmt: skip
    repeated = _repeat(uow, c.tenant, c.transfer_id, terms)
    if repeated is not None:
        return repeated
    account = _account_of(uow, c.tenant, c.account_id)
    terms.validate()
    settlement = uow.settlement(c.tenant, c.currency)
    debit, credit = (settlement, account) if kind == DEPOSIT else (account, settlement)
    return transfer_state(_move(uow, c.tenant, c.transfer_id or uuid.uuid4(), terms, debit, credit), created=True)


def atomic_batch(uow: UnitOfWork, c: TransferBatch, vault: HolderVault | None) -> BatchResult:
    check_batch_size(c)
    results: list[TransferState] = []
    for index, item in enumerate(c.items):
        try:
            results.append(make_transfer(uow, item, vault))
        except DomainError as e:
            # One failure fails the batch; the caller's savepoint undoes every item.
            e.details["index"] = index
            raise
    return BatchResult(atomic=True, results=tuple(results))


def check_batch_size(c: TransferBatch) -> None:
    if not 1 <= len(c.items) <= BATCH_ITEMS_MAX:
        raise ValidationFailed(f"a batch holds 1..{BATCH_ITEMS_MAX} transfers", size=len(c.items))


def _transfer_of(uow: UnitOfWork, tenant: str, public_id: UUID) -> Transfer:
    return uow.transfer(transfer_key(tenant, public_id), tenant)


def post(uow: UnitOfWork, c: PostTransfer, vault: HolderVault | None) -> TransferState:
    t = _transfer_of(uow, c.tenant, c.transfer_id)
    if t.is_due(uow.now):
        return _expire_instead(uow, t)  # type: ignore[return-value]
    held = t.amount_minor
    amount = t.post_hold(c.amount_minor, uow.now)
    uow.account(t.debit_account_id, t.tenant).settle_debit_hold(t.id, held, amount)
    uow.account(t.credit_account_id, t.tenant).settle_credit_hold(t.id, held, amount)
    return transfer_state(t)


def void(uow: UnitOfWork, c: VoidTransfer, vault: HolderVault | None) -> TransferState:
    t = _transfer_of(uow, c.tenant, c.transfer_id)
    if t.is_due(uow.now):
        return _expire_instead(uow, t)  # type: ignore[return-value]
    t.void_hold(uow.now)
    _release(uow, t)
    return transfer_state(t)


def _release(uow: UnitOfWork, t: Transfer) -> None:
    uow.account(t.debit_account_id, t.tenant).settle_debit_hold(t.id, t.amount_minor, 0)
    uow.account(t.credit_account_id, t.tenant).settle_credit_hold(t.id, t.amount_minor, 0)


def _expire_instead(uow: UnitOfWork, t: Transfer) -> TransferExpired:
    # The hold ran out before anyone expired it: record the expiry (it happened) and reject
    # the command. Returning, not raising, the error keeps the expiry events in the commit.
    t.expire_hold(uow.now)
    _release(uow, t)
    return TransferExpired("the hold has expired", transfer_id=str(t.public_id))


def expire_hold(uow: UnitOfWork, c: ExpireHold, vault: HolderVault | None) -> TransferState:
    t = uow.transfer(c.transfer_key, None)
    if t.is_due(uow.now):
        t.expire_hold(uow.now)
        _release(uow, t)
    return transfer_state(t)


def reverse(uow: UnitOfWork, c: ReverseTransfer, vault: HolderVault | None) -> TransferState:
    original = _transfer_of(uow, c.tenant, c.transfer_id)
    public_id = c.reversal_id or reversal_public_id(original.public_id)
    key = transfer_key(c.tenant, public_id)
    if c.reversal_id is not None and original.reversed_by_id == key:
        # The same command again (its reversal id given, e.g. derived from an Idempotency-Key):
        # answer with the reversal it made. A second reverse without one is 409 already_reversed.
        return transfer_state(uow.transfer(key, c.tenant))
    original.check_can_reverse()
    if uow.existing(key) is not None:
        raise ExistsWithDifferentFields("a transfer with this id already exists", transfer_id=str(public_id))
    terms = TransferTerms(
        kind=REVERSAL,
        debit_account_id=original.credit_public_id,
        credit_account_id=original.debit_public_id,
        amount_minor=original.posted_amount_minor,
        currency=original.currency,
        reference=f"reversal of {original.public_id}",
    )
    debit = uow.account(original.credit_account_id, c.tenant)
    credit = uow.account(original.debit_account_id, c.tenant)
    reversal = _move(uow, c.tenant, public_id, terms, debit, credit, reverses=original)
    original.mark_reversed(reversal)
    return transfer_state(reversal, created=True)


HANDLERS: dict[type, Handler] = {
    OpenAccount: open_account,
    MakeTransfer: make_transfer,
    Deposit: deposit,
    Withdraw: withdraw,
    TransferBatch: atomic_batch,
    PostTransfer: post,
    VoidTransfer: void,
    ReverseTransfer: reverse,
    FreezeAccount: freeze,
    UnfreezeAccount: unfreeze,
    CloseAccount: close,
    ExpireHold: expire_hold,
    EraseHolder: erase_holder,
}


def named_keys(command: Any) -> list[UUID]:
    """The storage keys of existing aggregates a command will load, as far as it names them
    (for the writer's one-query prefetch)."""
    if isinstance(command, MakeTransfer):
        return [account_key(command.tenant, command.debit_account_id), account_key(command.tenant, command.credit_account_id)]
    if isinstance(command, TransferBatch):
        return [k for item in command.items for k in named_keys(item)]
    if isinstance(command, (Deposit, Withdraw)):
        keys = [account_key(command.tenant, command.account_id)]
        if isinstance(command.currency, str) and len(command.currency) == 3:
            keys.append(account_key(command.tenant, settlement_public_id(command.currency)))
        return keys
    if isinstance(command, (FreezeAccount, UnfreezeAccount, CloseAccount)):
        return [account_key(command.tenant, command.account_id)]
    if isinstance(command, EraseHolder):
        return [command.account_key]
    if isinstance(command, (PostTransfer, VoidTransfer, ReverseTransfer)):
        return [transfer_key(command.tenant, command.transfer_id)]
    if isinstance(command, ExpireHold):
        return [command.transfer_key]
    return []
