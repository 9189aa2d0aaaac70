"""The hash chain over the global event log, and its verification: pure functions, no I/O.

Every stored event gets `hash = SHA-256(prev_hash || canonical bytes)`, where the canonical bytes
cover exactly what is stored: position (notification id), originator id, version, topic and the
stored state bytes (encrypted, if a data key is configured). So a data-key rotation or a holder
erasure, which never rewrite stored bytes, never break the chain; any edit of a stored row does.
This module must never depend on a database or a key store: the offline bundle verifier uses it
with nothing but a file and a public key.
"""
from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

import msgspec

HASH_BYTES = 32
GENESIS_HASH = bytes(HASH_BYTES)  # prev_hash of the first event
# position, version, topic length, state length: fixed-width, so no two records share bytes.
_HEADER = struct.Struct(">QqII")
CHECKPOINT_PREFIX = b"keel-checkpoint/1\n"


def canonical_bytes(position: int, originator_id: bytes, version: int, topic: str, state: bytes) -> bytes:
    """The bytes the chain commits to for one stored event (originator_id: the 16 UUID bytes)."""
    t = topic.encode()
    return _HEADER.pack(position, version, len(t), len(state)) + originator_id + t + state


def chain_hash(prev: bytes, position: int, originator_id: bytes, version: int, topic: str, state: bytes) -> bytes:
    return hashlib.sha256(prev + canonical_bytes(position, originator_id, version, topic, state)).digest()


def id_bytes(originator_id: UUID | str) -> bytes:
    """UUID -> 16 bytes; SQLite stores ids as 32 hex characters."""
    if isinstance(originator_id, UUID):
        return originator_id.bytes
    s = originator_id.replace("-", "")
    return bytes.fromhex(s)


def link(prev: bytes, rows: Sequence[tuple[int, UUID | str, int, str, bytes]]) -> list[tuple[int, bytes]]:
    """Chains rows (already in position order) onto `prev`; returns (position, hash) pairs."""
    out: list[tuple[int, bytes]] = []
    sha = hashlib.sha256
    pack = _HEADER.pack
    last = -1
    for position, originator_id, version, topic, state in rows:
        assert position > last, "chain rows must be in strictly increasing position order"
        last = position
        t = topic.encode()
        prev = sha(prev + pack(position, version, len(t), len(state)) + id_bytes(originator_id) + t + state).digest()
        out.append((position, prev))
    return out


class Checkpoint(msgspec.Struct, frozen=True):
    """A signed statement: 'the chain had this head hash at this position at this time'."""

    position: int
    head_hash: str  # hex
    signed_at: str  # RFC 3339, UTC
    key_id: str
    signature: str  # hex, Ed25519 over checkpoint_message(...)


def checkpoint_message(position: int, head_hash_hex: str, signed_at: str) -> bytes:
    return CHECKPOINT_PREFIX + f"{position}\n{head_hash_hex}\n{signed_at}".encode()


class ChainRecord(msgspec.Struct, frozen=True, array_like=True):
    """One position of the log as stored: the event row (None fields if missing) and its hash."""

    position: int
    originator_id: bytes | None  # None: a chain entry exists but the event row is gone
    version: int | None
    topic: str | None
    state: bytes | None
    hash: bytes | None  # None: the event row has no chain entry


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    events_checked: int
    head_position: int
    head_hash: str
    first_bad_position: int | None
    reason: str | None
    checkpoints_checked: int
    elapsed_s: float
    events_per_s: float


# Verifies one checkpoint's signature: (checkpoint, message) -> None when valid, else the reason.
SignatureCheck = Callable[[Checkpoint, bytes], str | None]


def verify(
    records: Iterable[ChainRecord], checkpoints: Sequence[Checkpoint], check_signature: SignatureCheck
) -> VerifyReport:
    """Walks the chain in position order, then checks every checkpoint against it.

    Reports the first position that fails and why. A checkpoint that was validly signed but no
    longer matches the chain means history was rewritten (hashes recomputed) at or before it.
    """
    t0 = time.perf_counter()
    wanted = {cp.position for cp in checkpoints}
    seen_at: dict[int, bytes] = {0: GENESIS_HASH} if 0 in wanted else {}
    prev = GENESIS_HASH
    position = 0
    checked = 0
    bad: tuple[int, str] | None = None
    sha = hashlib.sha256
    pack = _HEADER.pack
    for r in records:
        if r.position <= position:
            bad = (r.position, f"position {r.position} is out of order (after {position})")
            break
        if r.originator_id is None or r.version is None or r.topic is None or r.state is None:
            bad = (r.position, "event row missing: the chain has an entry for a deleted event")
            break
        if r.hash is None:
            bad = (r.position, "event is not in the chain: no hash stored for this row (inserted outside the recorder?)")
            break
        t = r.topic.encode()
        expected = sha(prev + pack(r.position, r.version, len(t), len(r.state)) + r.originator_id + t + r.state).digest()
        if expected != r.hash:
            bad = (r.position, "hash mismatch: this row, or the row chained before it, was changed, removed or reordered")
            break
        prev = r.hash
        position = r.position
        checked += 1
        if position in wanted:
            seen_at[position] = prev
    checkpoints_checked = 0
    if bad is None:
        for cp in sorted(checkpoints, key=lambda c: c.position):
            reason = check_signature(cp, checkpoint_message(cp.position, cp.head_hash, cp.signed_at))
            if reason is not None:
                bad = (cp.position, f"checkpoint signed at {cp.signed_at}: {reason}")
                break
            if cp.position > position:
                bad = (position + 1, f"log truncated: checkpoint signed at {cp.signed_at} covers position {cp.position}, log ends at {position}")
                break
            h = seen_at.get(cp.position)
            if h is None:
                bad = (cp.position, f"checkpoint signed at {cp.signed_at} names position {cp.position}, which is not in the log")
                break
            if h.hex() != cp.head_hash:
                bad = (cp.position, f"chain differs from the head signed at {cp.signed_at}: history at or before this position was rewritten")
                break
            checkpoints_checked += 1
    elapsed = time.perf_counter() - t0
    return VerifyReport(
        ok=bad is None,
        events_checked=checked,
        head_position=position,
        head_hash=prev.hex(),
        first_bad_position=bad[0] if bad else None,
        reason=bad[1] if bad else None,
        checkpoints_checked=checkpoints_checked,
        elapsed_s=round(elapsed, 4),
        events_per_s=round(checked / elapsed, 1) if elapsed > 0 else 0.0,
    )
