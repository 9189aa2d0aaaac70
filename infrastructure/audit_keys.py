"""Key material kept outside the database: the Ed25519 checkpoint key, the data keys that
encrypt events at rest, and the key-encryption keys (KEKs) that wrap every per-holder key.

Where keys live (docs/security.md):
- checkpoint signing key: a PEM file, default ./var/audit-signing.key (mode 0600), named by
  KEEL_AUDIT_SIGNING_KEY_FILE, or the raw key as base64 in KEEL_AUDIT_SIGNING_KEY. The public
  half is published at GET /v1/audit/public-key and written next to the key as .pub.
- data keys (events at rest): KEEL_DATA_KEY ("id:b64,id:b64", newest first) and/or the file
  named by KEEL_DATA_KEY_FILE (one "id:b64" per line, newest first). Rotation prepends a key;
  old keys stay so old events stay readable; stored bytes are never rewritten. The embedded
  store makes `data-keys` beside its SQLite file on first start when neither is set.
- holder KEKs: KEEL_HOLDER_KEK and/or KEEL_HOLDER_KEK_FILE, same format (32-byte keys). The
  embedded store makes `holder-kek` beside its SQLite file; PostgreSQL must be given one.
Every key file is written 0600, complete or not at all (a new file is linked into place).
This module must never print or log a private key except where the operator asked for it.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
from datetime import datetime, timezone

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from application.chain import Checkpoint, checkpoint_message
from infrastructure.mapper import KeyRing
from infrastructure.settings import Settings, SettingsError

DEFAULT_SIGNING_KEY_FILE = "./var/audit-signing.key"
SIGNING_KEY_FILE_NAME = "audit-signing.key"  # beside the embedded store's SQLite file
DATA_KEYS_FILE_NAME = "data-keys"  # beside the embedded store's SQLite file
HOLDER_KEK_FILE_NAME = "holder-kek"
DATA_KEY_BYTES = 32
DATA_KEYS_MAX = 64  # a ring this long means rotation has gone wrong
HOLDER_KEK_BYTES = 32
HOLDER_KEKS_MAX = 32
KEY_FILE_MODE = 0o600
KEY_FILE_MAX_BYTES = 64 * 1024
KEY_ID_MAX_CHARS = 63


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
    if settings.audit_public_key_file:  # must exist if set (load_public_key raises otherwise)
        keys.append(load_public_key(settings.audit_public_key_file))
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
    default = default_signing_key_file(settings)  # the embedded store's, made by `keel keys audit-init`
    if default is not None and os.path.exists(default):
        return load_signer(msgspec.structs.replace(settings, audit_signing_key_file=default))
    return None


def default_signing_key_file(settings: Settings) -> str | None:
    """`<the embedded store's directory>/audit-signing.key`; None on PostgreSQL (configure it)."""
    db_file = None if settings.is_postgres else settings.sqlite_file
    return os.path.join(os.path.dirname(db_file), SIGNING_KEY_FILE_NAME) if db_file else None


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


# ---- key files ---------------------------------------------------------------------------------


def default_key_file(settings: Settings, name: str) -> str | None:
    """`name` in the directory of the embedded store's SQLite file, so that every process that
    opens the same store (serve, workers, `keel keys`, `keel migrate`) finds the same file
    whatever its working directory. None on PostgreSQL (or an in-memory SQLite)."""
    if settings.is_postgres or settings.sqlite_file is None:
        return None
    return os.path.join(os.path.dirname(settings.sqlite_file), name)


def read_key_file(path: str) -> list[str]:
    """The "id:base64" entries of a key file, newest first (blank lines and # comments skipped)."""
    with open(path, "rb") as f:
        data = f.read(KEY_FILE_MAX_BYTES + 1)
    if len(data) > KEY_FILE_MAX_BYTES:
        raise SettingsError(f"{path}: a key file over {KEY_FILE_MAX_BYTES} bytes")
    return [line.strip() for line in data.decode().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _fsync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, KEY_FILE_MODE)  # whatever the umask


def _scratch_name(path: str) -> str:
    return f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def create_key_file(path: str, entry: str) -> bool:
    """Creates `path` (0600) holding `entry` unless it exists. Atomic across processes: each
    writes a complete scratch file and links it into place; the first link wins and the others
    read the winner's key. True if this call created it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    scratch = _scratch_name(path)
    _write_private(scratch, entry + "\n")
    try:
        os.link(scratch, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(scratch)
    _fsync_directory(path)
    return True


def prepend_key_file(path: str, entry: str) -> None:
    """Puts `entry` first in the key file (created if missing), replacing the file atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    old = "".join(line + "\n" for line in read_key_file(path)) if os.path.exists(path) else ""
    scratch = _scratch_name(path)
    _write_private(scratch, entry + "\n" + old)
    os.replace(scratch, path)
    _fsync_directory(path)


def tighten_key_file(path: str) -> None:
    """A key file the store made for itself is 0600 (also one left looser by an older version)."""
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, KEY_FILE_MODE)


def _env_entries(spec: str | None) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def _new_entry(prefix: str, existing_ids: set[str], size: int) -> str:
    while True:
        key_id = prefix + secrets.token_hex(4)
        if key_id not in existing_ids:
            return f"{key_id}:{base64.b64encode(secrets.token_bytes(size)).decode()}"


# ---- data keys ---------------------------------------------------------------------------------


def data_key_file_of(settings: Settings) -> tuple[str | None, bool]:
    """The data key file of this deployment, and whether it is the embedded store's own default
    (`data-keys` beside the SQLite file; made on first start when no data key is configured)."""
    if settings.data_key_file:
        return settings.data_key_file, False
    return default_key_file(settings, DATA_KEYS_FILE_NAME), True


def data_key_spec(settings: Settings) -> str | None:
    """KEEL_DATA_KEY's keys, then the key file's, as one KeyRing spec (newest first).

    The embedded store encrypts by default: with no KEEL_DATA_KEY and no KEEL_DATA_KEY_FILE,
    its default file is made now if missing (and always read if present, so that setting
    KEEL_DATA_KEY later never hides the keys older events were written with). A configured
    KEEL_DATA_KEY_FILE that does not exist is an error, never a silent "no encryption"."""
    parts = _env_entries(settings.data_key)
    path, is_default = data_key_file_of(settings)
    if path is None:
        return ",".join(parts) or None
    if is_default:
        if not parts and not os.path.exists(path):
            create_key_file(path, new_data_key(set()))
        if not os.path.exists(path):
            return ",".join(parts) or None
        tighten_key_file(path)
    elif not os.path.exists(path):
        raise SettingsError(
            f"KEEL_DATA_KEY_FILE names {path}, which does not exist"
            f" (`keel keys rotate-data-key --file {path}` makes one)"
        )
    return ",".join(parts + read_key_file(path)) or None


def new_data_key(existing_ids: set[str]) -> str:
    return _new_entry("k", existing_ids, DATA_KEY_BYTES)


def rotate_data_key(settings: Settings) -> tuple[str, str]:
    """Adds a new newest data key. With a key file (KEEL_DATA_KEY_FILE, or the embedded store's
    own): prepends it there (atomic replace) and returns ("file", path). Otherwise returns
    ("env", the new KEEL_DATA_KEY value) for the operator."""
    path, is_default = data_key_file_of(settings)
    if path is not None and is_default and settings.data_key:
        path = None  # KEEL_DATA_KEY encrypts here: the new key must go first in it
    parts = _env_entries(settings.data_key)
    if path is not None and os.path.exists(path):
        parts += read_key_file(path)
    ids = set(KeyRing.parse(",".join(parts))._aead) if parts else set()  # noqa: SLF001 - key ids only
    if len(ids) >= DATA_KEYS_MAX:
        raise ValueError(f"refusing to hold more than {DATA_KEYS_MAX} data keys")
    entry = new_data_key(ids)
    if path is not None:
        prepend_key_file(path, entry)
        return "file", path
    return "env", ",".join([entry] + _env_entries(settings.data_key))


# ---- holder key-encryption keys (KEKs) --------------------------------------------------------


class UnknownHolderKek(RuntimeError):
    """A holder key is wrapped under a KEK this process does not have (misconfiguration, or the
    KEK was dropped while keys were still wrapped under it). Never mistaken for an erasure."""


def parse_key_entries(entries: list[str], what: str, size: int) -> list[tuple[str, bytes]]:
    keys: list[tuple[str, bytes]] = []
    for entry in entries:
        key_id, sep, b64 = entry.partition(":")
        plain_id = key_id.replace("-", "").replace("_", "")
        if not sep or not key_id or len(key_id) > KEY_ID_MAX_CHARS or not (plain_id.isascii() and plain_id.isalnum()):
            raise SettingsError(f"{what}: each key is id:base64 with a short id of letters, digits, - and _")
        try:
            key = base64.b64decode(b64, validate=True)
        except ValueError:
            raise SettingsError(f"{what}: key {key_id!r} is not valid base64") from None
        if len(key) != size:
            raise SettingsError(f"{what}: key {key_id!r} must be {size} bytes, not {len(key)}")
        if any(key_id == k for k, _ in keys):
            raise SettingsError(f"{what}: key id {key_id!r} appears twice")
        keys.append((key_id, key))
    return keys


def _wrap_context(subject: str, kek_id: str) -> bytes:
    # Binds a wrapped key to its row and its KEK: a wrapped key copied to another row, or
    # labelled with another KEK id, does not unwrap.
    return b"keel-holder-key/1\x00" + subject.encode() + b"\x00" + kek_id.encode()


class HolderKeks:
    """The holder KEKs, newest first: KEEL_HOLDER_KEK's, then the KEK file's. The newest wraps
    new holder keys (AES-256-GCM, 12-byte nonce first); any of them unwraps.

    A process re-reads the file when it changes, so a rotation by `keel keys rotate-holder-kek`
    needs no restart: new keys are wrapped under the new KEK at once, and keys another process
    re-wrapped unwrap here too.
    """

    def __init__(self, env_entries: list[str], path: str | None) -> None:
        self.env_entries = list(env_entries)
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._ring: tuple[str, dict[str, AESGCM]] = ("", {})
        self._load()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        stamp = self._file_stamp()
        entries = self.env_entries + (read_key_file(self.path) if self.path is not None and stamp is not None else [])
        keys = parse_key_entries(entries, "holder KEK (KEEL_HOLDER_KEK / KEEL_HOLDER_KEK_FILE)", HOLDER_KEK_BYTES)
        if not keys:
            raise SettingsError("no holder key-encryption key in KEEL_HOLDER_KEK / KEEL_HOLDER_KEK_FILE")
        if len(keys) > HOLDER_KEKS_MAX:
            raise SettingsError(f"refusing to hold more than {HOLDER_KEKS_MAX} holder KEKs")
        # One assignment: a reader on another thread sees the old ring or the new, never half.
        self._ring = (keys[0][0], {key_id: AESGCM(key) for key_id, key in keys})
        self._stamp = stamp

    def _refresh(self) -> None:
        # A file that vanished (being replaced by hand, say) keeps the keys already read.
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._load()

    @property
    def current_id(self) -> str:
        self._refresh()
        return self._ring[0]

    @property
    def ids(self) -> list[str]:
        self._refresh()
        return list(self._ring[1])

    def wrap(self, subject: str, key: bytes) -> tuple[str, bytes]:
        """(KEK id, nonce || AES-GCM(key)) under the newest KEK."""
        self._refresh()
        kek_id, aeads = self._ring
        nonce = os.urandom(12)
        return kek_id, nonce + aeads[kek_id].encrypt(nonce, key, _wrap_context(subject, kek_id))

    def unwrap(self, subject: str, kek_id: str, wrapped: bytes) -> bytes:
        aead = self._ring[1].get(kek_id)
        if aead is None:
            self._refresh()
            aead = self._ring[1].get(kek_id)
        if aead is None:
            raise UnknownHolderKek(
                f"the holder key of {subject} is wrapped under KEK {kek_id!r},"
                " which is in neither KEEL_HOLDER_KEK nor KEEL_HOLDER_KEK_FILE"
            )
        return aead.decrypt(wrapped[:12], wrapped[12:], _wrap_context(subject, kek_id))


NO_HOLDER_KEK = (
    "no holder key-encryption key: set KEEL_HOLDER_KEK or KEEL_HOLDER_KEK_FILE "
    "(kept outside the database; `keel keys holder-kek-init --out FILE` makes one)"
)


def holder_kek_file_of(settings: Settings) -> tuple[str | None, bool]:
    """The KEK file of this deployment, and whether it is the embedded store's own default."""
    if settings.holder_kek_file:
        return settings.holder_kek_file, False
    return default_key_file(settings, HOLDER_KEK_FILE_NAME), True


def load_holder_keks(settings: Settings) -> HolderKeks | None:
    """The holder KEKs, or None where none is configured (PostgreSQL: the KEK must come from
    outside; the vault then refuses to seal or reveal). The embedded store makes its own on
    first start, beside its SQLite file, when neither KEEL_HOLDER_KEK nor a file is set."""
    env = _env_entries(settings.holder_kek)
    path, is_default = holder_kek_file_of(settings)
    if path is not None and is_default:
        if not env and not os.path.exists(path):
            create_key_file(path, new_holder_kek(set()))
        if os.path.exists(path):
            tighten_key_file(path)
        else:
            path = None
    elif path is not None and not os.path.exists(path):
        raise SettingsError(
            f"KEEL_HOLDER_KEK_FILE names {path}, which does not exist"
            f" (`keel keys holder-kek-init --out {path}` makes one)"
        )
    if not env and path is None:
        return None
    return HolderKeks(env, path)


def require_holder_kek(settings: Settings) -> None:
    """For processes that serve holders (`keel serve`): refuse to start without a KEK."""
    if load_holder_keks(settings) is None:
        raise SettingsError(NO_HOLDER_KEK)


def new_holder_kek(existing_ids: set[str]) -> str:
    return _new_entry("h", existing_ids, HOLDER_KEK_BYTES)


def init_holder_kek_file(path: str) -> None:
    """A new KEK file with one key (0600); refuses to overwrite one."""
    if not create_key_file(path, new_holder_kek(set())):
        raise FileExistsError(f"{path} exists; refusing to overwrite a key-encryption key")


def rotate_holder_kek(settings: Settings, file: str | None = None) -> tuple[str, str, HolderKeks, HolderKeks | None]:
    """Adds a new newest KEK. Returns where it went, the ring that now wraps (new KEK first) and
    the ring before (to unwrap with): ("file", path, ...) after prepending it to the KEK file
    (`file`, KEEL_HOLDER_KEK_FILE or the embedded store's own), or ("env", the new
    KEEL_HOLDER_KEK value, ...) when the KEKs come from KEEL_HOLDER_KEK (its first key wraps new
    keys, so the new one must go first there)."""
    env = _env_entries(settings.holder_kek)
    if env and file:
        raise SettingsError(
            "KEEL_HOLDER_KEK is set, and its first key wraps new holder keys: rotate without --file and set the printed value"
        )
    before = load_holder_keks(settings)
    path = file or (before.path if before is not None else None)
    ids = set(before.ids) if before is not None else set()
    if len(ids) >= HOLDER_KEKS_MAX:
        raise SettingsError(f"refusing to hold more than {HOLDER_KEKS_MAX} holder KEKs; drop retired ones first")
    entry = new_holder_kek(ids)
    if env or path is None:
        value = ",".join([entry] + env)
        return "env", value, HolderKeks(_env_entries(value), before.path if before is not None else None), before
    prepend_key_file(path, entry)
    return "file", path, HolderKeks([], path), before
