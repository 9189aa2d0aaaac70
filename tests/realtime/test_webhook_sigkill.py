"""At-least-once across SIGKILL: `keel worker webhooks` on PostgreSQL is killed -9 several times while
it delivers; in the end the receiver has every event of the feed, in feed order once duplicates
(the deliveries since the last tracking move) are dropped, and nothing was skipped."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount, TransferBatch
from application.webhooks import check_registration
from keel.bootstrap import build
from tests.conftest import fresh_pg_settings
from tests.realtime.conftest import Receiver, catch_up, follower

pytestmark = pytest.mark.postgres

TRANSFERS = 1500
KILLS = 3
WAIT_S = 120


def _start(settings: object, allow: str) -> subprocess.Popen[bytes]:
    s = settings
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}, "KEEL_DATABASE_URL": s.database_url,  # type: ignore[attr-defined]
           "KEEL_DATABASE_SCHEMA": s.database_schema, "KEEL_LOG_LEVEL": "WARNING",  # type: ignore[attr-defined]
           "KEEL_WEBHOOK_ALLOW_HOSTS": allow}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "webhooks"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def test_webhook_worker_loses_nothing_across_sigkill(pg_session_schemas: list[str], receiver: Receiver) -> None:
    settings = fresh_pg_settings(pg_session_schemas, webhook_allow_hosts="127.0.0.1")
    c = build(settings)
    rng = random.Random(17)
    try:
        spec = check_registration(receiver.url, ["transfer.posted"], None, insecure_hosts=frozenset({"127.0.0.1"}))
        hook, _secret = c.webhooks.create("k", spec, after_id=0)
        w = c.writer
        accounts = [w.execute(OpenAccount(tenant="k", currency="EUR")).id for _ in range(50)]
        for a in accounts:
            w.execute(Deposit(tenant="k", account_id=a, amount_minor=10_000_000, currency="EUR"))
        items = []
        for _ in range(TRANSFERS):
            x, y = rng.sample(accounts, 2)
            items.append(MakeTransfer(tenant="k", debit_account_id=x, credit_account_id=y, amount_minor=1, currency="EUR"))
        for i in range(0, len(items), 500):
            w.execute(TransferBatch(tenant="k", items=tuple(items[i : i + 500])))
        catch_up(follower(c))
        expected = [json.loads(b)["id"] for b in c.feed.page("k", 0, frozenset({"transfer.posted"}), 5000).bodies]
        assert len(expected) == TRANSFERS

        def distinct() -> int:
            return len({json.loads(b)["id"] for b in receiver.bodies()})

        kills = 0
        proc = _start(settings, "127.0.0.1")
        deadline = time.monotonic() + WAIT_S
        try:
            while time.monotonic() < deadline and distinct() < TRANSFERS:
                if kills < KILLS and distinct() > (kills + 1) * TRANSFERS // (KILLS + 2):
                    time.sleep(rng.uniform(0.0, 0.05))  # mid-delivery, at a moment nobody chose
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    proc = _start(settings, "127.0.0.1")
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                time.sleep(0.01)
            last = max(c.feed.page("k", 0, frozenset({"transfer.posted"}), 5000).ids)
            while time.monotonic() < deadline and c.webhooks.get("k", hook.id).after_id < last:
                time.sleep(0.05)  # the tracking catches up with the deliveries
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert kills == KILLS, f"delivered everything before {KILLS} kills ({kills})"
        got = [json.loads(b)["id"] for b in receiver.bodies()]
        assert set(got) == set(expected), "no event skipped"
        # In order: each delivery is the next expected event, or a repeat of a recent one after a kill.
        position = {eid: i for i, eid in enumerate(expected)}
        high = -1
        for eid in got:
            i = position[eid]
            assert i <= high + 1, f"event {i} delivered before event {high + 1}"
            high = max(high, i)
        duplicates = len(got) - len(set(got))
        print(f"{len(got)} deliveries, {duplicates} repeated after {KILLS} kills")
        state = c.webhooks.get("k", hook.id)
        assert state.after_id >= last and state.status == "active"
    finally:
        c.close()
