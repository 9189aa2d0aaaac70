"""Checkpoints: the periodic worker signs only when the head moved; an empty log verifies."""
from __future__ import annotations

from application.chain import GENESIS_HASH, Checkpoint, checkpoint_message
from infrastructure.audit_keys import SignatureChecker, load_signer
from keel.bootstrap import Container
from keel.workers import WORKERS
from tests.audit.conftest import make_history


def test_empty_log_verifies_and_can_be_checkpointed(ac: Container) -> None:
    audit = ac.audit
    cp = audit.checkpoint()
    assert (cp.position, cp.head_hash) == (0, GENESIS_HASH.hex())
    report = audit.verify()
    assert report.ok and report.events_checked == 0 and report.checkpoints_checked == 1


def test_worker_signs_only_when_the_head_moved(ac: Container) -> None:
    worker = WORKERS["checkpoints"](ac)
    audit = ac.audit
    worker._tick()  # noqa: SLF001 - one tick, without the timer
    worker._tick()  # noqa: SLF001
    assert len(audit.checkpoints()) == 1
    make_history(ac, transfers=1)
    worker._tick()  # noqa: SLF001
    cps = [cp for _, cp in audit.checkpoints()]
    assert len(cps) == 2 and cps[-1].position == ac.ledger.recorder.max_notification_id()
    assert audit.verify().checkpoints_checked == 2


def test_signature_covers_position_hash_and_time(ac: Container) -> None:
    signer = load_signer(ac.settings)
    check = SignatureChecker(signer.public)
    cp = signer.checkpoint(7, "ab" * 32)
    assert check(cp, checkpoint_message(cp.position, cp.head_hash, cp.signed_at)) is None
    for forged in (
        Checkpoint(8, cp.head_hash, cp.signed_at, cp.key_id, cp.signature),
        Checkpoint(7, "cd" * 32, cp.signed_at, cp.key_id, cp.signature),
        Checkpoint(7, cp.head_hash, "2020-01-01T00:00:00+00:00", cp.key_id, cp.signature),
    ):
        assert check(forged, checkpoint_message(forged.position, forged.head_hash, forged.signed_at)) is not None
    assert "unknown key" in check(Checkpoint(7, cp.head_hash, cp.signed_at, "nokey", cp.signature), b"")


def test_verifying_processes_need_only_public_keys_and_retired_keys_stay_trusted(ac: Container) -> None:
    import msgspec

    from infrastructure.audit_keys import public_raw
    from keel.bootstrap import build
    from tests.audit.conftest import signing_key_b64

    make_history(ac, transfers=1)
    ac.audit.checkpoint()
    old_public = public_raw(load_signer(ac.settings).public).hex()

    verifier = build(msgspec.structs.replace(ac.settings, audit_signing_key=None, audit_public_keys=old_public))
    try:
        assert verifier.audit.signer is None
        report = verifier.audit.verify()
        assert report.ok and report.checkpoints_checked == 1
        assert verifier.audit.public_key["public_key_hex"] == old_public
    finally:
        verifier.close()

    untrusting = build(msgspec.structs.replace(ac.settings, audit_signing_key=None))
    try:
        report = untrusting.audit.verify()
        assert not report.ok and "unknown key" in report.reason
    finally:
        untrusting.close()

    rotated = build(msgspec.structs.replace(ac.settings, audit_signing_key=signing_key_b64(), audit_public_keys=old_public))
    try:
        make_history(rotated, transfers=1)
        rotated.audit.checkpoint()
        report = rotated.audit.verify()
        assert report.ok and report.checkpoints_checked == 2
    finally:
        rotated.close()
