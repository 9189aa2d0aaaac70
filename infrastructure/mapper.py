"""The stored event format: msgspec JSON of the event's attributes, optionally compressed and
encrypted, and how a stored state of an older event version becomes the current one.

Format (round-trip tested for every event type; states stored by earlier versions stay readable):
  plaintext = JSON object of the event's fields (UUIDs as strings, datetimes as RFC 3339), with
              "class_version": N when the event class is at version N > 1
  stored    = plaintext, compressed by the library's compressor when one is configured
              (COMPRESSOR_TOPIC), then encrypted when a key is configured:
                Keel's key ring (KEEL_DATA_KEY): b"K1" + key id (1 byte length + ascii)
                                                 + 12-byte nonce + AES-GCM ciphertext
                else the library's cipher (CIPHER_TOPIC, CIPHER_KEY), in its own format
Decoding undoes both (a plaintext always starts with "{", so an uncompressed state from before
compression was switched on still reads), runs the event class's upcasts
(application/upcasting.py) and converts with the class's own field types (msgspec.convert), so
UUIDs and aware datetimes come back as themselves. It never writes anything anywhere.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import os
import typing
from collections.abc import Callable
from typing import Any

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import get_topic, resolve_topic

from application.upcasting import CLASS_VERSION, class_version, upcast_state

_ENCRYPTED_MAGIC = b"K1"
_JSON_OBJECT = b"{"[0]  # first byte of every plaintext: msgspec encodes a dict without leading space


class KeyRing(Cipher):
    """Named AES keys; the first encrypts, every one decrypts (so rotation keeps old data readable).

    A library `Cipher` (encrypt/decrypt bytes); built from the keys, not from an environment, by
    the composition root, which hands it to the mapper as `mapper.keyring`.
    """

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        for key_id, key in keys:
            if not key_id.isascii() or not 0 < len(key_id) < 64 or len(key) not in (16, 24, 32):
                raise ValueError("key ids are short ascii names; keys are 16, 24 or 32 bytes")
        self.current_id, current = keys[0]
        self._aead = {key_id: AESGCM(key) for key_id, key in keys}
        self._current = self._aead[self.current_id]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """"id:base64key,id:base64key" (newest first) or a single base64 key (id "k0")."""
        keys = []
        for part in spec.split(","):
            part = part.strip()
            key_id, _, b64 = part.rpartition(":") if ":" in part else ("k0", "", part)
            keys.append((key_id, base64.b64decode(b64, validate=True)))
        return cls(keys)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        kid = self.current_id.encode()
        return _ENCRYPTED_MAGIC + bytes([len(kid)]) + kid + nonce + self._current.encrypt(nonce, plaintext, None)

    def decrypt(self, data: bytes) -> bytes:
        if not data.startswith(_ENCRYPTED_MAGIC):
            raise ValueError("not an encrypted record")
        n = data[2]
        kid = data[3 : 3 + n].decode()
        nonce = data[3 + n : 15 + n]
        try:
            aead = self._aead[kid]
        except KeyError:
            raise ValueError(f"unknown data key id {kid!r}") from None
        return aead.decrypt(nonce, data[15 + n :], None)


class _NoTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:  # pragma: no cover - the mapper never calls it
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:  # pragma: no cover
        raise NotImplementedError


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class MsgspecMapper(Mapper):
    """Maps domain events to stored events with msgspec; ~4x faster than the JSON transcoder.

    Honours what eventsourcing hands every Mapper: the compressor and the cipher it builds from
    the Application's env (COMPRESSOR_TOPIC; CIPHER_TOPIC and CIPHER_KEY), applied as the
    library does (compress, then encrypt; decrypt, then decompress), and `class_version`
    upcasting. Keel's key ring (KEEL_DATA_KEY: key ids, rotation) is a Cipher too, set by the
    composition root as `mapper.keyring`: when set it encrypts instead of the library's cipher.
    While both are configured each decrypts what it wrote, so moving from one to the other keeps
    the log readable. With none of them and no evolved event class, the only per-event work is
    msgspec's.
    """

    def __init__(self, transcoder: Transcoder | None = None, compressor: Compressor | None = None,
                 cipher: Cipher | None = None) -> None:  # fmt: skip
        self._keyring: KeyRing | None = None
        self._cipher = cipher
        self._compressor = compressor
        super().__init__(transcoder=transcoder or _NoTranscoder(), compressor=compressor, cipher=cipher)
        # Per class written: its topic and version; per topic read: its class, version, snapshot?
        self._written: dict[type, tuple[str, int]] = {}
        self._read: dict[str, tuple[Any, int, bool]] = {}
        self._configure()

    # Settable like the library Mapper's attributes; each change re-decides the per-event work.
    @property
    def keyring(self) -> KeyRing | None:
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: KeyRing | None) -> None:
        self._keyring = keyring
        self._configure()

    @property
    def cipher(self) -> Cipher | None:
        return self._cipher

    @cipher.setter
    def cipher(self, cipher: Cipher | None) -> None:
        self._cipher = cipher
        self._configure()

    @property
    def compressor(self) -> Compressor | None:
        return self._compressor

    @compressor.setter
    def compressor(self, compressor: Compressor | None) -> None:
        self._compressor = compressor
        self._configure()

    def _configure(self) -> None:
        """Decides once what each event pays: `_seal` (plaintext -> stored) and `_open` (stored ->
        plaintext) are None when states are plain JSON, else the least that does the job."""
        keyring, cipher, compressor = self._keyring, self._cipher, self._compressor
        self._encrypter: Cipher | None = keyring if keyring is not None else cipher
        self._seal: Callable[[bytes], bytes] | None
        self._open: Callable[[bytes], bytes] | None
        if self._encrypter is None and compressor is None:
            self._seal = self._open = None
        elif keyring is not None and cipher is None and compressor is None:  # the usual production setup
            self._seal, self._open = keyring.encrypt, self._open_keyring_only
        else:
            self._seal, self._open = self._compress_encrypt, self.open_state

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        cls = type(domain_event)
        written = self._written.get(cls)
        if written is None:
            written = self._written[cls] = (get_topic(cls), class_version(cls), _none_defaults(cls))
        topic, version, optional = written
        for name in optional:  # optional fields left at None are not stored (decoded as None)
            if state.get(name, False) is None:
                del state[name]
        if version != 1:
            state[CLASS_VERSION] = version
        data = _encoder.encode(state)
        seal = self._seal
        if seal is not None:
            data = seal(data)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=topic, state=data)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        topic = stored_event.topic
        read = self._read.get(topic)
        if read is None:
            cls = resolve_topic(topic)
            read = self._read[topic] = (cls, class_version(cls), issubclass(cls, Snapshot))
        cls, version, is_snapshot = read
        data = stored_event.state
        try:
            open_ = self._open
            if open_ is not None:
                data = open_(data)
            elif data.startswith(_ENCRYPTED_MAGIC):
                raise ValueError("stored event is encrypted but no KEEL_DATA_KEY is configured")
            state = _decoder.decode(data)
            state["originator_id"] = stored_event.originator_id
            state["originator_version"] = stored_event.originator_version
            if version != 1:
                upcast_state(cls, state)
            event = msgspec.convert(state, type=cls, strict=False)
            if is_snapshot:
                _type_snapshot_state(event)
            return event
        except Exception as e:
            raise MapperDeserialisationError(
                f"cannot decode stored event {stored_event.originator_id} v{stored_event.originator_version}"
            ) from e

    def _compress_encrypt(self, plaintext: bytes) -> bytes:
        data = plaintext
        if self._compressor is not None:
            data = self._compressor.compress(data)
        if self._encrypter is not None:
            data = self._encrypter.encrypt(data)
        return data

    def _open_keyring_only(self, data: bytes) -> bytes:
        assert self._keyring is not None
        return self._keyring.decrypt(data) if data.startswith(_ENCRYPTED_MAGIC) else data

    def open_state(self, data: bytes) -> bytes:
        """The plaintext JSON of a stored state (before upcasting): decrypted and decompressed as
        configured. For the readers that decode stored states into their own types."""
        data = self._decrypt(data if type(data) is bytes else bytes(data))
        if self._compressor is not None and data[0] != _JSON_OBJECT:
            data = self._compressor.decompress(data)
        return data

    def _decrypt(self, data: bytes) -> bytes:
        keyring, cipher = self._keyring, self._cipher
        if data[:2] == _ENCRYPTED_MAGIC:
            error: Exception = ValueError("stored event is encrypted but no KEEL_DATA_KEY is configured")
            if keyring is not None:
                try:
                    return keyring.decrypt(data)
                except Exception as e:
                    if cipher is None:
                        raise
                    error = e
            if cipher is None:
                raise error
            # The library cipher's output starts with a random nonce: 1 in 65,536 starts "K1".
            try:
                return cipher.decrypt(data)
            except Exception:
                raise error from None
        if cipher is None:
            return data
        try:
            return cipher.decrypt(data)
        except Exception:
            if data[0] == _JSON_OBJECT:  # stored in plain before the cipher was configured
                return data
            raise


def _none_defaults(cls: type) -> tuple[str, ...]:
    """The fields of an event class that default to None (optional facts such as `occurred_at`)."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if f.default is None)


def _type_snapshot_state(snapshot: Snapshot[Any]) -> None:
    """A snapshot's state is a plain JSON object: give the aggregate's attributes that are named
    like its creation event's fields (`public_id`, ...), and those the aggregate lists in
    `snapshot_types` (`opened_at`, ...), their type again (UUIDs and datetimes come back as
    themselves, not strings), so a restored aggregate equals the one its events build."""
    cls = resolve_topic(snapshot.topic)
    types = {**_created_field_types(cls), **getattr(cls, "snapshot_types", {})}
    state = snapshot.state
    for name, type_ in types.items():
        if name in state and state[name] is not None:
            state[name] = msgspec.convert(state[name], type=type_, strict=False)


@functools.cache
def _created_field_types(cls: type) -> dict[str, Any]:
    for value in vars(cls).values():
        if isinstance(value, type) and issubclass(value, Aggregate.Created) and value is not Aggregate.Created:
            hints = typing.get_type_hints(value)
            return {k: v for k, v in hints.items() if k not in ("originator_id", "originator_version", "timestamp", "originator_topic")}
    return {}

