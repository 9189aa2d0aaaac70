"""Balance reads from the writer's committed copies (issue #16): never staler than the store.

`Ledger.get_account` answers from the writer's copy of an account only when that copy is known to
hold every event in the log at the time of the call; otherwise it reads the store. Two containers
on one database stand for two processes: whatever either writes, a read through either must equal
the account rebuilt from the store.
"""
from __future__ import annotations

import threading
import time
import uuid

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from application.aggregate_cache import AggregateCache, LogHead
from application.commands import Deposit, MakeTransfer, OpenAccount
from domain.account import Account
from domain.identity import account_key
from infrastructure.settings import Settings
from keel.bootstrap import build

T = "reads"


def _stored(c, aid):  # noqa: ANN001, ANN202
    return c.ledger.account_by_key(account_key(T, aid), T)


def test_reads_follow_both_writers(settings: Settings) -> None:
    c1, c2 = build(settings), build(settings)
    try:
        a = c1.writer.execute(OpenAccount(tenant=T, currency="USD")).id
        b = c1.writer.execute(OpenAccount(tenant=T, currency="USD")).id
        c1.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=1_000, currency="USD"))
        # Our own write: answered from the writer's copy, and equal to the store.
        assert c1.ledger.committed_account(account_key(T, a)) is not None
        assert c1.ledger.get_account(a, T) == _stored(c1, a)
        assert c1.ledger.get_account(a, T).posted_minor == 1_000

        # The other process writes: our copy is stale, so it must not answer.
        c2.writer.execute(MakeTransfer(tenant=T, transfer_id=uuid.uuid4(), debit_account_id=a,
                                       credit_account_id=b, amount_minor=300, currency="USD"))
        assert c1.ledger.committed_account(account_key(T, a)) is None
        assert c1.ledger.get_account(a, T).posted_minor == 700
        assert c1.ledger.get_account(b, T).posted_minor == 300

        # Our next batch reads the other's commit from the log: the copy is current again.
        c1.writer.execute(Deposit(tenant=T, account_id=b, amount_minor=5, currency="USD"))
        copy = c1.ledger.committed_account(account_key(T, a))
        assert copy is not None and copy.posted_minor == 700
        assert c1.ledger.get_account(a, T) == _stored(c1, a)
        assert c1.ledger.get_account(b, T) == _stored(c1, b)
        # Another tenant's id never names it, from memory as from the store.
        other = c1.ledger.committed_account(account_key("someone-else", a))
        assert other is None
    finally:
        c1.close()
        c2.close()


OPS = st.lists(
    st.tuples(st.sampled_from(["deposit", "transfer", "read"]), st.integers(0, 1), st.integers(0, 2),
              st.integers(0, 2), st.integers(1, 500)),
    min_size=1, max_size=25,
)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_interleaving_reads_equal_the_store(settings: Settings, ops: list[tuple[str, int, int, int, int]]) -> None:
    """Replay equals live state: after any interleaving of two writers, every read through either
    equals the account rebuilt from its events."""
    cs = [build(settings), build(settings)]
    try:
        ids = [cs[0].writer.execute(OpenAccount(tenant=T, currency="USD")).id for _ in range(3)]
        for op, who, x, y, amount in ops:
            c = cs[who]
            if op == "deposit":
                c.writer.execute(Deposit(tenant=T, account_id=ids[x], amount_minor=amount, currency="USD"))
            elif op == "transfer" and x != y:
                c.writer.submit(MakeTransfer(tenant=T, transfer_id=uuid.uuid4(), debit_account_id=ids[x],
                                             credit_account_id=ids[y], amount_minor=amount, currency="USD")).result(30)
            for reader in cs:
                for i in ids:
                    assert reader.ledger.get_account(i, T) == _stored(reader, i)
    finally:
        for c in cs:
            c.close()


class _EmptyLog:
    """A log with nothing in it: the cache sees only what the test commits."""

    def max_notification_id(self) -> int:
        return 0

    def select_notifications(self, start: int, limit: int, *, inclusive_of_start: bool = True) -> list[object]:
        return []


def _empty_log_cache() -> AggregateCache:
    cache = AggregateCache(_EmptyLog(), decoder=None)  # type: ignore[arg-type]
    cache.refresh()
    return cache


def test_copies_do_not_change_inside_a_batch() -> None:
    """Readers see the state as committed, not what a batch is doing to the cached object."""

    cache = _empty_log_cache()
    acct = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant=T, currency="USD")
    acct.collect_events()
    cache.put(acct)
    cache.note_own_commit([1], [acct], {acct.id: 1})
    before = cache.committed(acct.id, head=1)
    assert before is not None and before[1] == 1
    acct.posted_minor = 12345  # a batch in progress (not committed)
    acct._pending_events.append(object())  # noqa: SLF001
    after = cache.committed(acct.id, head=1)
    assert after is not None and after[0].posted_minor == before[0].posted_minor != 12345
    assert after[0].pending_events == []
    assert cache.committed(acct.id, head=2) is None  # something newer in the log: read the store
    cache.evict(acct.id)
    assert cache.committed(acct.id, head=1) is None


def test_log_head_is_read_after_each_caller_asked() -> None:
    """However many threads ask at once, each gets a head read by a query that started after it
    asked: never a value from before its call."""
    state = {"head": 0, "queries": 0}
    lock = threading.Lock()

    def read() -> int:
        with lock:
            state["queries"] += 1
            value = state["head"]
        time.sleep(0.002)
        return value

    head = LogHead(read)
    bad: list[tuple[int, int]] = []

    def caller() -> None:
        for _ in range(50):
            with lock:
                state["head"] += 1
                committed = state["head"]
            got = head.current()
            if got is None or got < committed:
                bad.append((committed, got))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert state["queries"] < 16 * 50  # shared between callers


def test_log_head_failure_is_none() -> None:
    def read() -> int:
        raise OSError("store away")

    assert LogHead(read).current() is None


def test_async_log_head_is_read_after_each_caller_asked() -> None:
    """AsyncLogHead: one query at a time however many coroutines ask, each answered by a query
    that started after it asked; a failing read answers None."""
    import asyncio

    from application.aggregate_cache import AsyncLogHead

    state = {"head": 0, "queries": 0, "fail": False}

    async def read() -> int:
        state["queries"] += 1
        value = state["head"]
        await asyncio.sleep(0.001)
        if state["fail"]:
            raise OSError("store away")
        return value

    async def run() -> list[tuple[int, int | None]]:
        head = AsyncLogHead(read)
        out: list[tuple[int, int | None]] = []

        async def caller() -> None:
            for _ in range(30):
                state["head"] += 1
                committed = state["head"]
                out.append((committed, await head.current()))

        await asyncio.gather(*[caller() for _ in range(16)])
        state["fail"] = True
        out.append((0, await head.current()))
        return out

    out = asyncio.run(run())
    assert all(got is not None and got >= committed for committed, got in out[:-1])
    assert out[-1] == (0, None)
    assert state["queries"] < 16 * 30


def test_committed_copies_are_bounded(monkeypatch) -> None:  # noqa: ANN001
    """Readers' copies never outgrow their bound; an account whose copy went is read from the store."""
    import application.aggregate_cache as ac

    monkeypatch.setattr(ac, "COMMITTED_COPIES_MAX", 3)

    cache = _empty_log_cache()
    accounts = []
    for i in range(5):
        acct = Account.open(account_id=uuid.uuid4(), public_id=uuid.uuid4(), tenant=T, currency="USD")
        acct.collect_events()
        cache.put(acct)
        cache.note_own_commit([i + 1], [acct], {acct.id: i + 1})
        accounts.append(acct)
    kept = [a for a in accounts if cache.committed(a.id, head=5) is not None]
    assert kept == accounts[2:]


def test_async_log_head_answers_its_callers_when_the_read_is_cancelled() -> None:
    """The loop shutting down mid-read cancels the shared read: every caller still gets an
    answer (None: read the store), none waits forever."""
    import asyncio

    from application.aggregate_cache import AsyncLogHead

    async def hang() -> int:
        await asyncio.sleep(3600)
        return 0

    async def run() -> list[int | None]:
        head = AsyncLogHead(hang)
        callers = [asyncio.ensure_future(head.current()) for _ in range(5)]
        await asyncio.sleep(0.01)
        for task in asyncio.all_tasks():
            if task.get_coro().__qualname__ == "AsyncLogHead._pump":  # type: ignore[union-attr]
                task.cancel()
        return await asyncio.wait_for(asyncio.gather(*callers), 2)

    assert asyncio.run(run()) == [None] * 5
