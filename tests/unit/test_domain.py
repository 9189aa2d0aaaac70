"""Every money rule of the domain, without I/O. Each test fails if its rule is removed."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from domain import errors
from domain.account import CLOSED, FROZEN, OPEN, Account
from domain.identity import settlement_key, settlement_public_id
from domain.limits import METADATA_MAX_BYTES
from domain.money import AMOUNT_MAX_MINOR, check_amount, check_currency
from domain.transfer import EXPIRED, PENDING, POSTED, TRANSFER, Transfer, TransferTerms


def _open(**kw: object) -> Account:
    return Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", **kw)  # type: ignore[arg-type]


def acct(overdraft: int = 0, currency: str = "USD") -> Account:
    return _open(currency=currency, overdraft_limit_minor=overdraft)


def funded(amount: int, overdraft: int = 0) -> Account:
    a = acct(overdraft)
    a.credit(uuid.uuid4(), amount)
    return a


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, None, AMOUNT_MAX_MINOR + 1])
def test_amount_must_be_positive_int_in_range(bad: object) -> None:
    with pytest.raises(errors.InvalidAmount):
        check_amount(bad)


def test_max_amount_is_accepted() -> None:
    assert check_amount(AMOUNT_MAX_MINOR) == AMOUNT_MAX_MINOR


@pytest.mark.parametrize("bad", ["usd", "US", "USDX", "", None, 840])
def test_currency_is_three_upper_letters(bad: object) -> None:
    with pytest.raises(errors.InvalidCurrency):
        check_currency(bad)


def test_new_account_is_open_and_empty() -> None:
    a = acct(overdraft=50)
    assert (a.status, a.posted_minor, a.pending_debits_minor, a.available_minor) == (OPEN, 0, 0, 50)


def test_negative_overdraft_rejected() -> None:
    with pytest.raises(errors.ValidationFailed):
        _open(currency="USD", overdraft_limit_minor=-1)


def test_insufficient_funds_carries_available_and_records_nothing() -> None:
    a = funded(100)
    version = a.version
    with pytest.raises(errors.InsufficientFunds) as e:
        a.debit(uuid.uuid4(), 101)
    assert e.value.details["available"] == 100
    assert a.version == version and a.posted_minor == 100


def test_overdraft_limit_extends_available() -> None:
    a = funded(100, overdraft=50)
    a.debit(uuid.uuid4(), 150)
    assert a.posted_minor == -50 and a.available_minor == 0
    with pytest.raises(errors.InsufficientFunds):
        a.debit(uuid.uuid4(), 1)


def test_holds_reduce_available_but_not_posted() -> None:
    a = funded(100)
    a.hold_debit(uuid.uuid4(), 60)
    assert a.posted_minor == 100 and a.available_minor == 40
    with pytest.raises(errors.InsufficientFunds):
        a.hold_debit(uuid.uuid4(), 41)


def test_frozen_account_rejects_debits_but_accepts_credits() -> None:
    a = funded(100)
    a.freeze()
    assert a.status == FROZEN
    with pytest.raises(errors.AccountFrozen):
        a.debit(uuid.uuid4(), 1)
    a.credit(uuid.uuid4(), 5)
    assert a.posted_minor == 105
    a.unfreeze()
    a.debit(uuid.uuid4(), 1)


def test_close_only_when_zero_posted_and_pending() -> None:
    a = funded(10)
    with pytest.raises(errors.AccountNotEmpty):
        a.close()
    a.debit(uuid.uuid4(), 10)
    a.hold_credit(uuid.uuid4(), 5)
    with pytest.raises(errors.AccountNotEmpty):
        a.close()
    b = acct()
    b.close()
    assert b.status == CLOSED
    with pytest.raises(errors.AccountClosed):
        b.credit(uuid.uuid4(), 1)
    with pytest.raises(errors.AccountClosed):
        b.debit(uuid.uuid4(), 1)
    with pytest.raises(errors.AccountClosed):
        b.freeze()


def test_settlement_may_go_negative_but_cannot_be_closed_or_frozen() -> None:
    s = Account.open_settlement(tenant="t", currency="EUR")
    assert s.id == settlement_key("t", "EUR") != settlement_key("u", "EUR")
    assert s.public_id == settlement_public_id("EUR")
    s.debit(uuid.uuid4(), 10**15)
    assert s.posted_minor == -(10**15)
    with pytest.raises(errors.SettlementAccountRestricted):
        s.close()
    with pytest.raises(errors.SettlementAccountRestricted):
        s.freeze()


def test_balance_overflow_is_rejected() -> None:
    a = acct()
    a.credit(uuid.uuid4(), AMOUNT_MAX_MINOR)
    with pytest.raises(errors.BalanceOverflow):
        a.credit(uuid.uuid4(), 1)


def test_metadata_limit() -> None:
    with pytest.raises(errors.ValidationFailed):
        _open(currency="USD", metadata={"x": "y" * METADATA_MAX_BYTES})
    from domain.limits import check_metadata

    with pytest.raises(errors.ValidationFailed):
        check_metadata({"x": "y" * METADATA_MAX_BYTES})
    with pytest.raises(errors.ValidationFailed):
        check_metadata(["not", "an", "object"])


def _validate(debit_currency: str = "USD", credit_currency: str = "USD", **over: object) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    kw: dict[str, object] = dict(
        kind=TRANSFER, debit_account_id=a, credit_account_id=b, amount_minor=5, currency="USD", reference=None,
        metadata={}, pending=False, timeout_s=None,
    )  # fmt: skip
    kw.update(over)
    TransferTerms(**kw).validate().check_currencies(debit_currency, credit_currency)  # type: ignore[arg-type]


def test_transfer_rules() -> None:
    _validate()
    x = uuid.uuid4()
    with pytest.raises(errors.SameAccount):
        _validate(debit_account_id=x, credit_account_id=x)
    with pytest.raises(errors.CurrencyMismatch):
        _validate(credit_currency="EUR")
    with pytest.raises(errors.CurrencyMismatch):
        _validate(currency="EUR")
    with pytest.raises(errors.InvalidAmount):
        _validate(amount_minor=0)
    with pytest.raises(errors.ValidationFailed):
        _validate(reference="r" * 129)
    with pytest.raises(errors.ValidationFailed):
        _validate(timeout_s=10)  # timeout without pending
    _validate(pending=True, timeout_s=10)


def terms(amount: int = 100, timeout_s: int | None = None, **over: object) -> TransferTerms:
    kw: dict[str, object] = dict(
        kind=TRANSFER, debit_account_id=uuid.UUID(int=1), credit_account_id=uuid.UUID(int=2), amount_minor=amount,
        currency="USD", pending=True, timeout_s=timeout_s,
    )  # fmt: skip
    kw.update(over)
    return TransferTerms(**kw).validate()  # type: ignore[arg-type]


def hold(amount: int = 100, timeout_s: int | None = None) -> Transfer:
    return Transfer.initiate(
        transfer_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", terms=terms(amount, timeout_s),
        debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(),
    )  # fmt: skip


def test_post_in_part_and_not_more_than_held() -> None:
    t = hold(100)
    assert t.status == PENDING
    with pytest.raises(errors.ExceedsHeldAmount):
        t.post_hold(101, t.created_on)
    assert t.post_hold(60, t.created_on) == 60
    assert (t.status, t.posted_amount_minor) == (POSTED, 60)


def test_finished_transfer_cannot_be_posted_or_voided_again() -> None:
    t = hold()
    t.void_hold(t.created_on)
    with pytest.raises(errors.TransferNotPending):
        t.post_hold(None, t.created_on)
    with pytest.raises(errors.TransferNotPending):
        t.void_hold(t.created_on)


def test_hold_expires_after_timeout() -> None:
    t = hold(timeout_s=10)
    assert not t.is_due(t.created_on + timedelta(seconds=9))
    later = t.created_on + timedelta(seconds=10)
    assert t.is_due(later)
    with pytest.raises(errors.TransferExpired):
        t.post_hold(None, later)
    t.expire_hold(later)
    assert t.status == EXPIRED
    # After the expiry is recorded the answer stays "expired", not "not pending".
    with pytest.raises(errors.TransferExpired):
        t.post_hold(None, later)
    with pytest.raises(errors.TransferExpired):
        t.void_hold(later)


def test_reverse_only_posted_and_only_once() -> None:
    t = hold()
    with pytest.raises(errors.TransferNotPosted):
        t.check_can_reverse()
    t.post_hold(None, t.created_on)
    t.mark_reversed(hold())
    with pytest.raises(errors.AlreadyReversed):
        t.mark_reversed(hold())


def test_a_transfer_keeps_its_terms_and_a_repeat_compares_every_one() -> None:
    t = hold(100)
    assert t.terms == terms(100)
    for change in (
        {"amount": 101},
        {"reference": "x"},
        {"metadata": {"k": 1}},
        {"pending": False},
        {"timeout_s": 5},
        {"kind": "deposit"},
        {"currency": "EUR"},
        {"debit_account_id": uuid.UUID(int=3)},
        {"credit_account_id": uuid.UUID(int=3)},
    ):
        amount = change.pop("amount", 100)
        other = TransferTerms(**{**{f: getattr(t.terms, f) for f in TransferTerms._fields}, **change, "amount_minor": amount})  # type: ignore[arg-type]
        assert other != t.terms, change
