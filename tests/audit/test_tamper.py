"""Tampering with the store directly (as someone with database access would) is detected by
verify, which names the first bad position; an untouched store verifies."""
from __future__ import annotations

import hashlib
import threading
import uuid

import pytest

from application.chain import GENESIS_HASH, chain_hash, id_bytes
from application.commands import Deposit, MakeTransfer, OpenAccount
from infrastructure.settings import Settings
from keel.bootstrap import Container, build
from tests.audit.conftest import T, Raw, make_history


def positions(raw: Raw) -> list[int]:
    return [r[0] for r in raw.q(f"SELECT {raw.pos} FROM ledger_events ORDER BY {raw.pos}")]


def test_untouched_store_verifies_and_checkpoints_match(ac: Container, raw: Raw) -> None:
    make_history(ac)
    audit = ac.audit
    cp = audit.checkpoint()
    ac.writer.execute(OpenAccount(tenant=T, currency="EUR"))
    report = audit.verify()
    ps = positions(raw)
    assert report.ok, report
    assert report.events_checked == len(ps) and report.head_position == ps[-1]
    assert report.checkpoints_checked == 1 and cp.position < report.head_position
    (head,) = raw.q("SELECT hash FROM ledger_chain ORDER BY notification_id DESC LIMIT 1")
    assert report.head_hash == bytes(head[0]).hex()


def test_chain_is_recomputable_from_the_stored_rows(ac: Container, raw: Raw) -> None:
    """The stored hashes are exactly SHA-256(prev || canonical row), from the genesis hash."""
    make_history(ac, transfers=3)
    rows = raw.q(f"SELECT {raw.pos}, originator_id, originator_version, topic, state FROM ledger_events ORDER BY {raw.pos}")
    stored = dict(raw.q("SELECT notification_id, hash FROM ledger_chain"))
    prev = GENESIS_HASH
    for p, oid, v, topic, state in rows:
        prev = chain_hash(prev, p, id_bytes(oid), v, topic, bytes(state))
        assert bytes(stored[p]) == prev
    assert len(stored) == len(rows)


def test_update_of_one_state_byte_is_found(ac: Container, raw: Raw) -> None:
    make_history(ac)
    target = positions(raw)[4]
    (state,) = raw.q(f"SELECT state FROM ledger_events WHERE {raw.pos} = ?", (target,))[0]
    edited = bytearray(state)
    edited[len(edited) // 2] ^= 0x01
    raw.q(f"UPDATE ledger_events SET state = ? WHERE {raw.pos} = ?", (bytes(edited), target))
    report = ac.audit.verify()
    assert not report.ok and report.first_bad_position == target
    assert "hash mismatch" in report.reason
    assert report.events_checked == 4


def test_deleted_row_is_found(ac: Container, raw: Raw) -> None:
    make_history(ac)
    ps = positions(raw)
    raw.q(f"DELETE FROM ledger_events WHERE {raw.pos} = ?", (ps[6],))
    report = ac.audit.verify()
    assert (report.ok, report.first_bad_position) == (False, ps[6])
    assert "missing" in report.reason


def test_deleted_row_and_its_hash_is_found_at_the_next_position(ac: Container, raw: Raw) -> None:
    make_history(ac)
    ps = positions(raw)
    raw.q(f"DELETE FROM ledger_events WHERE {raw.pos} = ?", (ps[6],))
    raw.q("DELETE FROM ledger_chain WHERE notification_id = ?", (ps[6],))
    report = ac.audit.verify()
    assert (report.ok, report.first_bad_position) == (False, ps[7])


def test_truncating_the_tail_is_found_by_the_signed_checkpoint(ac: Container, raw: Raw) -> None:
    make_history(ac)
    ac.audit.checkpoint()
    ps = positions(raw)
    raw.q(f"DELETE FROM ledger_events WHERE {raw.pos} >= ?", (ps[-2],))
    raw.q("DELETE FROM ledger_chain WHERE notification_id >= ?", (ps[-2],))
    report = ac.audit.verify()
    assert not report.ok and "truncated" in report.reason
    assert report.first_bad_position == ps[-2]


def test_swapped_rows_are_found_at_the_first(ac: Container, raw: Raw) -> None:
    make_history(ac)
    ps = positions(raw)
    p1, p2 = ps[2], ps[5]
    cols = "originator_id, originator_version, topic, state"
    r1 = raw.q(f"SELECT {cols} FROM ledger_events WHERE {raw.pos} = ?", (p1,))[0]
    r2 = raw.q(f"SELECT {cols} FROM ledger_events WHERE {raw.pos} = ?", (p2,))[0]
    sets = "originator_id = ?, originator_version = ?, topic = ?, state = ?"
    raw.q(f"UPDATE ledger_events SET originator_version = -1 WHERE {raw.pos} = ?", (p1,))
    raw.q(f"UPDATE ledger_events SET {sets} WHERE {raw.pos} = ?", (*r1, p2))
    raw.q(f"UPDATE ledger_events SET {sets} WHERE {raw.pos} = ?", (*r2, p1))
    report = ac.audit.verify()
    assert (report.ok, report.first_bad_position) == (False, p1)


def test_appended_forged_row_is_found(ac: Container, raw: Raw) -> None:
    make_history(ac)
    last = positions(raw)[-1]
    oid, topic, state = raw.q(f"SELECT originator_id, topic, state FROM ledger_events WHERE {raw.pos} = ?", (last,))[0]
    forged_id = uuid.uuid4()
    raw.q(
        "INSERT INTO ledger_events (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
        (forged_id if raw.pg else forged_id.hex, 1, topic, state),
    )
    forged = positions(raw)[-1]
    report = ac.audit.verify()
    assert (report.ok, report.first_bad_position) == (False, forged)
    assert "not in the chain" in report.reason
    # With a made-up hash as well, it is still found.
    raw.q("INSERT INTO ledger_chain (notification_id, hash) VALUES (?, ?)", (forged, hashlib.sha256(b"x").digest()))
    report = ac.audit.verify()
    assert (report.ok, report.first_bad_position) == (False, forged)


def test_rewritten_history_with_recomputed_hashes_is_found_by_the_checkpoint(ac: Container, raw: Raw) -> None:
    """An attacker who edits a row and recomputes every later hash still cannot re-sign."""
    make_history(ac)
    audit = ac.audit
    cp = audit.checkpoint()
    ps = positions(raw)
    target = ps[3]
    (state,) = raw.q(f"SELECT state FROM ledger_events WHERE {raw.pos} = ?", (target,))[0]
    raw.q(f"UPDATE ledger_events SET state = ? WHERE {raw.pos} = ?", (bytes(state) + b" ", target))
    rows = raw.q(f"SELECT {raw.pos}, originator_id, originator_version, topic, state FROM ledger_events ORDER BY {raw.pos}")
    prev = GENESIS_HASH
    raw.q("DELETE FROM ledger_chain")
    for p, oid, v, topic, st in rows:
        prev = chain_hash(prev, p, id_bytes(oid), v, topic, bytes(st))
        raw.q("INSERT INTO ledger_chain (notification_id, hash) VALUES (?, ?)", (p, prev))
    report = audit.verify()
    assert not report.ok and report.first_bad_position == cp.position
    assert "rewritten" in report.reason


def test_checkpoint_table_is_append_only_and_forged_signature_fails(ac: Container, raw: Raw) -> None:
    make_history(ac, transfers=2)
    ac.audit.checkpoint()
    with pytest.raises(Exception, match="append-only"):
        raw.q("UPDATE ledger_checkpoints SET position = 1")
    head = ac.audit.store.head()
    raw.q(
        "INSERT INTO ledger_checkpoints (position, head_hash, signed_at, key_id, signature) VALUES (?, ?, ?, ?, ?)",
        (head[0], head[1].hex(), "2030-01-01T00:00:00+00:00", ac.audit.signer.key_id, "00" * 64),
    )
    report = ac.audit.verify()
    assert not report.ok and "signature" in report.reason


@pytest.mark.postgres
def test_concurrent_writers_on_postgres_leave_no_event_outside_the_chain(pg_settings: Settings) -> None:
    """Two processes' worth of writers (two containers, each with its own pool) interleave."""
    containers = [build(pg_settings), build(pg_settings)]
    try:
        ids = [containers[0].writer.execute(OpenAccount(tenant=T, currency="USD")).id for _ in range(8)]
        for i in range(0, 8, 2):
            containers[0].writer.execute(Deposit(tenant=T, account_id=ids[i], amount_minor=100, currency="USD"))
        errors: list[BaseException] = []

        def work(c: Container, debit: uuid.UUID, credit: uuid.UUID) -> None:
            try:
                for _ in range(15):  # each its own commit: many small interleaved transactions
                    c.ledger.execute(MakeTransfer(tenant=T, debit_account_id=debit, credit_account_id=credit,
                                                  amount_minor=1, currency="USD"))  # fmt: skip
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(containers[k % 2], ids[2 * k], ids[2 * k + 1])) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        report = containers[0].audit.verify()
        assert report.ok, report
        assert report.events_checked == containers[0].ledger.recorder.max_notification_id() - _gaps(pg_settings)
    finally:
        for c in containers:
            c.close()


def _gaps(settings: Settings) -> int:
    r = Raw(settings)
    try:
        (n, mx), = r.q("SELECT count(*), max(notification_id) FROM ledger_events")
        return mx - n
    finally:
        r.close()


def test_a_failing_chain_write_stores_no_event(ac: Container, raw: Raw) -> None:
    """The chain row and its event commit together or not at all (here the chain row clashes)."""
    a, _ = make_history(ac, transfers=1)
    before = positions(raw)
    if raw.pg:
        (nxt,) = raw.q("SELECT last_value + 1 FROM ledger_events_notification_id_seq")[0]
    else:
        nxt = before[-1] + 1
    for p in range(nxt, nxt + 100):  # every retry of the write clashes too
        raw.q("INSERT INTO ledger_chain (notification_id, hash) VALUES (?, ?)", (p, b"\x00" * 32))
    with pytest.raises(Exception):  # noqa: B017 - any failure will do; what matters is below
        ac.ledger.execute(Deposit(tenant=T, account_id=a, amount_minor=1, currency="USD"))
    assert positions(raw) == before
