"""Event time (issue #15): a write may say when it happened (`occurred_at`), within bounds, and the
ledger records it beside the recording time; balances and ordering stay by recording order."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount, Withdraw
from domain.account import EVENT_TIME_REORDER_TOLERANCE
from domain.errors import DomainError, EventTimeOutOfRange
from domain.limits import EVENT_TIME_FUTURE_SKEW
from infrastructure.settings import Settings
from keel.bootstrap import Container, build

T = "evt"
DAY = timedelta(days=1)


@pytest.fixture
def c(settings: Settings) -> Iterator[Container]:
    container = build(settings, start_writer=False)
    yield container
    container.close()


def _now() -> datetime:
    return datetime.now(tz=timezone.utc)


def test_history_with_event_times_is_recorded_and_bounded(c: Container) -> None:
    ledger = c.ledger
    opened = _now() - 30 * DAY
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=opened)).id  # type: ignore[union-attr]
    b = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=opened)).id  # type: ignore[union-attr]
    dep = ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=1_000, currency="EUR", occurred_at=opened + DAY))
    assert dep.occurred_at == (opened + DAY).isoformat() and dep.created_at > dep.occurred_at  # type: ignore[union-attr]
    t = ledger.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=100, currency="EUR",
                                    occurred_at=opened + 2 * DAY))  # fmt: skip
    assert t.occurred_at == (opened + 2 * DAY).isoformat()  # type: ignore[union-attr]
    # A write without occurred_at happened when it is recorded.
    plain = ledger.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR"))
    assert plain.occurred_at is None  # type: ignore[union-attr]

    refused = {
        "in the future": opened + 30 * DAY + EVENT_TIME_FUTURE_SKEW + timedelta(minutes=1),
        "before the account was opened": opened - timedelta(seconds=1),
        "far out of order": opened + 2 * DAY - EVENT_TIME_REORDER_TOLERANCE - timedelta(seconds=1),
    }
    for why, when in refused.items():
        with pytest.raises(EventTimeOutOfRange) as e:
            ledger.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1,
                                        currency="EUR", occurred_at=when))  # fmt: skip
        assert e.value.code == "event_time_out_of_range" and e.value.details.get("field") == "occurred_at", why
    # Slightly out of order (within the tolerance) is fine: history arrives in order, give or take.
    ledger.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR",
                                occurred_at=opened + 2 * DAY - EVENT_TIME_REORDER_TOLERANCE / 2))  # fmt: skip
    assert ledger.get_account(a, T).posted_minor == 1_000 - 102
    with pytest.raises(DomainError):
        ledger.execute(Withdraw(tenant=T, account_id=a, amount_minor=1, currency="EUR", occurred_at=_now() + DAY))


def test_an_event_time_is_part_of_the_request(c: Container) -> None:
    ledger = c.ledger
    opened = _now() - DAY
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=opened)).id  # type: ignore[union-attr]
    ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=10, currency="EUR"))
    b = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=opened)).id  # type: ignore[union-attr]
    tid, when = uuid.uuid4(), _now() - timedelta(minutes=1)
    first = ledger.execute(MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b,
                                        amount_minor=1, currency="EUR", occurred_at=when))  # fmt: skip
    again = ledger.execute(MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b,
                                        amount_minor=1, currency="EUR", occurred_at=when))  # fmt: skip
    assert first.created and not again.created  # type: ignore[union-attr]
    with pytest.raises(DomainError) as e:
        ledger.execute(MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b,
                                    amount_minor=1, currency="EUR", occurred_at=when - timedelta(seconds=1)))  # fmt: skip
    assert e.value.code == "exists_with_different_fields"


def test_an_absent_event_time_costs_no_bytes(c: Container) -> None:
    ledger = c.ledger
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR")).id  # type: ignore[union-attr]
    dep = ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=10, currency="EUR"))
    dated = ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=10, currency="EUR", occurred_at=_now()))

    def plain_state(key: object) -> bytes:  # decrypted and decompressed when the store is
        return ledger.mapper.open_state(ledger.recorder.select_events(key)[0].state)

    assert b"occurred_at" not in plain_state(dep.key)  # type: ignore[union-attr]
    assert b"occurred_at" in plain_state(dated.key)  # type: ignore[union-attr]  # the check can see it
    assert ledger.get_transfer(dep.id, T).occurred_at is None  # type: ignore[union-attr]


def test_a_refused_movement_is_recorded_on_its_account_and_changes_no_balance(c: Container) -> None:
    """Issue #15, attempts count: refusals (insufficient funds, frozen, closed) are facts in the
    log the fraud module reads; they move no money and leave the account's balances as they were."""
    from domain.account import Account
    from domain.identity import account_key
    from fraud.features import FeatureExtractor

    ledger = c.ledger
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR")).id  # type: ignore[union-attr]
    b = ledger.execute(OpenAccount(tenant=T, currency="EUR")).id  # type: ignore[union-attr]
    ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=50, currency="EUR"))
    outcomes = ledger.execute_batch([
        MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=500, currency="EUR"),
        Withdraw(tenant=T, account_id=a, amount_minor=60, currency="EUR"),
        MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=20, currency="EUR"),
    ])  # fmt: skip
    assert [getattr(o, "code", "ok") for o in outcomes] == ["insufficient_funds", "insufficient_funds", "ok"]
    before = ledger.get_account(a, T)
    assert before.posted_minor == 30 and before.available_minor == 30
    key = account_key(T, a)
    refused = [e for e in ledger.events.get(key) if isinstance(e, Account.DebitRefused)]
    assert [(e.amount_minor, e.reason) for e in refused] == [(500, "insufficient_funds"), (60, "insufficient_funds")]
    # The fraud features see them: attempts refused in the last hour.
    ex = FeatureExtractor()
    for n in ledger.recorder.select_notifications(start=0, limit=1000, inclusive_of_start=False):
        ex.observe(ledger.mapper.to_domain_event(n))
    assert len(ex.accounts[key].refusals) == 2


def test_a_repeat_whose_account_has_since_changed_answers_the_original_not_a_refusal(c: Container) -> None:
    """A transfer repeated with its id after the account was emptied (and the writer's cache lost
    it) is the original, never today's insufficient_funds or an event time now out of order."""
    ledger = c.ledger
    a = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=_now() - DAY)).id  # type: ignore[union-attr]
    b = ledger.execute(OpenAccount(tenant=T, currency="EUR", occurred_at=_now() - DAY)).id  # type: ignore[union-attr]
    ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=100, currency="EUR", occurred_at=_now() - DAY))
    tid, when = uuid.uuid4(), _now() - 3 * timedelta(hours=1)
    request = MakeTransfer(tenant=T, transfer_id=tid, debit_account_id=a, credit_account_id=b, amount_minor=100,
                           currency="EUR", occurred_at=when)  # fmt: skip
    first = ledger.execute(request)
    ledger.execute(MakeTransfer(tenant=T, debit_account_id=b, credit_account_id=a, amount_minor=1, currency="EUR"))
    ledger.execute(Withdraw(tenant=T, account_id=a, amount_minor=1, currency="EUR"))
    ledger.cache.evict(first.key)  # type: ignore[union-attr]  # the transfer fell out of the cache
    again = ledger.execute(request)
    assert not again.created and again.id == first.id and again.key == first.key  # type: ignore[union-attr]
