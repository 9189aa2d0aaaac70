"""Failure isolation in the write path: one command's failure fails that command alone.

Found by a probe: one poisoned id made every later commit of its batch fail (every tenant's
commands in it answered 503), and a squatted reversal id kept the writer retrying for seconds.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import msgspec
import pytest

from application import handlers
from application.commands import BatchResult, Deposit, MakeTransfer, OpenAccount, ReverseTransfer, TransferBatch
from application.ledger import CONFLICT_RETRY_BUDGET_MS, Ledger
from application.unit_of_work import CommandFailed
from domain.errors import DomainError
from infrastructure.settings import Settings
from keel.bootstrap import Container, build

T = "iso"


class Boom(msgspec.Struct, frozen=True):
    """A command whose handler has a bug (planted for the test)."""

    tenant: str


def _boom(uow: object, c: Boom, vault: object) -> None:
    raise RuntimeError("planted bug")


@pytest.fixture
def c(settings: Settings) -> Iterator[Container]:
    container = build(settings, start_writer=False)
    handlers.HANDLERS[Boom] = _boom
    yield container
    del handlers.HANDLERS[Boom]
    container.ledger.close()


def _funded(ledger: Ledger, amount: int) -> tuple[uuid.UUID, uuid.UUID]:
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR")).id  # type: ignore[union-attr]
    b = ledger.execute(OpenAccount(tenant=T, currency="EUR")).id  # type: ignore[union-attr]
    ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=amount, currency="EUR"))
    return a, b


def test_a_batch_of_100_with_one_planted_failure_commits_99(c: Container) -> None:
    ledger = c.ledger
    a, b = _funded(ledger, 10_000)
    commands: list[object] = [
        MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR") for _ in range(100)
    ]
    commands[37] = Boom(tenant=T)
    outcomes = ledger.execute_batch(commands)  # type: ignore[arg-type]
    assert isinstance(outcomes[37], CommandFailed) and outcomes[37].code == "internal_error"
    assert all(o.created for i, o in enumerate(outcomes) if i != 37)  # type: ignore[union-attr]
    assert ledger.get_account(a, T).posted_minor == 10_000 - 99
    assert ledger.get_account(b, T).posted_minor == 99


def test_a_bug_inside_a_non_atomic_batch_fails_only_that_item(c: Container) -> None:
    ledger = c.ledger
    a, b = _funded(ledger, 100)
    items = [MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=10, currency="EUR") for _ in range(5)]
    original = handlers.make_transfer
    calls = {"n": 0}

    def flaky(uow: object, cmd: MakeTransfer, vault: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("planted bug")
        return original(uow, cmd, vault)  # type: ignore[arg-type]

    handlers.make_transfer = flaky  # the non-atomic batch path dispatches through the module
    import application.ledger as ledger_module

    ledger_module.make_transfer = flaky
    try:
        (outcome,) = ledger.execute_batch([TransferBatch(tenant=T, items=tuple(items), atomic=False)])
    finally:
        handlers.make_transfer = original
        ledger_module.make_transfer = original
    assert isinstance(outcome, BatchResult)
    assert [type(r).__name__ for r in outcome.results].count("CommandFailed") == 1
    assert ledger.get_account(a, T).posted_minor == 100 - 40


def test_a_commit_that_fails_deterministically_is_split_until_the_culprit_fails_alone(c: Container) -> None:
    ledger = c.ledger
    a, b = _funded(ledger, 1_000)
    poison = uuid.uuid4()
    mapper = ledger.mapper
    to_stored = mapper.to_stored_event

    def refuse_one(event: object) -> object:
        if getattr(event, "reference", None) == "poison":
            raise ValueError("this event cannot be stored")  # e.g. an encoder limit
        return to_stored(event)

    mapper.to_stored_event = refuse_one  # type: ignore[method-assign]
    try:
        commands = [
            MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR",
                         reference="poison" if i == 5 else None, transfer_id=poison if i == 5 else None)
            for i in range(16)
        ]  # fmt: skip
        outcomes = ledger.execute_batch(commands)  # type: ignore[arg-type]
    finally:
        mapper.to_stored_event = to_stored  # type: ignore[method-assign]
    assert isinstance(outcomes[5], CommandFailed)
    assert sum(1 for o in outcomes if not isinstance(o, DomainError)) == 15
    assert ledger.get_account(a, T).posted_minor == 1_000 - 15
    with pytest.raises(DomainError):
        ledger.get_transfer(poison, T)


def test_a_contended_command_cannot_hold_the_writer_beyond_its_budget(c: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every commit conflicts (as if another writer always got there first): the batch gives up
    after CONFLICT_RETRY_BUDGET_MS with `concurrency_conflict`, instead of 30 retries' worth."""
    from eventsourcing.persistence import IntegrityError

    ledger = c.ledger
    a, b = _funded(ledger, 100)

    def always_conflict(*_: object, **__: object) -> object:
        raise IntegrityError("simulated: another writer committed first")

    monkeypatch.setattr(ledger, "save", always_conflict)
    started = time.monotonic()
    (outcome,) = ledger.execute_batch(
        [MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR")]
    )
    elapsed_ms = (time.monotonic() - started) * 1000
    assert isinstance(outcome, DomainError) and outcome.code == "concurrency_conflict"
    assert elapsed_ms < CONFLICT_RETRY_BUDGET_MS + 200


def test_reversing_twice_is_already_reversed_without_retrying(c: Container) -> None:
    ledger = c.ledger
    a, b = _funded(ledger, 100)
    t = ledger.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=30, currency="EUR"))
    first = ledger.execute(ReverseTransfer(tenant=T, transfer_id=t.id))  # type: ignore[union-attr]
    retries = ledger.conflict_retries
    with pytest.raises(DomainError) as again:  # a second reverse is 409 already_reversed (README)
        ledger.execute(ReverseTransfer(tenant=T, transfer_id=t.id))  # type: ignore[union-attr]
    assert first.created and again.value.code == "already_reversed"  # type: ignore[union-attr]
    assert again.value.details.get("reversal_id") == str(first.id)  # type: ignore[union-attr]
    assert ledger.conflict_retries == retries
    assert ledger.get_account(a, T).posted_minor == 100
