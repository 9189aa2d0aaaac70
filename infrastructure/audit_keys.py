"""Key material for the audit trail: the Ed25519 checkpoint key and the data-key file.

Where keys live (documented in the README):
- checkpoint signing key: a PEM file, default ./var/audit-signing.key (mode 0600), named by
  KEEL_AUDIT_SIGNING_KEY_FILE, or the raw key as base64 in KEEL_AUDIT_SIGNING_KEY. The public
  half is published at GET /v1/audit/public-key and written next to the key as .pub.
- data keys (events at rest): KEEL_DATA_KEY ("id:b64,id:b64", newest first) and/or the file
  named by KEEL_DATA_KEY_FILE (one "id:b64" per line, newest first). Rotation prepends a key;
  old keys stay so old events stay readable; stored bytes are never rewritten.
This module must never print or log a private key except where the operator asked for it.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from application.chain import Checkpoint, checkpoint_message
from infrastructure.mapper import KeyRing
from infrastructure.settings import Settings

DEFAULT_SIGNING_KEY_FILE = "./var/audit-signing.key"
DEFAULT_DATA_KEY_FILE = "./var/data-keys"
DATA_KEY_BYTES = 32
DATA_KEYS_MAX = 64  # a ring this long means rotation has gone wrong


def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_raw(public)).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(spec: str) -> Ed25519PublicKey:
    """A public key from a PEM file, a file of 64 hex chars, or 64 hex chars given directly."""
    text = spec
    if os.path.exists(spec):
        with open(spec, "rb") as f:
            data = f.read()
        if b"BEGIN" in data:
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            return key
        text = data.decode().strip()
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError:
        raise ValueError("public key must be a PEM file or 64 hex characters") from None


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    def checkpoint(self, position: int, head_hash_hex: str) -> Checkpoint:
        signed_at = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
        signature = self._private.sign(checkpoint_message(position, head_hash_hex, signed_at))
        return Checkpoint(position, head_hash_hex, signed_at, self.key_id, signature.hex())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


class SignatureChecker:
    """Checks checkpoint signatures against known public keys (no private key needed)."""

    def __init__(self, *publics: Ed25519PublicKey) -> None:
        self._keys = {key_id_of(p): p for p in publics}

    def __call__(self, cp: Checkpoint, message: bytes) -> str | None:
        key = self._keys.get(cp.key_id)
        if key is None:
            return f"signed by unknown key {cp.key_id}"
        try:
            key.verify(bytes.fromhex(cp.signature), message)
        except (InvalidSignature, ValueError):
            return "signature is not valid"
        return None


PUBLIC_KEYS_MAX = 32


def trusted_public_keys(settings: Settings) -> list[Ed25519PublicKey]:
    """The signing key's public half (if configured) and every KEEL_AUDIT_PUBLIC_KEYS entry."""
    signer = load_signer(settings)
    keys = [signer.public] if signer is not None else []
    for part in (settings.audit_public_keys or "").split(","):
        if part.strip():
            keys.append(load_public_key(part.strip()))
    if len(keys) > PUBLIC_KEYS_MAX:
        raise ValueError(f"at most {PUBLIC_KEYS_MAX} audit public keys")
    return keys


def describe_public_key(public: Ed25519PublicKey) -> dict[str, str]:
    return {
        "algorithm": "Ed25519",
        "key_id": key_id_of(public),
        "public_key_hex": public_raw(public).hex(),
        "public_key_pem": public_pem(public),
    }


def load_signer(settings: Settings) -> Signer | None:
    if settings.audit_signing_key:
        raw = base64.b64decode(settings.audit_signing_key, validate=True)
        return Signer(Ed25519PrivateKey.from_private_bytes(raw))
    if settings.audit_signing_key_file:
        with open(settings.audit_signing_key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{settings.audit_signing_key_file} is not an Ed25519 private key")
        return Signer(key)
    return None


def generate_signing_key(path: str) -> tuple[str, str]:
    """Writes a new private key (0600, refuses to overwrite) and its public PEM; returns paths."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; refusing to overwrite a signing key")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path = path + ".pub"
    with open(pub_path, "w") as f:
        f.write(public_pem(key.public_key()))
    return path, pub_path


# ---- data keys ---------------------------------------------------------------------------------


def data_key_spec(settings: Settings) -> str | None:
    """KEEL_DATA_KEY's keys, then the key file's, as one KeyRing spec (newest first)."""
    parts = [p.strip() for p in (settings.data_key or "").split(",") if p.strip()]
    if settings.data_key_file and os.path.exists(settings.data_key_file):
        with open(settings.data_key_file) as f:
            parts += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return ",".join(parts) or None


def new_data_key(existing_ids: set[str]) -> str:
    while True:
        key_id = "k" + secrets.token_hex(4)
        if key_id not in existing_ids:
            return f"{key_id}:{base64.b64encode(secrets.token_bytes(DATA_KEY_BYTES)).decode()}"


def rotate_data_key(settings: Settings) -> tuple[str, str]:
    """Adds a new newest data key. With a key file: prepends it there (atomic replace) and returns
    ("file", path). Otherwise returns ("env", the new KEEL_DATA_KEY value) for the operator."""
    spec = data_key_spec(settings)
    ids = set(KeyRing.parse(spec)._aead) if spec else set()  # noqa: SLF001 - key ids only
    if len(ids) >= DATA_KEYS_MAX:
        raise ValueError(f"refusing to hold more than {DATA_KEYS_MAX} data keys")
    entry = new_data_key(ids)
    if settings.data_key_file:
        path = settings.data_key_file
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        old = open(path).read() if os.path.exists(path) else ""
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(entry + "\n" + old)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return "file", path
    return "env", ",".join([entry] + ([p.strip() for p in settings.data_key.split(",")] if settings.data_key else []))
