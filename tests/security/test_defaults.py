"""Secure defaults (issue #12): the embedded store keeps its files private, encrypts events at
rest with a key file every process of the store finds, and the API limits each key's rate."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.app import create_app
from application.commands import Deposit, OpenAccount
from infrastructure.audit_keys import DATA_KEYS_FILE_NAME, HOLDER_KEK_FILE_NAME, read_key_file
from infrastructure.settings import Settings, SettingsError, load_settings
from keel.bootstrap import build
from tests.audit.conftest import Raw
from tests.conftest import fresh_sqlite_settings

ROOT = Path(__file__).resolve().parents[2]
T = "tenant-d"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def keel(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A `keel` process with none of the developer's KEEL_* settings, only `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")} | env | {"KEEL_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "keel.cli", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def some_history(settings: Settings) -> None:
    c = build(settings)
    try:
        holder = {"name": "Dee Fault", "email": "dee@example.com"}
        a = c.writer.execute(OpenAccount(tenant=T, currency="EUR", holder=holder))
        c.writer.execute(Deposit(tenant=T, account_id=a.id, amount_minor=500, currency="EUR"))
    finally:
        c.close()


def stored_states(settings: Settings) -> list[bytes]:
    raw = Raw(settings)
    try:
        return [bytes(r[0]) for r in raw.q("SELECT state FROM ledger_events")]
    finally:
        raw.close()


def test_a_newcomers_store_is_private(tmp_path: Path) -> None:
    # The first steps in an empty directory, no settings at all: the store is made by `keel migrate`
    # (or `keel serve`); other commands never make one (issue #14).
    keel(tmp_path, "migrate")
    keel(tmp_path, "keys", "create", "--role", "admin")
    var = tmp_path / "var"
    assert mode(var) == 0o700
    for name in ("keel.db", DATA_KEYS_FILE_NAME, HOLDER_KEK_FILE_NAME):
        assert mode(var / name) == 0o600, name


def test_sqlite_side_files_are_private_and_loose_files_are_tightened(tmp_path: Path) -> None:
    settings = fresh_sqlite_settings(tmp_path / "store")
    db = Path(settings.sqlite_file)
    c = build(settings)
    try:
        c.writer.execute(OpenAccount(tenant=T, currency="EUR"))
        sides = [Path(str(db) + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in sides)  # while the store is open
        assert [mode(p) for p in [db, *sides]] == [0o600] * 3
    finally:
        c.close()
    # Files an older version (or a careless copy) left readable by others are tightened on start.
    loose = [db, db.parent / DATA_KEYS_FILE_NAME, db.parent / HOLDER_KEK_FILE_NAME]
    for p in loose:
        p.chmod(0o644)
    build(settings).close()
    assert [mode(p) for p in loose] == [0o600] * 3


def test_events_are_encrypted_at_rest_by_default_with_one_key_file_for_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir, other_dir = tmp_path / "app", tmp_path / "other"
    app_dir.mkdir()
    other_dir.mkdir()
    keel(app_dir, "migrate")  # where the operator stands: the default sqlite:///./var/keel.db
    key_file = app_dir / "var" / DATA_KEYS_FILE_NAME
    (entry,) = read_key_file(str(key_file))
    key_id = entry.split(":")[0]

    # This process, from another directory, opens the same store by its absolute path...
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{app_dir}/var/keel.db"
    settings = load_settings({}, database_url=url)
    some_history(settings)
    states = stored_states(settings)
    assert states and all(s.startswith(b"K1" + bytes([len(key_id)]) + key_id.encode()) for s in states)
    assert not any(b"EUR" in s or b"Dee" in s for s in states)

    # ...and so do `keel keys create` and a replay of every event (which must decrypt them all)
    # from a third directory: one key file, found beside the database by every process.
    keel(other_dir, "keys", "create", "--role", "auditor", KEEL_DATABASE_URL=url)
    keel(other_dir, "replay", "--rebuild", KEEL_DATABASE_URL=url)
    assert read_key_file(str(key_file)) == [entry]
    assert not (tmp_path / "var").exists() and not (other_dir / "var").exists()


def test_a_configured_data_key_is_used_instead_of_a_made_one(tmp_path: Path) -> None:
    key = "k9:" + base64.b64encode(os.urandom(32)).decode()
    settings = fresh_sqlite_settings(tmp_path, data_key=key)
    some_history(settings)
    assert not (tmp_path / DATA_KEYS_FILE_NAME).exists()
    assert all(s.startswith(b"K1\x02k9") for s in stored_states(settings))


def test_a_configured_key_file_that_is_missing_is_refused(tmp_path: Path) -> None:
    for field, var in (("data_key_file", "KEEL_DATA_KEY_FILE"), ("holder_kek_file", "KEEL_HOLDER_KEK_FILE")):
        with pytest.raises(SettingsError, match=var):
            fresh_sqlite_settings(tmp_path, **{field: str(tmp_path / "missing")})


def bucket_of(settings: Settings) -> tuple[float, float]:
    container = build(settings, start_writer=False)
    try:
        bucket = create_app(container).state["rate_limiter"]
        return bucket.rate_per_s, bucket.burst
    finally:
        container.close()


def test_the_default_rate_limit_is_100_per_s_with_bursts_of_200(tmp_path: Path) -> None:
    defaults = load_settings({})
    assert (defaults.rate_limit_per_s, defaults.effective_rate_limit_burst) == (100, 200)
    assert load_settings({"KEEL_RATE_LIMIT_PER_S": "50"}).effective_rate_limit_burst == 100  # 2 s worth
    with pytest.raises(SettingsError):
        load_settings({"KEEL_RATE_LIMIT_BURST": "0"})
    assert bucket_of(fresh_sqlite_settings(tmp_path)) == (100, 200)


def test_keel_rate_limit_burst_sizes_each_keys_bucket(tmp_path: Path) -> None:
    env = load_settings({"KEEL_RATE_LIMIT_PER_S": "50", "KEEL_RATE_LIMIT_BURST": "7"})
    settings = fresh_sqlite_settings(tmp_path, rate_limit_per_s=env.rate_limit_per_s, rate_limit_burst=env.rate_limit_burst)
    assert bucket_of(settings) == (50, 7)


def test_settings_never_show_a_key_or_password() -> None:
    shown = repr(load_settings({
        "KEEL_DATABASE_URL": "postgresql://keel:hunter2@db:5432/keel",
        "KEEL_DATA_KEY": "k1:" + base64.b64encode(b"d" * 32).decode(),
        "KEEL_HOLDER_KEK": "h1:" + base64.b64encode(b"h" * 32).decode(),
    }))  # fmt: skip
    assert "hunter2" not in shown and base64.b64encode(b"d" * 32).decode() not in shown
    assert base64.b64encode(b"h" * 32).decode() not in shown and "<redacted>" in shown


def test_the_database_password_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret-from-a-docker-secret\n")
    env = {"KEEL_DATABASE_URL": "postgresql://keel@postgres:5432/keel", "KEEL_DATABASE_PASSWORD_FILE": str(secret)}
    assert load_settings(env).postgres().password == "s3cret-from-a-docker-secret"
    with pytest.raises(SettingsError, match="KEEL_DATABASE_PASSWORD_FILE"):
        load_settings(env | {"KEEL_DATABASE_PASSWORD_FILE": str(tmp_path / "missing")})
