"""SIGKILL the projection worker process repeatedly while transfers flow: after a restart the
views equal a fresh replay of the log (nothing skipped, nothing applied twice)."""
from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount, PostTransfer
from domain.errors import DomainError
from infrastructure.readmodels import SqlViewStore
from infrastructure.settings import Settings
from keel.bootstrap import build
from infrastructure.replay import replay_check
from tests.conftest import PG_DSN
from tests.readmodels.helpers import TENANT, dump_views, literal_fold, log_events

KILLS = 6
STARTUP_MAX_S = 30.0
ROOT = Path(__file__).resolve().parents[2]


def _spawn(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, KEEL_DATABASE_URL=PG_DSN, KEEL_DATABASE_SCHEMA=settings.database_schema, KEEL_LOG_LEVEL="INFO")
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "projections"], env=env, cwd=ROOT, stdout=log, stderr=log)


@pytest.mark.postgres
def test_sigkill_worker_repeatedly_views_equal_fresh_replay(pg_settings: Settings, tmp_path: Path) -> None:
    c = build(pg_settings)
    store = SqlViewStore(c.store.read_models)
    log_path = tmp_path / "worker.log"
    stop = threading.Event()
    try:
        ids = [c.writer.execute(OpenAccount(tenant=TENANT, currency="USD")).id for _ in range(20)]
        for a in ids:
            c.writer.execute(Deposit(tenant=TENANT, account_id=a, amount_minor=10**9, currency="USD"))

        def flow() -> None:
            rng = random.Random(11)
            while not stop.is_set():
                futures = []
                for _ in range(40):
                    a, b = rng.sample(ids, 2)
                    futures.append(c.writer.submit(MakeTransfer(
                        tenant=TENANT, debit_account_id=a, credit_account_id=b, amount_minor=rng.randint(1, 1000),
                        currency="USD", pending=rng.random() < 0.2,
                    )))  # fmt: skip
                for f in futures:
                    r = f.result(timeout=30)
                    if not isinstance(r, DomainError) and r.status == "pending" and rng.random() < 0.7:
                        c.writer.submit(PostTransfer(tenant=TENANT, transfer_id=r.id, amount_minor=None))

        writer = threading.Thread(target=flow, daemon=True)
        writer.start()
        positions = [store.position()]
        rng = random.Random(7)
        for _ in range(KILLS):
            p = _spawn(pg_settings, log_path)
            # Kill only once the worker is applying events (start-up takes a moment on a busy
            # machine), at a random moment while transfers keep arriving.
            deadline = time.monotonic() + STARTUP_MAX_S
            while store.position() == positions[-1]:
                assert p.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "worker made no progress:\n" + log_path.read_text()[-3000:]
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            positions.append(store.position())
        stop.set()
        writer.join(30)
        assert positions == sorted(positions) and len(set(positions)) == KILLS + 1, positions

        head = c.ledger.recorder.max_notification_id()
        p = _spawn(pg_settings, log_path)
        deadline = time.monotonic() + 60
        while store.position() < head:
            assert time.monotonic() < deadline, f"worker stuck at {store.position()} of {head}"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, log_path.read_text()[-2000:]

        assert dump_views(store.db) == literal_fold(log_events(c.ledger))
        out = io.StringIO()
        assert replay_check(c.ledger, c.store.read_models, out=out) == 0, out.getvalue()
    finally:
        stop.set()
        c.close()
