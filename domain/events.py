"""Events built for the hot path (issue #16) exactly as their classes build them, for less.

A domain event is a frozen dataclass: its generated `__init__` sets each field with
`object.__setattr__`, and the library's `trigger_event` / `_create` copy and inspect keyword
arguments on top. The writer builds three events per transfer, and that machinery was 17 % of its
time. `new_event` fills the instance's `__dict__` with the class's defaults and the given fields in
one step: the same object `cls(...)` would make (tests/unit/test_fast_events.py compares them),
for the event classes on the write path — plain fields, no `default_factory`, nothing converted
or checked in `__post_init__` beyond the originator id being a UUID (checked here too).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

E = TypeVar("E")

# Per event class: its fields in declaration order, each with its default (or _NONE).
_NONE = object()
_SHAPES: dict[type, tuple[tuple[str, Any], ...]] = {}


def _shape(cls: type) -> tuple[tuple[str, Any], ...]:
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = dataclasses.fields(cls)
        if any(f.default_factory is not dataclasses.MISSING for f in fields):
            raise TypeError(f"{cls.__qualname__} has a default_factory: build it with its constructor")
        shape = _SHAPES[cls] = tuple((f.name, _NONE if f.default is dataclasses.MISSING else f.default) for f in fields)
    return shape


def new_event(cls: type[E], originator_id: UUID, originator_version: int, timestamp: datetime, **fields: Any) -> E:
    """`cls(originator_id=…, originator_version=…, timestamp=…, **fields)`, built directly: the
    same fields in the same order (so the same stored bytes)."""
    if not isinstance(originator_id, UUID):
        raise TypeError(f"{cls.__qualname__} was given a non-UUID originator_id: {originator_id!r}")
    fields["originator_id"] = originator_id
    fields["originator_version"] = originator_version
    fields["timestamp"] = timestamp
    event = object.__new__(cls)
    state = event.__dict__
    used = 0
    for name, default in _shape(cls):
        value = fields.get(name, _NONE)
        if value is _NONE:
            if default is _NONE:
                raise TypeError(f"{cls.__qualname__}: missing field {name!r}")
            value = default
        else:
            used += 1
        state[name] = value
    if used != len(fields):
        raise TypeError(f"{cls.__qualname__}: unknown fields {sorted(fields.keys() - state.keys())}")
    return event
