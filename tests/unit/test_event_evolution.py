"""Events change shape: an event stored by version 1 of its class is read back by later versions
of the code, through the mapper and through the read model's direct decoder, upcast in order.

Each "version of the code" is the source of one module, executed under the same module name, so
the stored topics resolve to whichever version is deployed, as after a real upgrade. The classes
are local to this test; the real events are all version 1 and docs/events.md lists them (a test
below keeps that list and the classes in step: `python -m tests.unit.test_event_evolution`
prints the table for the docs).
"""
from __future__ import annotations

import dataclasses
import re
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.utils import _topic_cache, _type_cache  # the library's topic caches: see _forget_demo
from psycopg.conninfo import conninfo_to_dict

from application.seen_events import SEEN_EVENTS, SeenEvent, seen_decoder, seen_decoders
from application.upcasting import class_version
from domain.account import Account
from domain.transfer import Transfer
from fraud.app import Alert, Assessment
from infrastructure.mapper import MsgspecMapper

DEMO = "keel_evolution_demo"  # the module name every version of the demo code is deployed under

PARCEL_V1 = '''
from eventsourcing.domain import Aggregate

class Parcel(Aggregate):
    class Sent(Aggregate.Created):
        weight_g: int

        def apply(self, parcel):
            parcel.weight_g = self.weight_g

    class Weighed(Aggregate.Event):
        weight_g: int

        def apply(self, parcel):
            parcel.weight_g = self.weight_g
'''

# Version 2 adds `insured` to Sent (old parcels were not insured), and `unit` to the aggregate,
# for its snapshots (old parcels were weighed in grams).
PARCEL_V2 = '''
from eventsourcing.domain import Aggregate

class Parcel(Aggregate):
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state):
        state["unit"] = "g"

    class Sent(Aggregate.Created):
        class_version = 2
        weight_g: int
        insured: bool

        @staticmethod
        def upcast_v1_v2(state):
            state["insured"] = False

        def apply(self, parcel):
            parcel.weight_g = self.weight_g
            parcel.insured = self.insured
            parcel.unit = "g"

    class Weighed(Aggregate.Event):
        weight_g: int

        def apply(self, parcel):
            parcel.weight_g = self.weight_g
'''

# Version 3 adds the declared value, derived from `insured`: its upcast needs v1 -> v2 first.
PARCEL_V3 = PARCEL_V2.replace(
    '''        class_version = 2
        weight_g: int
        insured: bool
''',
    '''        class_version = 3
        weight_g: int
        insured: bool
        declared_minor: int

        @staticmethod
        def upcast_v2_v3(state):
            state["declared_minor"] = 10_000 if state["insured"] else 0
''',
)

# Version 2 as someone might get it wrong: the version bumped, the upcast forgotten.
PARCEL_V2_WITHOUT_UPCAST = PARCEL_V2.replace("def upcast_v1_v2(state):\n            state[\"insured\"]", "def other(state):\n            state[\"insured\"]")


class SentSeen(SeenEvent):
    """What a read model would decode of Sent version 2: the new field has no default."""

    weight_g: int
    insured: bool


def _forget_demo() -> None:
    """Forgets every version of the demo module, as a new process would (the library caches
    topic -> class for the life of the process and refuses to map a topic to a second class)."""
    for topic in [t for t in _topic_cache if t.split(":")[0] == DEMO]:
        del _topic_cache[topic]
    for cls in [c for c, t in _type_cache.items() if t.split(":")[0] == DEMO]:
        del _type_cache[cls]
    sys.modules.pop(DEMO, None)


@pytest.fixture
def deploy() -> Iterator[Any]:
    """deploy(source) -> the module: that version of the demo code is now the one topics find."""

    def _deploy(source: str) -> Any:
        _forget_demo()
        module = types.ModuleType(DEMO)
        sys.modules[DEMO] = module
        exec(compile(source, f"<{DEMO}>", "exec"), module.__dict__)  # noqa: S102 - the test's own source
        return module

    yield _deploy
    _forget_demo()


class Depot(Application[uuid.UUID]):
    name = "evolution_demo"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of an Application on a real, empty store, with Keel's mapper. The library's
    own recorders: the test is about the stored format, not Keel's tables."""
    env = {"MAPPER_TOPIC": "infrastructure.mapper:MsgspecMapper", "CREATE_TABLE": "y", "IS_SNAPSHOTTING_ENABLED": "y"}
    if request.param == "sqlite":
        return {**env, "PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "evolution.db")}
    from tests.conftest import PG_DSN, require_postgres

    require_postgres()
    schema = f"keel_test_{uuid.uuid4().hex[:12]}"
    request.getfixturevalue("pg_session_schemas").append(schema)  # dropped at the end of the session
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = conninfo_to_dict(PG_DSN)
    return {**env, "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": str(dsn.get("dbname", "")),
            "POSTGRES_HOST": str(dsn.get("host", "127.0.0.1")), "POSTGRES_PORT": str(dsn.get("port", 5432)),
            "POSTGRES_USER": str(dsn.get("user", "postgres")), "POSTGRES_PASSWORD": str(dsn.get("password", "")),
            "POSTGRES_SCHEMA": schema}  # fmt: skip


def test_a_version_1_event_reads_as_every_later_version(store: dict[str, str], deploy: Any) -> None:
    v1 = deploy(PARCEL_V1)
    depot = Depot(env=store)
    parcel = v1.Parcel._create(v1.Parcel.Sent, weight_g=700)
    depot.save(parcel)
    (stored_v1,) = depot.recorder.select_events(parcel.id)
    assert b"class_version" not in stored_v1.state  # version 1 stores no version
    depot.close()

    v2 = deploy(PARCEL_V2)
    depot = Depot(env=store)  # a new process: a new mapper
    assert isinstance(depot.mapper, MsgspecMapper)
    sent = depot.mapper.to_domain_event(stored_v1)
    assert type(sent) is v2.Parcel.Sent
    assert (sent.weight_g, sent.insured, sent.originator_id) == (700, False, parcel.id)
    assert depot.repository.get(parcel.id).insured is False  # the aggregate, from the upcast event

    insured = v2.Parcel._create(v2.Parcel.Sent, weight_g=90, insured=True)
    depot.save(insured)
    (stored_v2,) = depot.recorder.select_events(insured.id)
    assert msgspec.json.decode(stored_v2.state)["class_version"] == 2
    assert depot.mapper.to_domain_event(stored_v2).insured is True

    # The read model's decoder runs the same upcasts before its own Struct.
    decoder = seen_decoder(v2.Parcel.Sent, SentSeen)
    old = decoder.decode(depot.mapper.open_state(stored_v1.state))
    new = decoder.decode(depot.mapper.open_state(stored_v2.state))
    assert (old.weight_g, old.insured, new.weight_g, new.insured) == (700, False, 90, True)
    assert old.timestamp == sent.timestamp
    depot.close()

    deploy(PARCEL_V3)
    depot = Depot(env=store)
    first, second = (depot.mapper.to_domain_event(s) for s in (stored_v1, stored_v2))
    assert (first.insured, first.declared_minor) == (False, 0)  # v1 -> v2 -> v3, in that order
    assert (second.insured, second.declared_minor) == (True, 10_000)  # v2 -> v3
    depot.close()


def test_a_version_1_snapshot_restores_as_the_new_aggregate_version(store: dict[str, str], deploy: Any) -> None:
    v1 = deploy(PARCEL_V1)
    depot = Depot(env=store)
    parcel = v1.Parcel._create(v1.Parcel.Sent, weight_g=700)
    parcel.trigger_event(v1.Parcel.Weighed, weight_g=650)
    depot.save(parcel)
    depot.take_snapshot(parcel.id)
    depot.close()

    deploy(PARCEL_V2)
    depot = Depot(env=store)
    assert depot.snapshots is not None
    (snapshot,) = depot.snapshots.get(parcel.id)
    restored = depot.repository.get(parcel.id)  # from the snapshot: no event after it
    assert (restored.version, restored.weight_g, restored.unit) == (snapshot.originator_version, 650, "g")
    depot.close()


def test_an_event_class_evolved_without_its_upcast_fails_loudly(deploy: Any) -> None:
    assert PARCEL_V3 != PARCEL_V2 != PARCEL_V2_WITHOUT_UPCAST
    v1 = deploy(PARCEL_V1)
    stored = MsgspecMapper().to_stored_event(v1.Parcel._create(v1.Parcel.Sent, weight_g=1).collect_events()[0])
    deploy(PARCEL_V2_WITHOUT_UPCAST)
    with pytest.raises(MapperDeserialisationError):
        MsgspecMapper().to_domain_event(stored)


def test_the_read_models_decoders_keep_their_fast_path_for_version_1_events() -> None:
    decoders = seen_decoders()
    assert set(decoders) == set(SEEN_EVENTS)
    for topic, decoder in decoders.items():
        assert isinstance(decoder, msgspec.json.Decoder), topic  # no dict, no upcast: still version 1
    opened = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant="t", currency="USD")
    stored = MsgspecMapper().to_stored_event(opened.collect_events()[0])
    seen = decoders[stored.topic].decode(stored.state)
    assert (seen.currency, seen.public_id) == ("USD", str(opened.public_id))


# ---- docs/events.md lists every event type as it is -------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
AGGREGATES = (Account, Transfer, Assessment, Alert)
ENVELOPE = ("originator_id", "originator_version", "timestamp", "originator_topic")
_ROW = re.compile(r"^\|\s*`(?P<event>[\w.]+)`\s*\|\s*(?P<version>\d+)\s*\|(?P<fields>.*)\|\s*$")


def event_classes() -> list[type]:
    """Every event class of the ledger's and the fraud application's aggregates."""
    found = []
    for aggregate in AGGREGATES:
        for name, value in vars(aggregate).items():
            if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in ("Event", "Created"):
                found.append(value)
    return found


def documented_shape(cls: type) -> tuple[str, int, tuple[str, ...]]:
    """(Aggregate.Event, version, ("name: type", ...)): the fields as annotated, envelope aside."""
    fields = tuple(f"{f.name}: {f.type}" for f in dataclasses.fields(cls) if f.name not in ENVELOPE)  # type: ignore[arg-type]
    return cls.__qualname__, class_version(cls), fields


def render_table() -> str:
    """The table of docs/events.md (a `|` in a type is written `\\|`, as a Markdown table needs)."""
    rows = ["| Event | Version | Fields (name: type) |", "|---|---|---|"]
    for cls in event_classes():
        name, version, fields = documented_shape(cls)
        cell = ", ".join(f"`{f}`".replace("|", "\\|") for f in fields) or "—"
        rows.append(f"| `{name}` | {version} | {cell} |")
    return "\n".join(rows)


def documented_events(text: str) -> dict[str, tuple[str, int, tuple[str, ...]]]:
    found = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            assert m["event"] not in found, f"docs/events.md lists {m['event']} twice"
            fields = tuple(re.findall(r"`([^`]+)`", m["fields"].replace("\\|", "|")))
            found[m["event"]] = (m["event"], int(m["version"]), fields)
    return found


def documented_ids(text: str, label: str) -> set[str]:
    """The field names in the docs' bullet that starts `- **{label}**` (with its indented lines)."""
    m = re.search(rf"^- \*\*{label}\*\*.*(?:\n  .*)*", text, re.MULTILINE)
    assert m, f"docs/events.md has no '- **{label}**' line"
    return set(re.findall(r"`(\w+)`", m[0]))


def test_docs_list_every_event_with_its_fields_and_version() -> None:
    documented = documented_events(DOCS.read_text(encoding="utf-8"))
    actual = {documented_shape(cls)[0]: documented_shape(cls) for cls in event_classes()}
    assert documented == actual, (
        "docs/events.md is out of step with the event classes: an event's shape changed (bump its "
        "class_version and add an upcast, docs/events.md 'How to evolve an event'), then update the "
        "table from `python -m tests.unit.test_event_evolution`:\n" + render_table()
    )


def test_docs_say_which_ids_are_storage_keys_and_which_are_public() -> None:
    text = DOCS.read_text(encoding="utf-8")
    keys, public = documented_ids(text, "Storage keys"), documented_ids(text, "Public ids")
    uuid_fields = {f.name for cls in event_classes() for f in dataclasses.fields(cls)
                   if "UUID" in str(f.type) and f.name not in ENVELOPE}  # fmt: skip
    assert {f for f in uuid_fields if f.endswith("public_id")} == public
    assert {f for f in uuid_fields if not f.endswith("public_id")} | {"originator_id"} == keys


def test_every_evolved_event_class_has_all_its_upcasts() -> None:
    for cls in [*event_classes(), *AGGREGATES]:
        for version in range(1, class_version(cls)):
            assert callable(getattr(cls, f"upcast_v{version}_v{version + 1}", None)), (cls, version)


def test_the_table_parser_reads_what_render_table_writes() -> None:
    assert documented_events(render_table()) == {documented_shape(c)[0]: documented_shape(c) for c in event_classes()}


if __name__ == "__main__":
    print(render_table())
