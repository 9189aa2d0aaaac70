"""Point-in-time state is rebuilt from events and equals what was reported when it was written."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.audit import parse_instant
from application.commands import Deposit, MakeTransfer, OpenAccount, PostTransfer, VoidTransfer, Withdraw
from domain.errors import DomainError, NotFound, ValidationFailed
from domain.identity import account_key
from keel.bootstrap import Container, build
from tests.audit.conftest import T, make_history, make_settings

@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_container(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_session_schemas: list
) -> Iterator[Container]:
    """One store for every example; fresh accounts per example keep the examples independent."""
    c = build(make_settings(request.param, tmp_path_factory.mktemp("pit"), pg_session_schemas))
    yield c
    c.close()


op = st.one_of(
    st.tuples(st.just("deposit"), st.integers(0, 1), st.integers(1, 500)),
    st.tuples(st.just("withdraw"), st.integers(0, 1), st.integers(1, 500)),
    st.tuples(st.just("transfer"), st.integers(0, 1), st.integers(1, 500)),
    st.tuples(st.just("hold"), st.integers(0, 1), st.integers(1, 500)),
    st.tuples(st.just("post"), st.integers(0, 1), st.integers(0, 500)),
    st.tuples(st.just("void"), st.integers(0, 1), st.integers(0, 0)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=25))
def test_balance_at_every_version_equals_what_was_reported(shared_container: Container, ops: list) -> None:
    c = shared_container
    audit = c.audit
    ids = [c.writer.execute(OpenAccount(tenant=T, currency="USD", overdraft_limit_minor=100)).id for _ in range(2)]
    reported: dict[tuple[uuid.UUID, int], tuple[int, int, int, int]] = {}
    holds: list[uuid.UUID] = []

    def snapshot() -> None:
        for account_id in ids:
            s = c.ledger.get_account(account_id, T)
            reported[(account_id, s.version)] = (s.posted_minor, s.pending_debits_minor, s.pending_credits_minor, s.available_minor)

    snapshot()
    for kind, i, amount in ops:
        a, b = ids[i], ids[1 - i]
        try:
            if kind == "deposit":
                c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=amount, currency="USD"))
            elif kind == "withdraw":
                c.writer.execute(Withdraw(tenant=T, account_id=a, amount_minor=amount, currency="USD"))
            elif kind in ("transfer", "hold"):
                t = c.writer.execute(MakeTransfer(tenant=T, debit_account_id=a, credit_account_id=b, amount_minor=amount,
                                                  currency="USD", pending=kind == "hold"))  # fmt: skip
                if kind == "hold":
                    holds.append(t.id)
            elif holds:
                h = holds.pop(0)
                if kind == "post":
                    c.writer.execute(PostTransfer(tenant=T, transfer_id=h, amount_minor=amount or None))
                else:
                    c.writer.execute(VoidTransfer(tenant=T, transfer_id=h))
        except DomainError:
            pass  # rejected: wrote nothing, and nothing is recorded for it
        snapshot()
    for (account_id, version), expected in reported.items():
        key = account_key(T, account_id)  # the auditor reads the log by storage key
        p = audit.balance_at_version(key, version)
        assert (p.posted_minor, p.pending_debits_minor, p.pending_credits_minor, p.available_minor) == expected
        assert p.version == version and p.account_id == account_id and p.key == key and p.tenant == T
        # The same state by time: at the instant of that version's event.
        at = audit.balance_at(key, parse_instant(p.as_of))
        assert at.version == version and at.posted_minor == expected[0]


def test_balance_across_snapshots_and_by_time(ac: Container) -> None:
    """Snapshots every 100 events: point-in-time state must not depend on where they fall."""
    public = ac.writer.execute(OpenAccount(tenant=T, currency="USD")).id
    futures = [ac.writer.submit(Deposit(tenant=T, account_id=public, amount_minor=i, currency="USD")) for i in range(1, 231)]
    for f in futures:
        assert not isinstance(f.result(timeout=30), DomainError)
    a = account_key(T, public)
    ac.ledger.take_snapshot(a, version=150)  # explicitly as well as by interval (those fall at batch ends)
    audit = ac.audit
    for version in (1, 2, 99, 100, 101, 200, 201, 231):
        deposits = version - 1
        assert audit.balance_at_version(a, version).posted_minor == deposits * (deposits + 1) // 2
    with pytest.raises(NotFound):
        audit.balance_at_version(a, 232)
    with pytest.raises(NotFound):
        audit.balance_at(a, datetime(2000, 1, 1, tzinfo=timezone.utc))
    now = audit.balance_at(a, datetime.now(tz=timezone.utc) + timedelta(seconds=1))
    assert (now.version, now.posted_minor) == (231, 230 * 231 // 2)


def test_instant_parsing_is_strict() -> None:
    assert parse_instant("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for bad in ("yesterday", "2026-01-02T03:04:05", ""):
        with pytest.raises(ValidationFailed):
            parse_instant(bad)


def test_global_log_page_has_hashes_and_no_plaintext_holder(ac: Container) -> None:
    make_history(ac, transfers=3)
    audit = ac.audit
    page1 = audit.events(after=0, limit=4)
    page2 = audit.events(after=page1[-1].position, limit=1000)
    entries = page1 + page2
    assert [e.position for e in entries] == sorted({e.position for e in entries})
    assert entries[0].prev_hash is None
    for prev, e in zip(entries, entries[1:]):
        assert e.prev_hash == prev.hash and e.hash is not None
    opened = [e for e in entries if e.event_type == "Account.Opened" and e.payload["holder"] is not None]
    assert opened and opened[0].payload["holder"] == {"encrypted": True, "key_id": str(opened[0].aggregate_id)}
    assert "Alice" not in str([e.payload for e in entries])
    history = audit.account_events(opened[0].aggregate_id)
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    with pytest.raises(ValidationFailed):
        audit.events(after=0, limit=0)


def test_account_events_carry_their_log_positions_and_hashes(ac: Container) -> None:
    public, _ = make_history(ac, transfers=2)
    a = account_key(T, public)
    audit = ac.audit
    by_position = {e.position: e for e in audit.events(0, 1000)}
    history = audit.account_events(a)
    assert history and all(e.position in by_position for e in history)
    for e in history:
        g = by_position[e.position]
        assert (g.aggregate_id, g.version, g.hash, g.event_type) == (a, e.version, e.hash, e.event_type)
