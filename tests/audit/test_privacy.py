"""Crypto-shredding of holder data and rotation of data keys: the chain, balances and replays
survive both, and erased data is unreadable everywhere it was stored.

Holder keys are stored wrapped by a KEK that lives outside the database (tests/security/
test_keys_at_rest.py shows a copy of the database alone reveals nothing)."""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from application.commands import Deposit, OpenAccount
from application.privacy import ERASED, erase_holder
from domain.errors import NotFound
from domain.identity import account_key
from infrastructure.audit_keys import data_key_spec, rotate_data_key
from infrastructure.mapper import KeyRing
from infrastructure.settings import Settings, SettingsError, load_settings
from keel.bootstrap import Container, build
from tests.audit.conftest import T, Raw, make_history, make_settings

HOLDER = {"name": "Alice Example", "email": "alice@example.com"}
# PostgreSQL has no KEK of its own (the embedded store makes one beside its file).
PG_KEK = "hprivacy:" + base64.b64encode(os.urandom(32)).decode()


def settings_for(kind: str, tmp_path: Path, schemas: list, **overrides: Any) -> Settings:
    if kind == "postgres":
        overrides.setdefault("holder_kek", PG_KEK)
    return make_settings(kind, tmp_path, schemas, **overrides)


@pytest.fixture
def asettings(store_kind: str, tmp_path: Path, pg_session_schemas: list) -> Settings:
    return settings_for(store_kind, tmp_path, pg_session_schemas)


def stored_bytes(raw: Raw) -> bytes:
    """Everything the store holds in events, snapshots and keys, as one blob to search."""
    blobs = [bytes(r[0]) for r in raw.q("SELECT state FROM ledger_events")]
    blobs += [bytes(r[0]) for r in raw.q("SELECT state FROM ledger_snapshots")]
    blobs += [bytes(r[0]) if r[0] is not None else b"" for r in raw.q("SELECT wrapped_key FROM keel_holder_keys")]
    return b"\n".join(blobs)


def erase(c: Container, account_id: Any) -> Any:
    """The admin path, for the tenant's account `account_id` (a public id)."""
    return erase_holder(c.ledger.holder_vault, c.ledger.account_by_key, c.writer.execute, account_key(T, account_id))


def test_holder_is_sealed_at_rest_and_erasure_shreds_it(ac: Container, raw: Raw) -> None:
    a, b = make_history(ac, transfers=3)
    key = account_key(T, a)
    assert ac.ledger.get_account(a, T).holder == HOLDER
    ac.ledger.take_snapshot(key)
    assert b"Alice" not in stored_bytes(raw) and b"alice@" not in stored_bytes(raw)
    before = ac.ledger.get_account(a, T)
    b_posted = ac.ledger.get_account(b, T).posted_minor

    state = erase(ac, a)
    assert state.holder == ERASED and state.posted_minor == before.posted_minor

    # The snapshot taken before erasure still holds the sealed holder: now unreadable.
    snap = ac.ledger.snapshots.get(key)  # type: ignore[union-attr]
    sealed = next(iter(snap)).state["holder"]
    assert ac.ledger.holder_vault.reveal(sealed) == ERASED
    row = raw.q("SELECT wrapped_key, kek_id, erased_at FROM keel_holder_keys WHERE key_id = ?", (str(key),))[0]
    assert row[0] is None and row[1] is None and row[2]  # the wrapped key is gone, under every KEK
    audit = ac.audit
    opened = [e for e in audit.events(0, 1000) if e.aggregate_id == key and e.event_type == "Account.Opened"]
    assert opened[0].payload["holder"] == ERASED
    assert [e.event_type for e in audit.account_events(key)][-1] == "Account.HolderErased"

    # Replay in a fresh process: balances equal, the chain verifies, the holder stays erased.
    ac.close()
    fresh = build(ac.settings)
    try:
        again = fresh.ledger.get_account(a, T)
        assert (again.posted_minor, again.available_minor, again.holder) == (before.posted_minor, before.available_minor, ERASED)
        assert fresh.ledger.get_account(b, T).posted_minor == b_posted
        pit = fresh.audit.balance_at_version(key, before.version)
        assert pit.posted_minor == before.posted_minor
        report = fresh.audit.verify()
        assert report.ok, report
        fresh.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=5, currency="USD"))
        assert fresh.ledger.get_account(a, T).posted_minor == before.posted_minor + 5
        assert erase(fresh, a).holder == ERASED  # erasing again is harmless
    finally:
        fresh.close()


def test_erasing_an_unknown_account_destroys_nothing(ac: Container) -> None:
    import uuid

    with pytest.raises(NotFound):
        erase(ac, uuid.uuid4())


def test_rotation_keeps_old_events_readable_and_the_chain_valid(store_kind: str, tmp_path: Path, pg_session_schemas: list) -> None:
    k1 = "k1:" + base64.b64encode(os.urandom(32)).decode()
    k2 = "k2:" + base64.b64encode(os.urandom(32)).decode()
    s1 = settings_for(store_kind, tmp_path, pg_session_schemas, data_key=k1)
    c1 = build(s1)
    a, _ = make_history(c1, transfers=3)
    posted = c1.ledger.get_account(a, T).posted_minor
    c1.close()

    s2 = msgspec.structs.replace(s1, data_key=f"{k2},{k1}")
    c2 = build(s2)
    raw = Raw(s2)
    try:
        c2.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=1, currency="USD"))
        assert c2.ledger.get_account(a, T).posted_minor == posted + 1
        states = [bytes(r[0]) for r in raw.q(f"SELECT state FROM ledger_events ORDER BY {raw.pos}")]
        assert all(s.startswith(b"K1") for s in states)
        assert states[0][3:5] == b"k1" and states[-1][3:5] == b"k2"
        assert all("unreadable" not in e.payload for e in c2.audit.events(0, 1000))
        assert c2.audit.verify().ok
    finally:
        raw.close()
        c2.close()
    # Without the old key the old events cannot be read: rotation must keep it.
    c3 = build(msgspec.structs.replace(s1, data_key=k2))
    try:
        assert any("unreadable" in e.payload for e in c3.audit.events(0, 1000))
        assert c3.audit.verify().ok  # the chain never needs a data key
    finally:
        c3.close()


def test_rotate_data_key_file_prepends_and_new_events_use_it(tmp_path: Path, pg_session_schemas: list) -> None:
    key_file = tmp_path / "keys" / "data-keys"
    # A configured key file that does not exist is refused (never a silent "no encryption")...
    with pytest.raises(SettingsError, match="KEEL_DATA_KEY_FILE"):
        make_settings("sqlite", tmp_path, pg_session_schemas, data_key_file=str(key_file))
    # ...and made by the rotation, before the store first starts.
    assert rotate_data_key(load_settings({}, data_key_file=str(key_file))) == ("file", str(key_file))
    s = make_settings("sqlite", tmp_path, pg_session_schemas, data_key_file=str(key_file))
    first = KeyRing.parse(data_key_spec(s)).current_id
    c = build(s)
    a = c.writer.execute(OpenAccount(tenant=T, currency="USD", holder=HOLDER)).id
    c.close()
    rotate_data_key(s)
    ring = KeyRing.parse(data_key_spec(s))
    assert ring.current_id != first and len(key_file.read_text().split()) == 2
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    c = build(s)
    try:
        c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=3, currency="USD"))
        assert c.ledger.get_account(a, T).holder == HOLDER
        assert c.audit.verify().ok
    finally:
        c.close()
    where, value = rotate_data_key(msgspec.structs.replace(s, data_key_file=None, data_key="old:" + base64.b64encode(os.urandom(16)).decode()))
    assert where == "env" and value.endswith(",old:" + value.split(",old:")[1]) and KeyRing.parse(value).current_id != "old"


def test_access_log_is_append_only_and_queryable(ac: Container, raw: Raw) -> None:
    audit = ac.audit
    audit.record_access("key1", "auditor", "GET /v1/audit/events", "after=0", "200")
    audit.record_access("key2", "admin", "DELETE /v1/accounts/{id}/holder", "acc-1", "204")
    audit.record_access("key1", "auditor", "GET /v1/audit/verify", "-", "200")
    many = [(f"2026-01-01T00:00:0{i}", f"k{i}", "banking", "POST /v1/transfers", "/v1/transfers", "201") for i in range(3)]
    audit.record_access_many(many)  # the API's batched path (one array INSERT on PostgreSQL)
    assert [(e.at, e.key_id, e.role, e.route, e.target, e.outcome) for e in audit.access_log()[3:]] == many
    entries = audit.access_log()
    assert [(e.key_id, e.route, e.outcome) for e in entries][:2] == [("key1", "GET /v1/audit/events", "200"), ("key2", "DELETE /v1/accounts/{id}/holder", "204")]
    assert [e.id for e in audit.access_log(after_id=entries[0].id, key_id="key1")] == [entries[2].id]
    with pytest.raises(Exception, match="append-only"):
        raw.q("DELETE FROM keel_access_log")
    with pytest.raises(Exception, match="append-only"):
        raw.q("UPDATE keel_access_log SET outcome = '200'")


def test_vault_never_reseals_an_erased_id_and_describes_without_decrypting(ac: Container) -> None:
    import uuid

    from domain.errors import ExistsWithDifferentFields

    vault = ac.ledger.holder_vault
    subject = uuid.uuid4()
    sealed = vault.seal(subject, HOLDER)
    assert "Alice" not in str(sealed) and vault.reveal(sealed) == HOLDER
    assert vault.seal(subject, HOLDER)["key_id"] == sealed["key_id"]  # a retried open reuses the key
    assert vault.describe(sealed) == {"encrypted": True, "key_id": str(subject)}
    assert vault.erase(subject) and not vault.erase(subject)
    assert vault.reveal(sealed) == ERASED and vault.describe(sealed) == ERASED
    with pytest.raises(ExistsWithDifferentFields):
        vault.seal(subject, HOLDER)
