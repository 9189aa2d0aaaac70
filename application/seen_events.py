"""The fields of each ledger event that the read-model views read: one small decoded Struct per
event class (`SeenEvent`), the topic -> Struct table (`SEEN_EVENTS`) and their decoders.

Decoding straight into these small Structs (ids as strings, unknown fields skipped) is several
times faster than building the domain event objects, which is what makes a rebuild reach tens
of thousands of events per second. Tests check the views against a fold of the mapper's domain
events. `seen_decoders()` below runs the event classes' upcasts first, as the mapper does, so a
Struct here always describes the current version of its event (docs/events.md). No Struct here
decodes holder personal data (the `holder` of `Account.Opened` is skipped).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import msgspec
from eventsourcing.utils import get_topic, resolve_topic

from application.upcasting import class_version, upcast_state
from domain.account import Account
from domain.transfer import Transfer


class SeenEvent(msgspec.Struct, kw_only=True):
    originator_id: str = ""  # set from the stored event's column, not from its state
    timestamp: datetime


class AccountOpened(SeenEvent):
    tenant: str
    public_id: str
    currency: str
    kind: str
    overdraft_limit_minor: int


class AccountDebited(SeenEvent):
    amount_minor: int
    occurred_at: datetime | None = None  # event time, when the client gave one


class AccountCredited(SeenEvent):
    amount_minor: int
    occurred_at: datetime | None = None


class AccountDebitHeld(SeenEvent):
    amount_minor: int


class AccountCreditHeld(SeenEvent):
    amount_minor: int


class AccountDebitHoldSettled(SeenEvent):
    held_minor: int
    posted_minor: int


class AccountCreditHoldSettled(SeenEvent):
    held_minor: int
    posted_minor: int


class AccountFrozen(SeenEvent):
    pass


class AccountUnfrozen(SeenEvent):
    pass


class AccountClosed(SeenEvent):
    pass


class TransferInitiated(SeenEvent):
    tenant: str
    public_id: str
    kind: str
    debit_account_id: str  # storage keys
    credit_account_id: str
    debit_public_id: str  # the same accounts' public ids
    credit_public_id: str
    amount_minor: int
    currency: str
    reference: str | None
    pending: bool
    reverses_id: str | None
    reverses_public_id: str | None
    occurred_at: datetime | None = None  # event time, when the client gave one


class TransferHoldPosted(SeenEvent):
    amount_minor: int


class TransferHoldVoided(SeenEvent):
    pass


class TransferHoldExpired(SeenEvent):
    pass


class TransferReversed(SeenEvent):
    reversal_id: str
    reversal_public_id: str


# Stored event topic -> the Struct its state is decoded into. Other topics do not change a view.
SEEN_EVENTS: dict[str, type[SeenEvent]] = {
    get_topic(Account.Opened): AccountOpened,
    get_topic(Account.Debited): AccountDebited,
    get_topic(Account.Credited): AccountCredited,
    get_topic(Account.DebitHeld): AccountDebitHeld,
    get_topic(Account.CreditHeld): AccountCreditHeld,
    get_topic(Account.DebitHoldSettled): AccountDebitHoldSettled,
    get_topic(Account.CreditHoldSettled): AccountCreditHoldSettled,
    get_topic(Account.Frozen): AccountFrozen,
    get_topic(Account.Unfrozen): AccountUnfrozen,
    get_topic(Account.Closed): AccountClosed,
    get_topic(Transfer.Initiated): TransferInitiated,
    get_topic(Transfer.HoldPosted): TransferHoldPosted,
    get_topic(Transfer.HoldVoided): TransferHoldVoided,
    get_topic(Transfer.HoldExpired): TransferHoldExpired,
    get_topic(Transfer.Reversed): TransferReversed,
}


class SeenDecoder(Protocol):
    def decode(self, data: bytes) -> SeenEvent: ...


class _StoredVersion(msgspec.Struct):
    class_version: int = 1  # the version a stored state records (application/upcasting.py)


class _UpcastingDecoder:
    """Plaintext state of an evolved event class -> its Struct. A state of the current version is
    decoded typed, like a version-1 class's; an older one is decoded to a dict, upcast to the
    current version (application/upcasting.py, the mapper's function), then converted."""

    _version = msgspec.json.Decoder(_StoredVersion)
    _state = msgspec.json.Decoder(dict[str, Any])

    def __init__(self, event_class: type, struct: type[SeenEvent]) -> None:
        self.event_class = event_class
        self.current = class_version(event_class)
        self._typed = msgspec.json.Decoder(struct)
        self.struct = struct

    def decode(self, data: bytes) -> SeenEvent:
        if self._version.decode(data).class_version == self.current:
            return self._typed.decode(data)
        state = upcast_state(self.event_class, self._state.decode(data))
        return msgspec.convert(state, type=self.struct, strict=False)


def seen_decoder(event_class: type, struct: type[SeenEvent]) -> SeenDecoder:
    """Decodes the plaintext JSON state of a stored `event_class` event (decrypted and
    decompressed: `MsgspecMapper.open_state`) into `struct`. For a class still at version 1 this
    is msgspec's typed decoder straight from the bytes, the rebuild's fast path; for an evolved
    class a first pass reads the stored version, and only older states pay for a dict and upcasts."""
    if class_version(event_class) == 1:
        return msgspec.json.Decoder(struct)
    return _UpcastingDecoder(event_class, struct)


def seen_decoders() -> dict[str, SeenDecoder]:
    """Stored event topic -> the decoder of its state into its SeenEvent (SEEN_EVENTS' topics)."""
    return {topic: seen_decoder(resolve_topic(topic), struct) for topic, struct in SEEN_EVENTS.items()}
