"""Holder keys at rest (SPEC §9 "erasure erases"): every per-holder key is stored wrapped by a
key-encryption key (KEK) that never lives in the database, so a copy of the database alone —
a backup, a stolen file — reveals no holder; erasure deletes the wrapped key; a KEK rotation
re-wraps every key without touching an event, after which the old KEK may be dropped.

Each test reads the store as an attacker would: the rows of `keel_holder_keys` and the events,
straight from the database."""
from __future__ import annotations

import base64
import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from application.commands import OpenAccount
from application.privacy import ERASED, erase_holder
from infrastructure.audit_keys import HOLDER_KEK_FILE_NAME, UnknownHolderKek, data_key_spec, read_key_file
from infrastructure.mapper import KeyRing
from infrastructure.settings import Settings, load_settings
from keel.bootstrap import Container, build, migrate
from keel.cli import main
from tests.audit.conftest import Raw
from tests.conftest import PG_DSN, fresh_pg_settings, fresh_sqlite_settings

T = "tenant-k"
HOLDERS = [{"name": f"Holder Number{i}", "email": f"holder{i}@example.com"} for i in range(3)]


def new_kek() -> str:
    return f"h{uuid.uuid4().hex[:8]}:" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path, pg_session_schemas: list[str]) -> Settings:
    """SQLite: the embedded default (its KEK file made beside the database). PostgreSQL: a KEK
    from KEEL_HOLDER_KEK, as an operator must configure it."""
    if request.param == "postgres":
        return fresh_pg_settings(pg_session_schemas, holder_kek=new_kek())
    return fresh_sqlite_settings(tmp_path / "store")


@pytest.fixture
def container(store: Settings) -> Iterator[Container]:
    c = build(store)
    yield c
    c.close()


def open_holders(c: Container) -> list[Any]:
    return [c.writer.execute(OpenAccount(tenant=T, currency="USD", holder=h)) for h in HOLDERS]


def erase(c: Container, key: uuid.UUID) -> Any:
    return erase_holder(c.ledger.holder_vault, c.ledger.account_by_key, c.writer.execute, key)


def key_row(raw: Raw, key: uuid.UUID) -> tuple[Any, Any]:
    return raw.q("SELECT wrapped_key, kek_id FROM keel_holder_keys WHERE key_id = ?", (str(key),))[0]


def sealed_holders(settings: Settings, raw: Raw) -> list[dict[str, Any]]:
    """The sealed holders of every Account.Opened event, read from the events table. The reader
    is even given the data key (events at rest): only the KEK stands between it and a holder."""
    spec = data_key_spec(settings)
    ring = KeyRing.parse(spec) if spec else None
    sealed = []
    for topic, state in raw.q("SELECT topic, state FROM ledger_events"):
        data = bytes(state)
        if data.startswith(b"K1"):
            assert ring is not None
            data = ring.decrypt(data)
        if topic.endswith("Account.Opened") and (holder := msgspec.json.decode(data).get("holder")):
            sealed.append(holder)
    return sealed


def candidate_keys(blob: bytes) -> Iterator[bytes]:
    """Every AES key a stored blob could hold: the blob itself, and every 16/24/32-byte window."""
    if len(blob) in (16, 24, 32):
        yield blob
    for size in (16, 24, 32):
        for start in range(len(blob) - size + 1):
            yield blob[start : start + size]


def opens(sealed: dict[str, Any], key: bytes) -> bool:
    raw = base64.b64decode(sealed["ciphertext"])
    try:
        AESGCM(key).decrypt(raw[:12], raw[12:], uuid.UUID(sealed["key_id"]).bytes)
    except InvalidTag:
        return False
    return True


def test_a_copy_of_the_database_without_the_kek_reveals_no_holder(store: Settings, tmp_path: Path) -> None:
    container = build(store)
    accounts = open_holders(container)
    assert [container.ledger.get_account(a.id, T).holder for a in accounts] == HOLDERS
    container.close()
    raw = Raw(store)
    try:
        rows = raw.q("SELECT key_id, wrapped_key, kek_id FROM keel_holder_keys")
        sealed = sealed_holders(store, raw)
        events = b"".join(bytes(r[0]) for r in raw.q("SELECT state FROM ledger_events"))
    finally:
        raw.close()
    assert len(rows) == len(HOLDERS) == len(sealed)
    for key_id, wrapped, kek_id in rows:
        # 12-byte nonce + 32-byte key + 16-byte tag, and the id of the KEK that wrapped it
        assert len(bytes(wrapped)) == 60 and kek_id
    # No plaintext anywhere, and no stored byte string is (or contains) a key that opens a holder.
    stored = events + b"".join(bytes(r[1]) for r in rows)
    assert not any(h["name"].encode() in stored or h["email"].encode() in stored for h in HOLDERS)
    for s, (_, wrapped, _) in itertools.product(sealed, rows):
        assert not any(opens(s, k) for k in candidate_keys(bytes(wrapped)))

    # The same database opened with another KEK (a thief's fresh install) cannot reveal either:
    # it is refused, never shown as erased and never as plaintext.
    if store.is_postgres:
        thief = msgspec.structs.replace(store, holder_kek=new_kek())
    else:
        copy = tmp_path / "stolen" / "keel.db"
        copy.parent.mkdir()
        shutil.copyfile(store.sqlite_file, copy)  # the database file alone (its KEK stays behind)
        thief = load_settings({}, database_url=f"sqlite:///{copy}", data_key=data_key_spec(store))
    other = build(thief)
    try:
        for a in accounts:
            with pytest.raises(UnknownHolderKek):
                other.ledger.get_account(a.id, T)
    finally:
        other.close()


def test_a_wrapped_key_opens_only_in_its_own_row(container: Container, store: Settings) -> None:
    a, b, _ = open_holders(container)
    raw = Raw(store)
    try:
        (wrapped_a,) = raw.q("SELECT wrapped_key FROM keel_holder_keys WHERE key_id = ?", (str(a.key),))[0]
        raw.q("UPDATE keel_holder_keys SET wrapped_key = ? WHERE key_id = ?", (bytes(wrapped_a), str(b.key)))
    finally:
        raw.close()
    assert container.ledger.get_account(a.id, T).holder == HOLDERS[0]
    with pytest.raises(InvalidTag):  # the wrapping binds each key to its row: tampering is loud
        container.ledger.get_account(b.id, T)


def test_erasure_deletes_the_wrapped_key_under_every_kek(container: Container, store: Settings) -> None:
    a, b, _ = open_holders(container)
    raw = Raw(store)
    try:
        (wrapped,) = raw.q("SELECT wrapped_key FROM keel_holder_keys WHERE key_id = ?", (str(a.key),))[0]
        assert erase(container, a.key).holder == ERASED
        assert key_row(raw, a.key) == (None, None)
    finally:
        raw.close()
    assert container.ledger.get_account(b.id, T).holder == HOLDERS[1]
    if not store.is_postgres:
        # Not even someone holding the KEK file finds the old wrapped key in the database's files
        # (secure_delete zeroes the freed row; the WAL is checkpointed and truncated), while the
        # service keeps running.
        files = [Path(store.sqlite_file + side) for side in ("", "-wal", "-shm")]
        assert not any(bytes(wrapped) in f.read_bytes() for f in files if f.exists())


def rotate(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    for var in ("KEEL_HOLDER_KEK", "KEEL_HOLDER_KEK_FILE", "KEEL_DATA_KEY", "KEEL_DATA_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KEEL_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KEEL_DATABASE_SCHEMA", settings.database_schema)
    if settings.holder_kek:
        monkeypatch.setenv("KEEL_HOLDER_KEK", settings.holder_kek)
    capsys.readouterr()
    assert main(["keys", "rotate-holder-kek", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_rotation_rewraps_every_key_then_the_old_kek_can_go(
    store: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build(store)
    a, b, _ = open_holders(c)
    erase(c, b.key)
    c.close()
    raw = Raw(store)
    try:
        events_before = raw.q(f"SELECT {raw.pos}, state FROM ledger_events ORDER BY {raw.pos}")
        (old_kek,) = {r[0] for r in raw.q("SELECT kek_id FROM keel_holder_keys WHERE kek_id IS NOT NULL")}

        out = rotate(store, monkeypatch, capsys)
        if store.is_postgres:  # KEKs from the environment: the new value is printed, new key first
            value = out.strip().removeprefix("KEEL_HOLDER_KEK=")
            assert value.endswith("," + store.holder_kek)
            new_kek_entry = value.split(",")[0]
            after = msgspec.structs.replace(store, holder_kek=new_kek_entry)  # the old KEK dropped
        else:  # the embedded store's KEK file: the new key prepended to it
            kek_file = Path(store.sqlite_file).parent / HOLDER_KEK_FILE_NAME
            entries = read_key_file(str(kek_file))
            assert len(entries) == 2 and entries[1].startswith(old_kek + ":")
            kek_file.write_text(entries[0] + "\n")  # the old KEK dropped
            new_kek_entry, after = entries[0], store
        new_kek_id = new_kek_entry.split(":")[0]

        assert raw.q("SELECT kek_id FROM keel_holder_keys WHERE wrapped_key IS NOT NULL") == [(new_kek_id,)] * 2
        events_after = raw.q(f"SELECT {raw.pos}, state FROM ledger_events ORDER BY {raw.pos}")
        assert events_after == events_before  # no event rewritten
        assert key_row(raw, b.key) == (None, None)
    finally:
        raw.close()
    c = build(after)
    try:
        assert c.ledger.get_account(a.id, T).holder == HOLDERS[0]
        assert c.ledger.get_account(b.id, T).holder == ERASED  # erased stays erased
        assert c.audit.verify().ok
    finally:
        c.close()


def test_a_running_process_follows_a_rotated_kek_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = fresh_sqlite_settings(tmp_path)
    running = build(store)
    try:
        a, _, _ = open_holders(running)
        rotate(store, monkeypatch, capsys)  # another process rotates while this one serves
        kek_file = Path(store.sqlite_file).parent / HOLDER_KEK_FILE_NAME
        newest = read_key_file(str(kek_file))[0].split(":")[0]
        assert running.ledger.get_account(a.id, T).holder == HOLDERS[0]  # re-wrapped key unwraps here
        later = running.writer.execute(OpenAccount(tenant=T, currency="USD", holder=HOLDERS[0]))
        assert running.ledger.holder_vault.keys_by_kek() == {newest: 4}  # new keys under the new KEK
        assert later.holder == HOLDERS[0]
    finally:
        running.close()


def test_a_backup_taken_before_an_erasure_is_unreadable_once_its_kek_is_rotated_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = fresh_sqlite_settings(tmp_path / "live")
    c = build(store)
    a, _, _ = open_holders(c)
    c.close()
    backup = tmp_path / "backup" / "keel.db"
    backup.parent.mkdir()
    shutil.copyfile(store.sqlite_file, backup)
    kek_file = Path(store.sqlite_file).parent / HOLDER_KEK_FILE_NAME
    c = build(store)
    erase(c, a.key)
    c.close()

    def backup_holder() -> Any:
        s = load_settings(
            {}, database_url=f"sqlite:///{backup}", data_key=data_key_spec(store), holder_kek_file=str(kek_file)
        )
        b = build(s)
        try:
            return b.ledger.get_account(a.id, T).holder
        finally:
            b.close()

    # What the KEK protects against is a backup *without* it; with it, the old backup still opens...
    assert backup_holder() == HOLDERS[0]
    rotate(store, monkeypatch, capsys)
    kek_file.write_text(read_key_file(str(kek_file))[0] + "\n")  # ...until its KEK is rotated away
    with pytest.raises(UnknownHolderKek):
        backup_holder()


def test_the_embedded_kek_lives_beside_the_database_not_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = load_settings({}, database_url=f"sqlite:///{tmp_path}/store/keel.db")
    migrate(settings)
    kek_file = tmp_path / "store" / HOLDER_KEK_FILE_NAME
    assert oct(kek_file.stat().st_mode & 0o777) == "0o600" and len(read_key_file(str(kek_file))) == 1
    assert not (cwd / "var").exists()
    # A second process opening the same store reads the same KEK, never makes another.
    before = kek_file.read_bytes()
    build(settings).close()
    assert kek_file.read_bytes() == before


@pytest.mark.postgres
def test_postgres_refuses_to_serve_without_a_kek(
    pg_session_schemas: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = fresh_pg_settings(pg_session_schemas)
    for var in ("KEEL_HOLDER_KEK", "KEEL_HOLDER_KEK_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KEEL_DATABASE_URL", PG_DSN)
    monkeypatch.setenv("KEEL_DATABASE_SCHEMA", settings.database_schema)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "KEEL_HOLDER_KEK" in err
    assert not list(tmp_path.iterdir())  # nothing made up in the (container's) filesystem
    monkeypatch.setenv("KEEL_HOLDER_KEK_FILE", str(tmp_path / "missing"))
    assert main(["serve", "--port", "1"]) == 2
    assert "KEEL_HOLDER_KEK_FILE" in capsys.readouterr().err
