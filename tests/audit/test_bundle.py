"""The offline bundle: verifies with only the public key; any one-byte edit fails."""
from __future__ import annotations

import os
import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infrastructure.audit_bundle import export_bundle, verify_bundle
from infrastructure.audit_keys import load_signer, public_pem, public_raw
from keel.bootstrap import Container
from keel.cli import main
from tests.audit.conftest import make_history


def exported(ac: Container, tmp_path: Path) -> tuple[Path, object]:
    make_history(ac, transfers=12)
    signer = load_signer(ac.settings)
    assert signer is not None
    ac.audit.checkpoint()
    path = tmp_path / "bundle.jsonl"
    count, cp = export_bundle(ac.audit, signer, str(path))
    assert count == cp.position == ac.ledger.recorder.max_notification_id()
    return path, signer.public


def test_bundle_verifies_offline_with_only_the_public_key(ac: Container, tmp_path: Path) -> None:
    path, public = exported(ac, tmp_path)
    ac.close()  # nothing below can reach the database
    report = verify_bundle(str(path), public)
    assert report.ok, report
    assert report.checkpoints_checked == 2
    pem = tmp_path / "pub.pem"
    pem.write_text(public_pem(public))
    assert main(["audit", "verify", "--bundle", str(path), "--public-key", str(pem)]) == 0
    assert main(["audit", "verify", "--bundle", str(path), "--public-key", public_raw(public).hex()]) == 0


def test_any_one_byte_edit_fails(ac: Container, tmp_path: Path) -> None:
    path, public = exported(ac, tmp_path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    rng = random.Random(5)
    # The header, an event line's state, a hash, and the trailer, plus random offsets.
    offsets = [10, len(lines[0]) + 1 + len(lines[1]) // 2, len(data) - 20]
    offsets += [rng.randrange(len(data) - 1) for _ in range(12)]
    for offset in offsets:
        edited = bytearray(data)
        edited[offset] = (edited[offset] + 1) % 256 if edited[offset] != ord("\n") else ord(" ")
        bad = tmp_path / f"bad-{offset}.jsonl"
        bad.write_bytes(bytes(edited))
        report = verify_bundle(str(bad), public)
        assert not report.ok, f"edit at byte {offset} went unnoticed"
    assert main(["audit", "verify", "--bundle", str(bad), "--public-key", public_raw(public).hex()]) == 1


def test_bundle_fails_with_another_public_key(ac: Container, tmp_path: Path) -> None:
    path, _ = exported(ac, tmp_path)
    report = verify_bundle(str(path), Ed25519PrivateKey.generate().public_key())
    assert not report.ok and "public key" in report.reason


def test_cli_verify_and_audit_init(ac: Container, tmp_path: Path, monkeypatch: object) -> None:
    make_history(ac, transfers=2)
    env = {"KEEL_DATABASE_URL": ac.settings.database_url, "KEEL_DATABASE_SCHEMA": ac.settings.database_schema}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # type: ignore[attr-defined]
    assert main(["audit", "verify"]) == 0
    key = tmp_path / "k" / "audit.key"
    assert main(["keys", "audit-init", "--out", str(key)]) == 0
    assert oct(os.stat(key).st_mode & 0o777) == "0o600" and (tmp_path / "k" / "audit.key.pub").exists()
    assert main(["keys", "audit-init", "--out", str(key)]) == 2  # never overwrites a key
    monkeypatch.setenv("KEEL_AUDIT_SIGNING_KEY_FILE", str(key))  # type: ignore[attr-defined]
    assert main(["audit", "checkpoint"]) == 0
    out = tmp_path / "b.jsonl"
    assert main(["audit", "export", "--to", str(out)]) == 0
    assert main(["audit", "verify", "--bundle", str(out), "--public-key", str(key) + ".pub"]) == 0
