"""Event evolution: the state of a stored event (or snapshot) written by an older version of its
class, brought to the shape of the current version. Pure: it never reads or writes a store.

The convention is eventsourcing's own: a class at version N > 1 says `class_version = N` and has
a static method `upcast_vK_vK+1(state)` for every K < N that rewrites a version-K state dict in
place into a version-K+1 one; a stored state records `"class_version": N` when N > 1. Every
decoder of stored events calls `upcast_state`: the mapper (infrastructure/mapper.py) and the read
model's direct decoders (application/seen_events.py), so they all see one shape of each event.
"""
from __future__ import annotations

from typing import Any

# Key of a stored state that records its class version (absent: version 1).
CLASS_VERSION = "class_version"


def class_version(cls: type) -> int:
    """The version of `cls` that this code writes (1 unless it says `class_version`)."""
    return int(getattr(cls, CLASS_VERSION, 1))


def upcast_state(cls: type, state: dict[str, Any]) -> dict[str, Any]:
    """Rewrites `state`, a decoded stored state of `cls`, in place from the version it records to
    the version of `cls` (removing the version key, as eventsourcing's Mapper does); returns it.

    Upcasts see the state as JSON decoded it (UUIDs and datetimes are still strings) and must
    leave JSON values in it. A state newer than the class is left as it is, like eventsourcing
    does: an old process reading a new event ignores the fields it does not know.
    """
    current = class_version(cls)
    version = state.pop(CLASS_VERSION, 1)
    while version < current:
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1
    return state
