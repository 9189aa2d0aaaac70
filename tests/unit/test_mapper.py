"""The stored event format round-trips every event type, plain, compressed or encrypted (Keel's
key ring or the library's cipher), and states stored by earlier versions still decode."""
from __future__ import annotations

import base64
import os
import uuid

import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from domain.account import Account
from domain.transfer import TRANSFER, Transfer, TransferTerms
from infrastructure.mapper import KeyRing, MsgspecMapper


def _transfer(amount: int = 1, reverses: Transfer | None = None, **terms: object) -> Transfer:
    t = TransferTerms(kind=TRANSFER, debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(), amount_minor=amount,
                      currency="USD", pending=True, **terms)  # type: ignore[arg-type]  # fmt: skip
    return Transfer.initiate(transfer_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", terms=t.validate(),
                             debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(), reverses=reverses)  # fmt: skip


def all_events() -> list[object]:
    a = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD", holder={"name": "Ann Holder-Example"},
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
    c.record_refused_debit(uuid.uuid4(), 5, "insufficient_funds", c.created_on)
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
        assert (b"Ann Holder-Example" in stored.state) is (not encrypted and isinstance(event, Account.Opened) and event.holder is not None)
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
    with pytest.raises(MapperDeserialisationError):
        m3.to_domain_event(stored_old[0])


# ---- the library's cipher and compressor, and states stored by earlier versions --------------

AES_KEY = base64.b64encode(bytes(range(32, 64))).decode()
OLD_RING = "old:" + base64.b64encode(bytes(range(32))).decode()


def _mapper(*, cipher: bool = False, compressor: bool = False, keyring: str | None = None) -> MsgspecMapper:
    mapper = MsgspecMapper(cipher=AESCipher({"CIPHER_KEY": AES_KEY}) if cipher else None,
                           compressor=ZlibCompressor() if compressor else None)  # fmt: skip
    if keyring is not None:
        mapper.keyring = KeyRing.parse(keyring)
    return mapper


@pytest.mark.parametrize(
    ("cipher", "compressor", "keyring"),
    [(True, False, None), (False, True, None), (True, True, None), (False, True, OLD_RING), (True, True, OLD_RING)],
)
def test_round_trip_with_the_library_cipher_and_compressor(cipher: bool, compressor: bool, keyring: str | None) -> None:
    mapper = _mapper(cipher=cipher, compressor=compressor, keyring=keyring)
    plain = MsgspecMapper()
    for event in all_events():
        stored = mapper.to_stored_event(event)
        if cipher or keyring:
            assert b"Ann Holder-Example" not in stored.state and b"USD" not in stored.state
        assert stored.state.startswith(b"K1") is (keyring is not None)  # the key ring encrypts when set
        if not (cipher or keyring):
            assert stored.state[:1] == b"\x78"  # zlib
        assert mapper.open_state(stored.state) == plain.to_stored_event(event).state  # same plaintext
        back = mapper.to_domain_event(stored)
        assert back == event and type(back) is type(event)


def test_the_mapper_gets_the_cipher_and_compressor_from_the_application_env() -> None:
    from eventsourcing.application import Application

    env = {"PERSISTENCE_MODULE": "eventsourcing.popo", "MAPPER_TOPIC": "infrastructure.mapper:MsgspecMapper",
           "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher", "CIPHER_KEY": AES_KEY,
           "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}  # fmt: skip
    app: Application[uuid.UUID] = Application(env=env)
    assert isinstance(app.mapper, MsgspecMapper)
    assert isinstance(app.mapper.cipher, AESCipher) and isinstance(app.mapper.compressor, ZlibCompressor)
    account = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD", holder={"name": "Ann"})
    account.credit(uuid.uuid4(), 5)
    app.save(account)
    stored = app.recorder.select_events(account.id)
    assert all(b"USD" not in s.state for s in stored)
    assert AESCipher({"CIPHER_KEY": AES_KEY}).decrypt(stored[0].state)[:1] == b"\x78"  # compressed, then encrypted
    assert app.repository.get(account.id).posted_minor == 5


# Stored by the mapper before it honoured the library's cipher and compressor (ids 1, 2, 3).
BEFORE_OPENED = (b'{"timestamp":"2026-11-30T07:39:00.795053Z","originator_topic":"domain.account:Account","tenant":"t",'
                 b'"public_id":"00000000-0000-0000-0000-000000000002","currency":"EUR","kind":"customer",'
                 b'"overdraft_limit_minor":0,"holder":{"name":"Ann"},"metadata":{"k":[1,"\xc3\xa9"]}}')  # fmt: skip
BEFORE_SNAPSHOT = (b'{"timestamp":"2026-11-30T07:39:00.795522Z","topic":"domain.account:Account","state":{'
                   b'"_created_on":"2026-11-30T07:39:00.795053Z","_modified_on":"2026-11-30T07:39:00.795389Z",'
                   b'"tenant":"t","public_id":"00000000-0000-0000-0000-000000000002","currency":"EUR","kind":"customer",'
                   b'"overdraft_limit_minor":0,"holder":{"name":"Ann"},"holder_erased":false,"metadata":{"k":[1,"\xc3\xa9"]},'
                   b'"status":"open","posted_minor":100,"pending_debits_minor":0,"pending_credits_minor":0}}')  # fmt: skip
# Account.Credited (transfer 3, 100) encrypted with OLD_RING's key.
BEFORE_CREDITED_K1 = base64.b64decode(
    "SzEDb2xkA612pUuTSS4YLX2eC2bxOskwL9nkDLLqHkN3JzrWgLu8Fp8Vc4hhMyesmCJngFabRSkEiGOOrpx5Ad4yoiVOwDaDmnTrgkSIl9Hh8L4J"
    "AtVLiafZsx2Cy8rMn05ez0gLP5EgWYVOr4L7VTucrkSk9RtLAZJr+fKsxQnfomslWp0zW8+ccP33ymUWpHSt038="
)


@pytest.mark.parametrize(
    ("cipher", "compressor"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_states_stored_before_still_decode(cipher: bool, compressor: bool) -> None:
    account_id = uuid.UUID(int=1)
    mapper = _mapper(cipher=cipher, compressor=compressor, keyring=OLD_RING)
    opened = mapper.to_domain_event(StoredEvent(account_id, 1, "domain.account:Account.Opened", BEFORE_OPENED))
    assert type(opened) is Account.Opened and opened.public_id == uuid.UUID(int=2) and opened.metadata == {"k": [1, "é"]}
    credited = mapper.to_domain_event(StoredEvent(account_id, 2, "domain.account:Account.Credited", BEFORE_CREDITED_K1))
    assert (credited.transfer_id, credited.amount_minor) == (uuid.UUID(int=3), 100)
    snapshot = mapper.to_domain_event(StoredEvent(account_id, 2, "eventsourcing.domain:Snapshot", BEFORE_SNAPSHOT))
    account = snapshot.mutate(None)
    assert (account.public_id, account.posted_minor, account.version) == (uuid.UUID(int=2), 100, 2)
    folded = credited.mutate(opened.mutate(None))
    assert folded.posted_minor == account.posted_minor and folded.public_id == account.public_id


def test_switching_encryption_keeps_every_stored_state_readable() -> None:
    events = all_events()
    by_cipher = [_mapper(cipher=True).to_stored_event(e) for e in events]
    by_ring = [_mapper(keyring=OLD_RING).to_stored_event(e) for e in events]
    plain = [MsgspecMapper().to_stored_event(e) for e in events]
    both = _mapper(cipher=True, compressor=True, keyring=OLD_RING)
    for stored in (by_cipher, by_ring, plain):
        assert [both.to_domain_event(s) for s in stored] == events
    assert [_mapper(cipher=True).to_domain_event(s) for s in plain] == events  # plaintext from before the cipher
    with pytest.raises(MapperDeserialisationError, match="cannot decode"):
        _mapper(cipher=True).to_domain_event(by_ring[0])  # a K1 state needs its key ring
    with pytest.raises(MapperDeserialisationError):
        MsgspecMapper().to_domain_event(by_cipher[0])


def test_a_library_cipher_state_that_happens_to_start_like_a_key_ring_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library's AES state starts with its random nonce: 1 in 65,536 starts b"K1".
    monkeypatch.setattr(AESCipher, "random_bytes", staticmethod(lambda n: b"K1" + os.urandom(n - 2)))
    event = all_events()[0]
    stored = _mapper(cipher=True).to_stored_event(event)
    assert stored.state.startswith(b"K1")
    assert _mapper(cipher=True).to_domain_event(stored) == event
    assert _mapper(cipher=True, keyring=OLD_RING).to_domain_event(stored) == event


def test_the_key_ring_is_a_library_cipher_and_still_set_as_an_attribute() -> None:
    from eventsourcing.persistence import Cipher

    ring = KeyRing.parse(OLD_RING)
    assert isinstance(ring, Cipher) and ring.decrypt(ring.encrypt(b"x")) == b"x"
    mapper = MsgspecMapper()
    mapper.keyring = ring
    assert mapper.keyring is ring and mapper.to_stored_event(all_events()[0]).state.startswith(b"K1")
    mapper.keyring = None
    assert mapper.to_stored_event(all_events()[0]).state.startswith(b"{")
