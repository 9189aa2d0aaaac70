"""The ledger's use cases against real stores (SQLite file and a fresh PostgreSQL schema)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import msgspec
import pytest

from application.commands import (
    BatchResult,
    CloseAccount,
    Deposit,
    ExpireHold,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    ReverseTransfer,
    TransferBatch,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
)
from application.expiry import HoldExpiry
from application.ledger import Ledger
from domain import errors
from domain.identity import settlement_public_id
from domain.account import Account
from infrastructure.settings import Settings
from keel.bootstrap import Container, build, build_ledger

T = "tenant-a"


@pytest.fixture
def c(settings: Settings) -> Iterator[Container]:
    container = build(settings)
    yield container
    container.close()


def open_funded(c: Container, amount: int, currency: str = "USD", overdraft: int = 0) -> uuid.UUID:
    a = c.writer.execute(OpenAccount(tenant=T, currency=currency, overdraft_limit_minor=overdraft))
    if amount:
        c.writer.execute(Deposit(tenant=T, account_id=a.id, amount_minor=amount, currency=currency))
    return a.id


def posted(c: Container, account_id: uuid.UUID) -> int:
    return c.ledger.get_account(account_id, T).posted_minor


def conservation(ledger: Ledger, tenant: str = T) -> dict[str, int]:
    """Per-currency sum of posted balances over every account in the log."""
    totals: dict[str, int] = {}
    seen: set[uuid.UUID] = set()
    for n in ledger.recorder.select_notifications(start=1, limit=10**9):
        if n.originator_id in seen:
            continue
        seen.add(n.originator_id)
        agg = ledger.repository.get(n.originator_id)
        if isinstance(agg, Account) and agg.tenant == tenant:
            totals[agg.currency] = totals.get(agg.currency, 0) + agg.posted_minor
    return totals


def test_deposit_transfer_withdraw(c: Container) -> None:
    a, b = open_funded(c, 1000), open_funded(c, 0)
    t = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=300, currency="USD"))
    c.writer.execute(Withdraw(tenant=T, account_id=b, amount_minor=100, currency="USD"))
    assert (posted(c, a), posted(c, b)) == (700, 200)
    assert c.ledger.get_account(settlement_public_id("USD"), T).posted_minor == -900
    assert c.ledger.get_transfer(t.id, T).status == "posted"
    assert conservation(c.ledger) == {"USD": 0}


def test_tenant_isolation(c: Container) -> None:
    a, b = open_funded(c, 1000), open_funded(c, 0)
    with pytest.raises(errors.NotFound):
        c.writer.execute(MakeTransfer(tenant="other", debit_account_id=a, credit_account_id=b, amount_minor=1, currency="USD"))
    with pytest.raises(errors.NotFound):
        c.ledger.get_account(a, tenant="other")
    with pytest.raises(errors.NotFound):
        c.writer.execute(FreezeAccount(tenant="other", account_id=a))


def test_insufficient_funds_and_currency_mismatch(c: Container) -> None:
    a, b, e = open_funded(c, 100), open_funded(c, 0), open_funded(c, 0, currency="EUR")
    with pytest.raises(errors.InsufficientFunds) as ex:
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=101, currency="USD"))
    assert ex.value.details["available"] == 100
    with pytest.raises(errors.CurrencyMismatch):
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=e, amount_minor=1, currency="USD"))
    with pytest.raises(errors.SameAccount):
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=a, amount_minor=1, currency="USD"))
    assert posted(c, a) == 100


def test_transfer_id_is_an_idempotency_key(c: Container) -> None:
    a, b = open_funded(c, 1000), open_funded(c, 0)
    tid = uuid.uuid4()
    cmd = MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b, amount_minor=10, currency="USD")
    first = c.writer.execute(cmd)
    again = c.writer.execute(cmd)
    assert first.created and not again.created  # exactly one answer says "created"
    assert msgspec.structs.replace(again, created=True) == first
    with pytest.raises(errors.ExistsWithDifferentFields):
        c.writer.execute(MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b, amount_minor=11, currency="USD"))
    assert posted(c, a) == 990


def test_transfer_id_repeat_seen_by_a_fresh_process(settings: Settings) -> None:
    """The optimistic path (no existence check) must fall back to a check on conflict."""
    c1, c2 = build(settings), build(settings)
    try:
        a, b = open_funded(c1, 1000), open_funded(c1, 0)
        cmd = MakeTransfer(tenant=T, transfer_id=uuid.uuid4(), debit_account_id=a, credit_account_id=b, amount_minor=10, currency="USD")
        first = c1.writer.execute(cmd)
        assert c2.writer.execute(cmd).id == first.id
        assert posted(c2, a) == 990
    finally:
        c1.close()
        c2.close()


def test_group_commit_applies_in_order_and_isolates_failures(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    w = c.writer
    cmds = [MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=40, currency="USD") for _ in range(3)]
    cmds.insert(1, MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="GBP"))
    outcomes = c.ledger.execute_batch(cmds)
    assert [type(o).__name__ for o in outcomes] == ["TransferState", "CurrencyMismatch", "TransferState", "InsufficientFunds"]
    assert outcomes[3].details["available"] == 20
    assert (posted(c, a), posted(c, b)) == (20, 80)
    # through the writer thread, concurrently submitted: still each its own outcome
    futures = [w.submit(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=15, currency="USD")) for _ in range(4)]
    kinds = sorted(type(f.result(10)).__name__ for f in futures)
    assert kinds == ["InsufficientFunds"] * 3 + ["TransferState"]


def test_atomic_batch_is_all_or_nothing(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    items = tuple(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=40, currency="USD") for _ in range(3))
    with pytest.raises(errors.InsufficientFunds) as ex:
        c.writer.execute(TransferBatch(tenant=T, items=items, atomic=True))
    assert ex.value.details["index"] == 2
    assert (posted(c, a), posted(c, b)) == (100, 0)
    result = c.writer.execute(TransferBatch(tenant=T, items=items, atomic=False))
    assert isinstance(result, BatchResult)
    assert [type(r).__name__ for r in result.results] == ["TransferState", "TransferState", "InsufficientFunds"]
    assert (posted(c, a), posted(c, b)) == (20, 80)
    assert conservation(c.ledger) == {"USD": 0}


def test_two_phase_post_in_part_void_and_expire(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    h = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=60, currency="USD", pending=True))
    acc = c.ledger.get_account(a, T)
    assert (acc.posted_minor, acc.pending_debits_minor, acc.available_minor) == (100, 60, 40)
    assert c.ledger.get_account(b, T).pending_credits_minor == 60
    with pytest.raises(errors.ExceedsHeldAmount):
        c.writer.execute(PostTransfer(tenant=T, transfer_id=h.id, amount_minor=61))
    p = c.writer.execute(PostTransfer(tenant=T, transfer_id=h.id, amount_minor=25))
    assert (p.status, p.posted_amount_minor) == ("posted", 25)
    acc = c.ledger.get_account(a, T)
    assert (acc.posted_minor, acc.pending_debits_minor, acc.available_minor) == (75, 0, 75)
    assert c.ledger.get_account(b, T).posted_minor == 25
    with pytest.raises(errors.TransferNotPending):
        c.writer.execute(VoidTransfer(tenant=T, transfer_id=h.id))
    v = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=70, currency="USD", pending=True))
    assert c.writer.execute(VoidTransfer(tenant=T, transfer_id=v.id)).status == "voided"
    assert c.ledger.get_account(a, T).available_minor == 75
    e = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=70, currency="USD", pending=True, timeout_s=1))
    expiry = HoldExpiry(c.ledger, c.writer.submit)
    assert expiry.expire_due() == 0
    time.sleep(1.05)
    assert expiry.expire_due() == 1
    deadline = time.time() + 5
    while c.ledger.get_transfer(e.id, T).status != "expired" and time.time() < deadline:
        time.sleep(0.02)
    assert c.ledger.get_transfer(e.id, T).status == "expired"
    assert c.ledger.get_account(a, T).available_minor == 75
    assert conservation(c.ledger) == {"USD": 0}


def test_post_after_timeout_records_expiry_and_rejects(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    h = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=60, currency="USD", pending=True, timeout_s=1))
    time.sleep(1.05)
    with pytest.raises(errors.TransferExpired):
        c.writer.execute(PostTransfer(tenant=T, transfer_id=h.id))
    assert c.ledger.get_transfer(h.id, T).status == "expired"
    assert c.ledger.get_account(a, T).available_minor == 100
    # an internal expiry of a finished hold changes nothing
    assert c.writer.execute(ExpireHold(transfer_key=h.key)).status == "expired"


def test_reverse_is_a_new_compensating_transfer(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    t = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=30, currency="USD"))
    r = c.writer.execute(ReverseTransfer(tenant=T, transfer_id=t.id))
    assert (r.kind, r.reverses_id, r.debit_account_id, r.credit_account_id, r.amount_minor) == ("reversal", t.id, b, a, 30)
    assert (posted(c, a), posted(c, b)) == (100, 0)
    assert c.ledger.get_transfer(t.id, T).reversed_by_id == r.id
    with pytest.raises(errors.AlreadyReversed):  # a second reverse (the API replays an Idempotency-Key itself)
        c.writer.execute(ReverseTransfer(tenant=T, transfer_id=t.id))
    assert (posted(c, a), posted(c, b)) == (100, 0)
    with pytest.raises(errors.AlreadyReversed):
        c.writer.execute(ReverseTransfer(tenant=T, transfer_id=t.id, reversal_id=uuid.uuid4()))


def test_reverse_needs_funds_on_the_credited_account(c: Container) -> None:
    a, b, d = open_funded(c, 100), open_funded(c, 0), open_funded(c, 0)
    t = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=30, currency="USD"))
    c.writer.execute(MakeTransfer(tenant=T, debit_account_id=b, credit_account_id=d, amount_minor=30, currency="USD"))
    with pytest.raises(errors.InsufficientFunds):
        c.writer.execute(ReverseTransfer(tenant=T, transfer_id=t.id))


def test_freeze_unfreeze_close(c: Container) -> None:
    a, b = open_funded(c, 100), open_funded(c, 0)
    c.writer.execute(FreezeAccount(tenant=T, account_id=a))
    with pytest.raises(errors.AccountFrozen):
        c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="USD"))
    c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=5, currency="USD"))  # credits still land
    c.writer.execute(UnfreezeAccount(tenant=T, account_id=a))
    with pytest.raises(errors.AccountNotEmpty):
        c.writer.execute(CloseAccount(tenant=T, account_id=a))
    c.writer.execute(Withdraw(tenant=T, account_id=a, amount_minor=105, currency="USD"))
    assert c.writer.execute(CloseAccount(tenant=T, account_id=a)).status == "closed"
    with pytest.raises(errors.AccountClosed):
        c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=1, currency="USD"))


def test_open_account_with_client_id_is_idempotent(c: Container) -> None:
    aid = uuid.uuid4()
    first = c.writer.execute(OpenAccount(tenant=T, currency="USD", account_id=aid, metadata={"x": 1}))
    again = c.writer.execute(OpenAccount(tenant=T, currency="USD", account_id=aid, metadata={"x": 1}))
    assert first.created and not again.created
    assert msgspec.structs.replace(again, created=True) == first
    with pytest.raises(errors.ExistsWithDifferentFields):
        c.writer.execute(OpenAccount(tenant=T, currency="EUR", account_id=aid))
    # Another tenant's same id is another account: no collision, nothing learnt about this one.
    theirs = c.writer.execute(OpenAccount(tenant="other", currency="EUR", account_id=aid))
    assert theirs.created and theirs.id == aid and theirs.key != first.key
    assert c.ledger.get_account(aid, T).currency == "USD"


def test_replay_equals_live_state(settings: Settings, c: Container) -> None:
    ids = [open_funded(c, 1000) for _ in range(4)]
    for k in range(40):
        c.writer.submit(MakeTransfer(tenant=T, debit_account_id=ids[k % 4], credit_account_id=ids[(k + 1) % 4], amount_minor=7 + k, currency="USD"))
    h = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=ids[0], credit_account_id=ids[1], amount_minor=5, currency="USD", pending=True))
    c.writer.execute(PostTransfer(tenant=T, transfer_id=h.id, amount_minor=2))
    live = {i: c.ledger.get_account(i, T) for i in ids}
    fresh = build_ledger(settings)
    try:
        # rebuild from events only (no snapshots), in a new Application instance
        for i in ids:
            events = list(fresh.events.get(live[i].key))
            state = None
            for e in events:
                state = e.mutate(state)
            assert state.posted_minor == live[i].posted_minor
            assert state.available_minor == live[i].available_minor
            assert fresh.get_account(i, T) == live[i]
    finally:
        fresh.close()


def test_snapshots_do_not_change_state(settings: Settings, c: Container) -> None:
    a, b = open_funded(c, 10**6), open_funded(c, 0)
    futures = [c.writer.submit(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="USD")) for _ in range(230)]
    for f in futures:
        f.result(10)
    assert c.ledger.snapshots is not None
    key = c.ledger.get_account(a, T).key
    assert list(c.ledger.snapshots.get(key))  # taken at v100, v200
    assert posted(c, a) == 10**6 - 230
    assert c.ledger.account_at(key, 2).posted_minor == 10**6
    assert c.ledger.account_at(key, 150).posted_minor == 10**6 - 148


def test_hold_expiry_retries_until_the_log_shows_the_hold_ended(c: Container) -> None:
    """A refused or failed expiry submit is not forgotten: the hold stays due until its end is logged."""

    from application.expiry import RESUBMIT_AFTER_S
    from application.ledger import utcnow

    a, b = open_funded(c, 100), open_funded(c, 0)
    h = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=60, currency="USD", pending=True, timeout_s=1))
    calls: list[object] = []

    def refuse(command: object) -> None:
        calls.append(command)
        raise RuntimeError("writer overloaded")

    expiry = HoldExpiry(c.ledger, refuse)
    later = utcnow() + timedelta(seconds=2)
    assert expiry.expire_due(later) == 0 and len(calls) == 1
    assert expiry.expire_due(later) == 0 and len(calls) == 1  # not before the resubmit delay
    time.sleep(1.05)  # the hold is really due now for the ledger's clock too
    expiry.submit = c.writer.submit
    assert expiry.expire_due(later + timedelta(seconds=RESUBMIT_AFTER_S)) == 1
    deadline = time.time() + 5
    while c.ledger.get_transfer(h.id, T).status != "expired" and time.time() < deadline:
        time.sleep(0.02)
    assert c.ledger.get_transfer(h.id, T).status == "expired"
    assert c.ledger.get_account(a, T).available_minor == 100
    # once the log shows the end, it is never submitted again
    assert expiry.expire_due(later + timedelta(seconds=10 * RESUBMIT_AFTER_S)) == 0
