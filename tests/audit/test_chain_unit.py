"""The chain algorithm alone (no I/O): any single change to any record is caught at its position."""
from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from application.chain import ChainRecord, link, verify

record = st.tuples(st.integers(1, 5), st.uuids(), st.integers(1, 10**6), st.sampled_from(["a:A.X", "a:A.Y"]), st.binary(max_size=64))


def chained(raw: list) -> list[ChainRecord]:
    rows, position = [], 0
    for gap, oid, version, topic, state in raw:
        position += gap  # positions may have gaps (rolled-back sequence values)
        rows.append((position, oid, version, topic, state))
    hashes = dict(link(bytes(32), rows))
    return [ChainRecord(p, o.bytes, v, t, s, hashes[p]) for p, o, v, t, s in rows]


def no_signatures(cp: object, message: bytes) -> None:
    return None


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(record, min_size=1, max_size=30), data=st.data())
def test_any_single_change_is_found_at_its_position(raw: list, data: st.DataObject) -> None:
    records = chained(raw)
    assert verify(records, [], no_signatures).ok
    i = data.draw(st.integers(0, len(records) - 1))
    r = records[i]
    field = data.draw(st.sampled_from(["originator_id", "version", "topic", "state", "hash", "delete"]))
    changed = list(records)
    if field == "delete":
        del changed[i]
        expected = records[i + 1].position if i + 1 < len(records) else None
    else:
        new = {
            "originator_id": uuid.uuid4().bytes,
            "version": r.version + 1,
            "topic": r.topic + "!",
            "state": r.state + b"\x00",
            "hash": bytes(32),
        }[field]
        changed[i] = ChainRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__}, field: new})
        expected = r.position
    report = verify(changed, [], no_signatures)
    if expected is None:
        assert report.ok  # dropping the newest record is only visible to a checkpoint
    else:
        assert not report.ok and report.first_bad_position == expected
