"""The writer's bulk loader (PostgreSQL): one query must rebuild exactly what the repository does."""
from __future__ import annotations

import uuid

from application.commands import Deposit, MakeTransfer, OpenAccount, TransferBatch
from application.ledger import account_state, transfer_state
from domain.account import Account
from domain.transfer import Transfer
from infrastructure.settings import Settings
from keel.bootstrap import build, build_ledger

T = "tenant-a"


def _fold(stored: list) -> object:  # type: ignore[type-arg]
    agg = None
    for e in stored:
        agg = e.mutate(agg)
    return agg


def test_bulk_load_equals_repository_with_and_without_snapshots(pg_settings: Settings) -> None:
    c = build(pg_settings)
    try:
        opened = [c.writer.execute(OpenAccount(tenant=T, currency="USD")) for _ in range(3)]
        a, b, idle = (o.id for o in opened)  # public ids: what commands name
        ka, kb, kidle = (o.key for o in opened)  # storage keys: what the store is read by
        c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=10**9, currency="USD"))
        # 250 debits: Account snapshots every 100 versions, so `a` and `b` load a snapshot + tail.
        items = tuple(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=i + 1, currency="USD")
                      for i in range(250))  # fmt: skip
        c.writer.execute(TransferBatch(tenant=T, items=items[:125]))
        c.writer.execute(TransferBatch(tenant=T, items=items[125:]))
        hold = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=7,
                                             currency="USD", pending=True))  # fmt: skip
        ledger = c.ledger
        snapshots = ledger.snapshots.recorder.select_events(ka)  # type: ignore[union-attr]
        assert snapshots, "the test needs an account with a snapshot"
        # Snapshots are taken from the aggregates in hand (Ledger._take_snapshots): each must be
        # the state the events alone give at its version.
        for snap in snapshots:
            from_events = _fold([ledger.mapper.to_domain_event(e) for e in ledger.recorder.select_events(ka, lte=snap.originator_version)])
            assert account_state(ledger.mapper.to_domain_event(snap).mutate(None)) == account_state(from_events)  # type: ignore[arg-type]
        missing = uuid.uuid4()
        loaded = ledger.aggregate_loader.load([ka, kb, kidle, hold.key, missing])  # type: ignore[union-attr]
        assert missing not in loaded
        for account_id in (ka, kb, kidle):
            folded = _fold([ledger.mapper.to_domain_event(s) for s in loaded[account_id]])
            assert isinstance(folded, Account)
            stored = ledger.repository.get(account_id)
            assert folded.version == stored.version
            assert account_state(folded) == account_state(stored)
        folded_hold = _fold([ledger.mapper.to_domain_event(s) for s in loaded[hold.key]])
        assert isinstance(folded_hold, Transfer)
        assert transfer_state(folded_hold) == transfer_state(ledger.repository.get(hold.key))
        expected_a = ledger.get_account(a, T)
    finally:
        c.close()

    # A new process (empty cache) runs a batch over those accounts: prefetched, same balances.
    fresh = build_ledger(pg_settings)
    try:
        fresh.execute(TransferBatch(tenant=T, items=(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=idle,
                                                                  amount_minor=5, currency="USD"),)))  # fmt: skip
        after = fresh.get_account(a, T)
        assert after.posted_minor == expected_a.posted_minor - 5
        assert after.available_minor == expected_a.available_minor - 5
        assert fresh.get_account(idle, T).posted_minor == 5
    finally:
        fresh.close()
