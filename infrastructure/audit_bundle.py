"""The offline audit bundle: a self-contained proof an outsider checks with only the public key.

Format (JSON lines, UTF-8):
  line 1      header: {"format": "keel-audit-bundle/1", "created_at", "key_id", "public_key_hex",
                       "events": N, "checkpoints": [Checkpoint, ...]}
  next N      one event each: [position, originator_id (32 hex), version, topic, state (base64), hash (hex)]
  last line   {"sha256": hex of every byte before this line, "signature": Ed25519 over
               b"keel-bundle/1\\n" + that digest}
The events are the stored rows (state as stored, encrypted if it was), so the chain recomputes
exactly; the checkpoints tie the chain to signed heads; the trailer makes any edit of the file,
even one the chain would not see (a checkpoint, the header), fail. Verifying never needs the
database, a data key or a holder key.
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from application.audit import Audit
from application.chain import ChainRecord, Checkpoint, VerifyReport, verify
from infrastructure.audit_keys import Signer, SignatureChecker, key_id_of, public_raw

FORMAT = "keel-audit-bundle/1"
TRAILER_PREFIX = b"keel-bundle/1\n"
LINE_MAX_BYTES = 16 * 1024 * 1024  # one event line; larger means a corrupt or hostile file


class Header(msgspec.Struct, frozen=True):
    format: str
    created_at: str
    key_id: str
    public_key_hex: str
    events: int
    checkpoints: list[Checkpoint]


class Trailer(msgspec.Struct, frozen=True):
    sha256: str
    signature: str


_enc = msgspec.json.Encoder()


def export_bundle(audit: Audit, signer: Signer, path: str) -> tuple[int, Checkpoint]:
    """Signs the current head, then writes every event, every checkpoint and the public key."""
    cp = audit.checkpoint()
    assert cp is not None
    checkpoints = [c for _, c in audit.store.list_checkpoints()]
    # The count must be known for the header; a second pass is cheaper than holding the log.
    count = sum(1 for r in audit.store.records(stop=cp.position) if r.position <= cp.position)
    digest = hashlib.sha256()
    with open(path, "wb") as f:

        def put(line: bytes) -> None:
            digest.update(line)
            f.write(line)

        header = Header(FORMAT, datetime.now(tz=timezone.utc).isoformat(), signer.key_id,
                        public_raw(signer.public).hex(), count, checkpoints)  # fmt: skip
        put(_enc.encode(header) + b"\n")
        written = 0
        for r in audit.store.records(stop=cp.position):
            row = [
                r.position,
                r.originator_id.hex() if r.originator_id is not None else None,
                r.version,
                r.topic,
                base64.b64encode(r.state).decode() if r.state is not None else None,
                r.hash.hex() if r.hash is not None else None,
            ]
            put(_enc.encode(row) + b"\n")
            written += 1
        if written != count:
            raise RuntimeError("the log changed below a signed checkpoint while exporting")
        d = digest.digest()
        f.write(_enc.encode(Trailer(d.hex(), signer.sign(TRAILER_PREFIX + d).hex())) + b"\n")
    return count, cp


class BundleError(ValueError):
    pass


def _rows(lines: Iterator[bytes]) -> Iterator[ChainRecord]:
    dec = msgspec.json.Decoder(list[Any])
    for n, line in enumerate(lines, start=2):
        try:
            p, oid, v, topic, state, h = dec.decode(line)
            yield ChainRecord(
                int(p),
                bytes.fromhex(oid) if oid is not None else None,
                v,
                topic,
                base64.b64decode(state, validate=True) if state is not None else None,
                bytes.fromhex(h) if h is not None else None,
            )
        except (msgspec.DecodeError, ValueError, TypeError) as e:
            raise BundleError(f"line {n} is not a valid event record ({type(e).__name__})") from None


def verify_bundle(path: str, public: Ed25519PublicKey) -> VerifyReport:
    """Checks a bundle with nothing but the file and the expected public key."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        first = f.readline(LINE_MAX_BYTES)
        digest.update(first)
        try:
            header = msgspec.json.decode(first, type=Header)
        except msgspec.DecodeError as e:
            return _failed(f"bundle header is malformed: {e}")
        if header.format != FORMAT:
            return _failed(f"unknown bundle format {header.format!r}")
        if header.public_key_hex != public_raw(public).hex() or header.key_id != key_id_of(public):
            return _failed("the bundle names a different public key than the one given")
        trailer_line: list[bytes] = []
        counted = [0]

        def lines() -> Iterator[bytes]:
            prev = f.readline(LINE_MAX_BYTES)
            while prev:
                nxt = f.readline(LINE_MAX_BYTES)
                if not nxt:
                    trailer_line.append(prev)
                    return
                digest.update(prev)
                counted[0] += 1
                yield prev
                prev = nxt

        try:
            report = verify(_rows(lines()), header.checkpoints, SignatureChecker(public))
        except BundleError as e:
            return _failed(str(e))
        if not report.ok:
            return report
        for _ in lines():  # drain to the trailer if the chain stopped early (it never does when ok)
            pass
    if counted[0] != header.events:
        return _failed(f"bundle holds {counted[0]} events, its header says {header.events}", report)
    if not trailer_line:
        return _failed("bundle has no trailer", report)
    try:
        trailer = msgspec.json.decode(trailer_line[0], type=Trailer)
        d = digest.digest()
        if trailer.sha256 != d.hex():
            return _failed("bundle digest mismatch: the file was edited", report)
        public.verify(bytes.fromhex(trailer.signature), TRAILER_PREFIX + d)
    except (msgspec.DecodeError, ValueError, InvalidSignature):
        return _failed("bundle signature is not valid: the file was edited", report)
    if header.checkpoints and max(cp.position for cp in header.checkpoints) != report.head_position:
        return _failed("the bundle's last event is not its newest signed head", report)
    return report


def _failed(reason: str, base: VerifyReport | None = None) -> VerifyReport:
    return VerifyReport(
        ok=False,
        events_checked=base.events_checked if base else 0,
        head_position=base.head_position if base else 0,
        head_hash=base.head_hash if base else "",
        first_bad_position=None,
        reason=reason,
        checkpoints_checked=base.checkpoints_checked if base else 0,
        elapsed_s=base.elapsed_s if base else 0.0,
        events_per_s=base.events_per_s if base else 0.0,
    )
