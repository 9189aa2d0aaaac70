"""The feed against real stores: order is log order, no event of another tenant, no holder data,
cursors resume exactly (any page size, across follower restarts), SIGKILL-safe tracking."""
from __future__ import annotations

import uuid

import msgspec
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from application.commands import Deposit, FreezeAccount, MakeTransfer, OpenAccount, PostTransfer, VoidTransfer
from application.feed import decode_cursor, encode_cursor
from domain.errors import DomainError
from infrastructure.feed import FeedStore
from infrastructure.settings import Settings
from keel.bootstrap import build
from tests.realtime.conftest import catch_up, follower

HOLDER_NAME = "Ada Secretname"

Op = st.one_of(
    st.tuples(st.just("transfer"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 500), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("freeze"), st.integers(0, 3)),
    st.tuples(st.just("restart")),
)


def _read_all(feed: FeedStore, tenant: str, page_size: int) -> list[dict]:
    events: list[dict] = []
    after = 0
    while True:
        page = feed.page(tenant, after, None, page_size)
        events += [msgspec.json.decode(b) for b in page.bodies]
        # The client's way: resume from the cursor it was given (opaque), not from the number.
        after = decode_cursor(encode_cursor(page.last_id))
        if not page.more:
            return events


def test_feed_is_log_order_per_tenant_and_resumable(settings: Settings) -> None:
    c = build(settings)
    try:
        feed = FeedStore(c.store.sql)
        w = c.writer

        @hsettings(max_examples=8, deadline=None)
        @given(ops=st.lists(Op, min_size=1, max_size=25), page_size=st.integers(1, 7))
        def run(ops: list[tuple], page_size: int) -> None:
            tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
            accounts = {
                t: [w.execute(OpenAccount(tenant=t, currency="EUR", holder={"name": HOLDER_NAME})).id for _ in range(4)]
                for t in tenants
            }
            deposits: dict[str, list[str]] = {t: [] for t in tenants}
            for t in tenants:
                for a in accounts[t]:
                    deposits[t].append(str(w.execute(Deposit(tenant=t, account_id=a, amount_minor=10_000, currency="EUR")).id))
            made: dict[str, list[str]] = {t: [] for t in tenants}  # transfer ids in commit order
            pending: list[tuple[str, uuid.UUID]] = []
            f = follower(c)
            for i, op in enumerate(ops):
                t = tenants[i % 2]
                try:
                    if op[0] == "transfer" and op[1] != op[2]:
                        r = w.execute(MakeTransfer(tenant=t, debit_account_id=accounts[t][op[1]],
                                                   credit_account_id=accounts[t][op[2]], amount_minor=op[3],
                                                   currency="EUR", pending=op[4]))  # fmt: skip
                        made[t].append(str(r.id))
                        if op[4]:
                            pending.append((t, r.id))
                    elif op[0] == "settle" and pending:
                        pt, pid = pending.pop(op[1] % len(pending))
                        w.execute(PostTransfer(tenant=pt, transfer_id=pid) if op[2] else VoidTransfer(tenant=pt, transfer_id=pid))
                    elif op[0] == "freeze":
                        w.execute(FreezeAccount(tenant=t, account_id=accounts[t][op[1]]))
                    elif op[0] == "restart":
                        catch_up(f)
                        f = follower(c)  # a new process: resumes from the tracking rows
                except DomainError:
                    pass  # a rule said no (frozen, insufficient funds): nothing was recorded
                if i % 3 == 0:
                    f.step()
            catch_up(f)
            for t in tenants:
                other = tenants[1 - tenants.index(t)]
                events = _read_all(feed, t, page_size)
                assert events == _read_all(feed, t, 1000), "page size changes nothing"
                ids = [decode_cursor(e["cursor"]) for e in events]
                assert ids == sorted(ids) and len(set(ids)) == len(ids), "strictly increasing"
                assert len({e["id"] for e in events}) == len(events), "event ids are unique"
                created = [e["data"]["id"] for e in events if e["type"] == "transfer.created"]
                assert created == made[t], "transfers appear in commit order, each once"
                text = b"".join(msgspec.json.encode(e) for e in events).decode()
                assert HOLDER_NAME not in text
                for a in accounts[other]:
                    assert str(a) not in text, "another tenant's account"
                for tid in made[other] + deposits[other]:
                    assert tid not in text, "another tenant's transfer"
                own = {str(a) for a in accounts[t]} | set(made[t]) | set(deposits[t])
                assert [e["data"]["id"] for e in events if e["type"] == "deposit.created"] == deposits[t]
                for e in events:
                    d = e["data"]
                    for k in ("id", "debit_account_id", "credit_account_id"):
                        if k in d and not d[k].startswith("6b65656c-"):  # the tenant's settlement account
                            assert d[k] in own
                # resuming from any event's cursor gives exactly the rest
                for k in (0, len(events) // 2, len(events) - 1):
                    if events:
                        rest = feed.page(t, decode_cursor(events[k]["cursor"]), None, 1000)
                        assert [msgspec.json.decode(b) for b in rest.bodies] == events[k + 1 :]

        run()
    finally:
        c.close()


def test_two_followers_never_write_a_row_twice(settings: Settings) -> None:
    c = build(settings)
    try:
        w = c.writer
        a = w.execute(OpenAccount(tenant="x", currency="EUR")).id
        b = w.execute(OpenAccount(tenant="x", currency="EUR")).id
        w.execute(Deposit(tenant="x", account_id=a, amount_minor=1000, currency="EUR"))
        f1, f2 = follower(c), follower(c)
        for _ in range(5):
            w.execute(MakeTransfer(tenant="x", debit_account_id=a, credit_account_id=b, amount_minor=1, currency="EUR"))
            f1.step()
            f2.step()  # finds the tracking moved by f1: resumes from the database, writes nothing twice
        catch_up(f1)
        catch_up(f2)
        feed = FeedStore(c.store.sql)
        bodies = feed.page("x", 0, None, 1000).bodies
        types = [msgspec.json.decode(x)["type"] for x in bodies]
        assert types.count("transfer.posted") == 5 and types.count("account.opened") == 3
        assert feed.head() == len(feed.after(0)) == feed.tracking()["feed"]
    finally:
        c.close()
