"""The stored event format round-trips every event type, encrypted or not."""
from __future__ import annotations

import base64
import os
import uuid

import pytest

from domain.account import Account
from domain.transfer import TRANSFER, Transfer, TransferTerms
from infrastructure.mapper import KeyRing, MsgspecMapper


def _transfer(amount: int = 1, reverses: Transfer | None = None, **terms: object) -> Transfer:
    t = TransferTerms(kind=TRANSFER, debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(), amount_minor=amount,
                      currency="USD", pending=True, **terms)  # type: ignore[arg-type]  # fmt: skip
    return Transfer.initiate(transfer_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", terms=t.validate(),
                             debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(), reverses=reverses)  # fmt: skip


def all_events() -> list[object]:
    a = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD", holder={"name": "Ann"},
                     metadata={"k": [1, "é"]})  # fmt: skip
    a.credit(uuid.uuid4(), 100)
    a.debit(uuid.uuid4(), 50)
    a.hold_debit(uuid.uuid4(), 10)
    a.hold_credit(uuid.uuid4(), 10)
    a.settle_debit_hold(uuid.uuid4(), 10, 5)
    a.settle_credit_hold(uuid.uuid4(), 10, 0)
    a.freeze()
    a.unfreeze()
    a.erase_holder()
    t = _transfer(2**63 - 1, reference="ref ✓", metadata={"a": {"b": None}}, timeout_s=5)
    t.post_hold(3, t.created_on)
    t.mark_reversed(_transfer())
    u = _transfer(reverses=t)
    u.void_hold(u.created_on)
    v = _transfer(timeout_s=1)
    from datetime import timedelta

    v.expire_hold(v.created_on + timedelta(seconds=2))
    c = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD")
    c.close()
    return [*a.collect_events(), *t.collect_events(), *u.collect_events(), *v.collect_events(), *c.collect_events()]


def test_every_event_type_is_covered() -> None:
    names = {type(e).__qualname__ for e in all_events()}
    declared = {
        f"{agg.__name__}.{name}"
        for agg in (Account, Transfer)
        for name, value in vars(agg).items()
        if isinstance(value, type) and issubclass(value, (Account.Event, Transfer.Event))
        and name not in ("Created", "Event", "Snapshot")
    }
    assert declared <= names, declared - names


@pytest.mark.parametrize("encrypted", [False, True])
def test_round_trip(encrypted: bool) -> None:
    mapper = MsgspecMapper()
    if encrypted:
        mapper.keyring = KeyRing.parse("k1:" + base64.b64encode(os.urandom(32)).decode())
    for event in all_events():
        stored = mapper.to_stored_event(event)
        assert (b"Ann" in stored.state) is (not encrypted and isinstance(event, Account.Opened) and event.holder is not None)
        back = mapper.to_domain_event(stored)
        assert back == event
        assert type(back) is type(event)


def test_rotation_keeps_old_events_readable() -> None:
    old = base64.b64encode(os.urandom(32)).decode()
    new = base64.b64encode(os.urandom(16)).decode()
    m1 = MsgspecMapper()
    m1.keyring = KeyRing.parse(f"old:{old}")
    stored_old = [m1.to_stored_event(e) for e in all_events()]
    m2 = MsgspecMapper()
    m2.keyring = KeyRing.parse(f"new:{new},old:{old}")
    stored_new = m2.to_stored_event(all_events()[0])
    assert stored_new.state[3:6] == b"new"
    assert [m2.to_domain_event(s) for s in stored_old]
    m3 = MsgspecMapper()
    m3.keyring = KeyRing.parse(f"new:{new}")
    from eventsourcing.persistence import MapperDeserialisationError

    with pytest.raises(MapperDeserialisationError):
        m3.to_domain_event(stored_old[0])
