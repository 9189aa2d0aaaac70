"""`keel import` (issue #15): history in the generic shape goes through the ledger's write path
with its event times, idempotently (a second run writes nothing), and a bad file writes nothing."""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from application.importing import ImportError_, imported_id, transfer_public_id
from domain.account import Account
from domain.errors import DomainError
from domain.identity import account_key
from infrastructure.settings import Settings
from keel.bootstrap import Container, build, migrate
from keel.cli import main
from keel.import_cli import import_file, read_rows

T = "hist"
START = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)

CSV = """id,occurred_at,type,from,to,amount,currency,label
o1,2026-03-01T08:00:00Z,open,,alice,10000,EUR,
t1,2026-03-02T09:00:00Z,transfer,alice,bob,2500,EUR,0
t2,2026-03-02T10:00:00+01:00,transfer,alice,mallory,7500,EUR,1
t3,2026-03-02T10:05:00Z,transfer,alice,mallory,100,EUR,fraud
w1,2026-03-02T11:00:00Z,withdrawal,mallory,,7000,EUR,1
d1,2026-03-01T09:00:00Z,deposit,,bob,300,EUR,
"""


@pytest.fixture
def c(settings: Settings) -> Iterator[Container]:
    migrate(settings)
    container = build(settings)
    yield container
    container.close()


def _events(c: Container) -> int:
    return len(c.ledger.recorder.select_notifications(start=0, limit=100_000, inclusive_of_start=False))


def test_a_csv_file_is_imported_with_its_event_times_and_a_second_run_writes_nothing(c: Container, tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(CSV)
    first = import_file(c, str(path), T)
    # 6 rows: o1 opens alice and deposits; t1 opens bob (first seen: d1 is earlier in time, so d1 opens it);
    # t2 opens mallory; t3 is refused (alice has 10000 - 2500 - 7500 = 0).
    assert first.rows == 6 and first.refused == {"insufficient_funds": 1}
    assert first.first_refusals[0]["id"] == "t3" and first.first_refusals[0]["line"] == 5
    assert first.created == first.commands - 1
    ledger = c.ledger
    alice, bob, mallory = (imported_id("account", n) for n in ("alice", "bob", "mallory"))
    assert ledger.get_account(alice, T).posted_minor == 0
    assert ledger.get_account(bob, T).posted_minor == 2_800
    assert ledger.get_account(mallory, T).posted_minor == 500
    t2 = ledger.get_transfer(imported_id("transfer", "t2"), T)
    assert t2.occurred_at == datetime(2026, 3, 2, 9, tzinfo=timezone.utc).isoformat() and t2.created_at > t2.occurred_at
    # The refused attempt is a fact on alice's account, for the fraud module.
    refused = [e for e in ledger.events.get(account_key(T, alice)) if isinstance(e, Account.DebitRefused)]
    assert [(e.amount_minor, e.reason) for e in refused] == [(100, "insufficient_funds")]

    # The views show both times, and analysts can bound either (docs/read-models.md).
    from application.projections import to_us
    from application.view_follower import ViewFollower
    from infrastructure.readmodels import LogReader, SqlViewStore

    db = c.read_side.db
    ViewFollower(LogReader(db, ledger.recorder, ledger.mapper), SqlViewStore(db)).catch_up()
    march = dict(from_us=to_us(START), to_us_=to_us(START + timedelta(days=30)))
    by_event = c.read_side.transactions(account=None, tenant=T, min_amount=None, max_amount=None, cursor=None,
                                        limit=50, time="occurred", **march)  # fmt: skip
    assert {r["reference"] for r in by_event.items} == {"o1", "d1", "t1", "t2", "w1"}
    assert {r["occurred_at"] for r in by_event.items if r["reference"] == "t2"} == {"2026-03-02T09:00:00Z"}
    by_recording = c.read_side.transactions(account=None, tenant=T, min_amount=None, max_amount=None, cursor=None,
                                            limit=50, **march)  # fmt: skip
    assert by_recording.items == []  # recorded today, not in March

    before = _events(c)
    again = import_file(c, str(path), T)
    assert again.skipped == again.rows == 6 and again.commands == again.created == 0 and not again.refused
    assert _events(c) == before  # nothing written twice, not even the refusal


def test_an_interrupted_import_resumes_after_the_rows_that_settled(c: Container, tmp_path: Path) -> None:
    """Five of six rows settled (as if the process died there): the next run submits only the
    rest, and the refused row (t3, among the five) is not re-tried against a later balance."""
    from application.importing import run_import
    from infrastructure.imports import SqlImportProgress
    from keel.import_cli import file_digest

    path = _write(tmp_path / "h.csv", CSV)
    rows = read_rows(str(path))
    done = SqlImportProgress(c.store.sql)
    partial = run_import(c.writer, rows[:5], T, digest=file_digest(str(path)), done=done)
    assert partial.refused == {"insufficient_funds": 1}
    rest = import_file(c, str(path), T)
    assert rest.skipped == 5 and not rest.refused and rest.created == 1  # w1, the last row in time
    assert c.ledger.get_account(imported_id("account", "mallory"), T).posted_minor == 500


def test_json_lines_and_the_csv_give_the_same_ledger(settings: Settings, tmp_path: Path) -> None:
    lines = tmp_path / "h.jsonl"
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(CSV)))
    lines.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v}) for r in rows) + "\n")
    assert [(r.id, r.occurred_at, r.amount, r.label) for r in read_rows(str(lines))] == [
        (r.id, r.occurred_at, r.amount, r.label) for r in read_rows(str(_write(tmp_path / "h.csv", CSV)))
    ]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("t9,2026-03-02T09:00:00Z,transfer,alice,bob,25.50,EUR,", "integer number of minor units"),
        ("t9,2026-03-02T09:00:00,transfer,alice,bob,2550,EUR,", "UTC offset"),
        ("t9,2026-03-02T09:00:00Z,transfer,alice,,2550,EUR,", "needs `to`"),
        ("t9,2026-03-02T09:00:00Z,transfer,alice,alice,2550,EUR,", "same account"),
        ("t9,2026-03-02T09:00:00Z,refund,alice,bob,2550,EUR,", "type"),
        ("t9,2026-03-02T09:00:00Z,transfer,alice,bob,-5,EUR,", "amount"),
        ("t9,2026-03-02T09:00:00Z,transfer,alice,bob,5,eur,", "currency"),
        ("t9,2026-03-02T09:00:00Z,transfer,alice,bob,5,EUR,maybe", "label"),
        (f"{'x' * 65},2026-03-02T09:00:00Z,transfer,alice,bob,5,EUR,", "1..64"),
    ],
)
def test_a_bad_row_stops_the_import_before_anything_is_written(c: Container, tmp_path: Path, row: str, says: str) -> None:
    path = _write(tmp_path / "bad.csv", CSV + row + "\n")
    before = _events(c)
    with pytest.raises(ImportError_) as e:
        import_file(c, str(path), T)
    assert "line 8" in str(e.value) and says in str(e.value), str(e.value)
    assert _events(c) == before


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import fresh_sqlite_settings

    settings = fresh_sqlite_settings(tmp_path)
    migrate(settings)
    path = _write(tmp_path / "h.csv", CSV)
    url = ["--database-url", settings.database_url]
    assert main([*url, "import", str(path), "--tenant", T, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["refused"] == {"insufficient_funds": 1} and report["repeated"] == 0
    assert main([*url, "import", str(path), "--tenant", T]) == 0
    assert "6 of 6 rows were settled by an earlier run" in capsys.readouterr().out
    assert main([*url, "import", str(tmp_path / "missing.csv"), "--tenant", T]) == 2
    assert "missing.csv" in capsys.readouterr().err


# ---- properties ---------------------------------------------------------------------------------

ACCOUNTS = ["a", "b", "c", "d"]
movement = st.tuples(
    st.sampled_from(["transfer", "deposit", "withdrawal"]),
    st.sampled_from(ACCOUNTS),
    st.sampled_from(ACCOUNTS),
    st.integers(min_value=1, max_value=5_000),
    st.integers(min_value=0, max_value=600),  # seconds after the previous row
)


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(movement, min_size=1, max_size=25))
def test_importing_any_history_twice_equals_importing_it_once_and_conserves_money(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, str, int, int]]
) -> None:
    from tests.conftest import fresh_sqlite_settings

    tmp = tmp_path_factory.mktemp("imp")
    settings = fresh_sqlite_settings(tmp)
    lines, at, model = ["id,occurred_at,type,from,to,amount,currency"], START, dict.fromkeys(ACCOUNTS, 0)
    expected_refused = 0
    for i, (kind, src, dst, amount, gap) in enumerate(ops):
        at += timedelta(seconds=gap)
        if kind == "transfer" and src == dst:
            continue
        frm, to = ("", dst) if kind == "deposit" else (src, "") if kind == "withdrawal" else (src, dst)
        lines.append(f"m{i},{at.isoformat()},{kind},{frm},{to},{amount},EUR")
        if kind != "deposit" and model[src] < amount:
            expected_refused += 1
            continue
        if kind != "deposit":
            model[src] -= amount
        if kind != "withdrawal":
            model[dst] += amount
    path = _write(tmp / "h.csv", "\n".join(lines) + "\n")
    migrate(settings)
    c = build(settings)
    try:
        once = import_file(c, str(path), T)
        balances = {n: c.ledger.get_account(imported_id("account", n), T).posted_minor for n in ACCOUNTS
                    if any(n in line.split(",")[3:5] for line in lines[1:])}  # fmt: skip
        events = _events(c)
        twice = import_file(c, str(path), T)
        assert twice.created == twice.commands == 0 and twice.skipped == once.rows and _events(c) == events
        assert sum(once.refused.values()) == expected_refused
        assert balances == {n: model[n] for n in balances}
        assert all(b >= 0 for b in balances.values())
        for row in read_rows(str(path)):
            try:
                t = c.ledger.get_transfer(transfer_public_id(row), T)
            except DomainError:  # refused: never recorded
                continue
            assert t.occurred_at == row.occurred_at.isoformat()
    finally:
        c.close()


def test_a_balance_by_event_time_counts_what_had_happened_whenever_it_was_recorded(c: Container, tmp_path: Path) -> None:
    import_file(c, str(_write(tmp_path / "h.csv", CSV)), T)
    key = account_key(T, imported_id("account", "bob"))
    audit = c.audit
    # bob: d1 +300 on 1 March 09:00, t1 +2,500 on 2 March 09:00 (event times); all recorded today.
    assert audit.balance_at_event_time(key, datetime(2026, 3, 1, 12, tzinfo=timezone.utc)).posted_minor == 300
    assert audit.balance_at_event_time(key, datetime(2026, 3, 3, tzinfo=timezone.utc)).posted_minor == 2_800
    with pytest.raises(DomainError):  # not opened yet in event time
        audit.balance_at_event_time(key, datetime(2026, 2, 1, tzinfo=timezone.utc))
    with pytest.raises(DomainError):  # by recording time, nothing existed in March
        audit.balance_at(key, datetime(2026, 3, 3, tzinfo=timezone.utc))
    now = datetime.now(tz=timezone.utc)
    by_event, by_recording = audit.balance_at_event_time(key, now), audit.balance_at(key, now)
    assert msgspec.structs.replace(by_event, as_of=None) == msgspec.structs.replace(by_recording, as_of=None)  # all counted
