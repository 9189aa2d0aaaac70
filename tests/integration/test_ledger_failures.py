"""The ledger when things fail half-way, found by the bank test with faults (keel chaos).

- A batch that fails after changing cached aggregates (the store drops during a load or a
  renderer's lookup) must leave nothing behind: before the fix, a later batch saved the
  failed batch's events too, and a transfer was debited twice.
- A retry of an Idempotency-Key whose first answer (here a rejection) another writer stored
  must add no effect.
- A rejection decided on a cached aggregate that another writer has changed is re-decided.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from api.idempotency import Renderer
from application.commands import Deposit, MakeTransfer, OpenAccount
from application.ledger import Ledger
from domain import errors
from domain.account import Account
from infrastructure.settings import Settings
from keel.bootstrap import build, build_ledger

T = "tenant-f"


@pytest.fixture
def ledgers(settings: Settings) -> Iterator[tuple[Ledger, Ledger, object]]:
    """Two ledgers on one store, as two API processes have, and the idempotency store."""
    container = build(settings, start_writer=False)
    other = build_ledger(settings)
    yield container.ledger, other, container.idempotency
    other.close()
    container.ledger.close()


def _one(ledger: Ledger, command: object, render: object = None) -> object:
    outcome = ledger.execute_batch([command], [render] if render is not None else None)[0]
    if isinstance(outcome, BaseException) and not isinstance(outcome, errors.DomainError):
        raise outcome  # the store failed: this command did not commit
    return outcome


def _open(ledger: Ledger, funded: int = 0) -> uuid.UUID:
    a = _one(ledger, OpenAccount(tenant=T, currency="EUR")).id
    if funded:
        _one(ledger, Deposit(tenant=T, account_id=a, amount_minor=funded, currency="EUR"))
    return a


def _debits(ledger: Ledger, account_id: uuid.UUID) -> list[uuid.UUID]:
    key = ledger.get_account(account_id, T).key
    return [e.transfer_id for e in ledger.events.get(key) if isinstance(e, Account.Debited)]


def test_a_batch_that_fails_after_changing_cached_aggregates_leaves_nothing_behind(ledgers) -> None:  # noqa: ANN001
    ledger, _, _ = ledgers
    a, b = _open(ledger, 1_000), _open(ledger)

    class StoreDown:
        def recorded(self) -> bool:
            return False

        def render(self, _: object) -> None:
            raise OSError("the idempotency store is unreachable")

    store_down = StoreDown()

    lost = uuid.uuid4()
    with pytest.raises(OSError):
        _one(ledger, MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=100,
                                  currency="EUR", transfer_id=lost), store_down)  # fmt: skip
    kept = uuid.uuid4()
    _one(ledger, MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=7,
                              currency="EUR", transfer_id=kept))  # fmt: skip
    keys = {ledger.get_transfer(kept, T).key}
    assert set(_debits(ledger, a)[-1:]) == keys and len(_debits(ledger, a)) == 1
    assert ledger.get_account(a, T).posted_minor == 993
    with pytest.raises(errors.NotFound):
        ledger.get_transfer(lost, T)


def test_a_retry_answered_by_another_writer_adds_nothing(ledgers) -> None:  # noqa: ANN001
    first, second, store = ledgers
    a, b = _open(first), _open(first)
    transfer = MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=500,
                            currency="EUR", transfer_id=uuid.uuid4())  # fmt: skip

    def present(outcome: object) -> tuple[int, bytes]:
        return (422, b"rejected") if isinstance(outcome, errors.DomainError) else (201, b"created")

    # Writer 1 answers first: insufficient funds, stored under the key.
    assert isinstance(_one(first, transfer, Renderer("k", "key-1", "h", present, store)), errors.InsufficientFunds)
    _one(second, Deposit(tenant=T, account_id=a, amount_minor=1_000, currency="EUR"))
    # Writer 2 runs the same key (a client retry that raced): it must not apply the transfer.
    late = Renderer("k", "key-1", "h", present, store)
    outcome = _one(second, transfer, late)
    assert late.superseded, outcome
    assert second.get_account(a, T).posted_minor == 1_000
    with pytest.raises(errors.NotFound):
        second.get_transfer(transfer.transfer_id, T)
    assert store.get("k", "key-1").answer[:2] == (422).to_bytes(2, "big")


def test_a_rejection_on_a_stale_cached_account_is_re_decided(ledgers) -> None:  # noqa: ANN001
    first, second, _ = ledgers
    a, b = _open(first), _open(first)
    # `first` has `a` cached with nothing on it; `second` funds it.
    _one(second, Deposit(tenant=T, account_id=a, amount_minor=1_000, currency="EUR"))
    outcome = _one(first, MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=400,
                                       currency="EUR"))  # fmt: skip
    assert not isinstance(outcome, errors.DomainError), outcome
    assert first.get_account(b, T).posted_minor == 400
