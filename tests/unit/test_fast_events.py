"""domain/events.py builds the write path's events without the library's generic machinery
(issue #16). What it builds must be what the library builds: the same event (every field, the
same `vars`, so the same stored bytes) and the same aggregate after it."""
from __future__ import annotations

import copy
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings, strategies as st

from domain.account import Account
from domain.events import new_event
from domain.transfer import Transfer, TransferTerms
from infrastructure.mapper import MsgspecMapper

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
BALANCE_EVENTS = [Account.Debited, Account.Credited, Account.DebitHeld, Account.CreditHeld]


def _account() -> Account:
    a = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD", overdraft_limit_minor=10**9)
    a.collect_events()
    return a


def _same_events(fast: object, library: object, stamp: datetime) -> None:
    library_state = dict(vars(library), timestamp=stamp)
    assert vars(fast) == library_state
    assert type(fast) is type(library)
    mapper = MsgspecMapper()
    assert mapper.to_stored_event(fast) == mapper.to_stored_event(type(library)(**library_state))


@pytest.mark.parametrize("event_class", BALANCE_EVENTS)
@given(amount=st.integers(1, 10**12), occurred=st.none() | st.datetimes(timezones=st.just(timezone.utc)))
@settings(max_examples=30, deadline=None)
def test_balance_events_equal_the_librarys(event_class: type, amount: int, occurred: datetime | None) -> None:
    a = _account()
    b = copy.deepcopy(a)
    tid = uuid.uuid4()
    a._trigger(event_class, tid, amount, occurred)  # noqa: SLF001 - the fast path
    kwargs = {"transfer_id": tid, "amount_minor": amount} | ({"occurred_at": occurred} if occurred else {})
    b.trigger_event(event_class, **kwargs)  # the library's
    (fast,), (library,) = a.collect_events(), b.collect_events()
    _same_events(fast, library, fast.timestamp)
    assert vars(a) | {"_modified_on": None} == vars(b) | {"_modified_on": None}
    assert a.modified_on == fast.timestamp and a.version == b.version == 2


@given(
    amount=st.integers(1, 10**12), pending=st.booleans(), reference=st.none() | st.text(max_size=20),
    timeout=st.none() | st.integers(1, 86_400), occurred=st.none() | st.datetimes(timezones=st.just(timezone.utc)),
)  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_initiated_equals_the_librarys(amount: int, pending: bool, reference: str | None, timeout: int | None,
                                       occurred: datetime | None) -> None:  # fmt: skip
    terms = TransferTerms("transfer", uuid.uuid4(), uuid.uuid4(), amount, "USD", reference, {"k": "v"}, pending, timeout, occurred)
    ids = {"transfer_id": uuid.uuid4(), "public_id": uuid.uuid4(), "debit_account_id": uuid.uuid4(), "credit_account_id": uuid.uuid4()}
    fast = Transfer.initiate(tenant="t", terms=terms, created_on=T0, **ids)
    library = Transfer._create(  # noqa: SLF001 - what initiate used to call
        Transfer.Initiated, timestamp=T0, id=ids["transfer_id"], tenant="t", public_id=ids["public_id"], kind=terms.kind,
        debit_account_id=ids["debit_account_id"], credit_account_id=ids["credit_account_id"],
        debit_public_id=terms.debit_account_id, credit_public_id=terms.credit_account_id, amount_minor=amount,
        currency="USD", reference=reference, metadata={"k": "v"}, pending=pending, timeout_s=timeout,
        reverses_id=None, reverses_public_id=None, **({"occurred_at": occurred} if occurred else {}),
    )  # fmt: skip
    (fe,), (le,) = fast.collect_events(), library.collect_events()
    _same_events(fe, le, T0)
    assert vars(fast) == vars(library)


def test_an_unknown_or_missing_field_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown"):
        new_event(Account.Debited, uuid.uuid4(), 2, T0, transfer_id=uuid.uuid4(), amount_minor=1, amout=2)
    with pytest.raises(TypeError, match="missing"):
        new_event(Account.Debited, uuid.uuid4(), 2, T0, transfer_id=uuid.uuid4())
    with pytest.raises(TypeError, match="UUID"):
        new_event(Account.Debited, "not-a-uuid", 2, T0, transfer_id=uuid.uuid4(), amount_minor=1)  # type: ignore[arg-type]
