"""Every `keel` failure is one or two lines naming the cause and the fix, with exit status 2 for
configuration and 1 for runtime, and no traceback unless asked for (issue #14). Each case runs
`keel` as a subprocess, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PG_DSN, TEST_HOLDER_KEK, require_postgres

COMMANDS = (["keys", "create", "--role", "admin"], ["audit", "verify"], ["worker", "expiry"])


def keel(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return subprocess.run([sys.executable, "-m", "keel.cli", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def assert_clear(done: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and 1 <= len(lines) <= 2, done.stderr
    assert lines[0].startswith("keel: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


def test_a_server_that_is_down_is_named_with_exit_1(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/x"  # port 1: nothing listens
    for command in COMMANDS:
        assert_clear(keel(*command, cwd=tmp_path, KEEL_DATABASE_URL=url), 1, "127.0.0.1:1", "connection refused")
    assert_clear(keel("serve", cwd=tmp_path, KEEL_DATABASE_URL=url, KEEL_HOLDER_KEK=TEST_HOLDER_KEK), 1, "refused")


@pytest.mark.postgres
def test_a_missing_database_and_an_unmigrated_schema_say_what_to_do(tmp_path: Path) -> None:
    require_postgres()
    missing = PG_DSN.rsplit("/", 1)[0] + f"/keel_no_such_db_{uuid.uuid4().hex[:6]}"
    for command in COMMANDS:
        assert_clear(keel(*command, cwd=tmp_path, KEEL_DATABASE_URL=missing), 2, "no database", "createdb")
    schema = f"keel_test_never_migrated_{uuid.uuid4().hex[:8]}"  # never created: nothing to drop
    env = {"KEEL_DATABASE_URL": PG_DSN, "KEEL_DATABASE_SCHEMA": schema, "KEEL_HOLDER_KEK": TEST_HOLDER_KEK}
    for command in [*COMMANDS, ["serve"]]:
        assert_clear(keel(*command, cwd=tmp_path, **env), 2, "run `keel migrate`")


def test_commands_never_make_a_store_where_none_is(tmp_path: Path) -> None:
    for command in COMMANDS:
        done = keel(*command, cwd=tmp_path)
        assert_clear(done, 2, str(tmp_path / "var" / "keel.db"), "--database-url")
    assert not (tmp_path / "var").exists()


def test_a_missing_directory_is_not_made_silently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/keel.db"
    assert_clear(keel("migrate", cwd=tmp_path, KEEL_DATABASE_URL=url), 2, "does not exist")
    assert not (tmp_path / "no").exists()


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    done = keel("audit", "verify", "--bundle", "nope.jsonl", "--public-key", "ab" * 32, cwd=tmp_path)
    assert_clear(done, 2, "nope.jsonl", "No such file")


def test_malformed_settings_name_the_variable(tmp_path: Path) -> None:
    assert_clear(keel("migrate", cwd=tmp_path, KEEL_DATABASE_URL="mysql://x"), 2, "KEEL_DATABASE_URL")
    assert_clear(keel("migrate", cwd=tmp_path, KEEL_PG_POOL_SIZE="many"), 2, "KEEL_PG_POOL_SIZE")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = keel("--debug", "audit", "verify", "--bundle", "nope.jsonl", "--public-key", "ab" * 32, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr
    done = keel("audit", "verify", "--bundle", "nope.jsonl", "--public-key", "ab" * 32, cwd=tmp_path, KEEL_DEBUG="1")
    assert "Traceback" in done.stderr


def _read_only(directory: Path) -> bool:
    """Makes `directory` read-only for this process: chmod for a normal user; a read-only bind
    mount for root (root ignores permission bits). False when neither is possible here."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return True
    done = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        return False
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", str(directory)], capture_output=True, check=False)
        return False
    return True


def _writable_again(directory: Path) -> None:
    if os.geteuid() != 0:
        directory.chmod(0o755)
    else:
        subprocess.run(["umount", str(directory)], capture_output=True, check=False)


def test_a_read_only_store_directory_is_one_line(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    if not _read_only(var):
        pytest.skip("cannot make a read-only directory here (root without mount)")
    try:
        assert_clear(keel("migrate", cwd=tmp_path), 2, str(var), "KEEL_DATABASE_URL")
        assert_clear(keel("serve", "--port", "0", cwd=tmp_path), 2, str(var))
    finally:
        _writable_again(var)


def test_bench_http_says_wrk_is_missing_before_any_work(tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bin"  # a PATH holding python but no wrk, whatever this machine has installed
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    assert shutil.which("wrk", path=str(bare)) is None
    done = keel("bench", "http", "--pg", "postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path, timeout=30, PATH=str(bare))
    assert_clear(done, 2, "wrk", "apt-get install wrk")


def test_simulate_without_a_target_says_which_flag_to_add(tmp_path: Path) -> None:
    assert_clear(keel("simulate", cwd=tmp_path), 2, "--out", "--ledger", "--api")
