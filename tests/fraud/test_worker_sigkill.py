"""Exactly once across SIGKILL: `keel worker fraud` on PostgreSQL is killed -9 several times
while it works through the log; at the end every transfer has exactly one assessment, and
every recorded feature vector equals what one uninterrupted pass over the log computes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from application.commands import Deposit, MakeTransfer, OpenAccount, TransferBatch
from domain.identity import transfer_key
from fraud.app import LEDGER_TOPICS
from fraud.features import FeatureExtractor
from infrastructure.settings import Settings
from keel.bootstrap import build, build_fraud_app
from tests.conftest import PG_DSN, fresh_pg_settings

pytestmark = pytest.mark.postgres

ACCOUNTS = 200
BATCHES = 6  # x 1,000 transfers
KILLS = 3
WAIT_S = 90


def _count(settings: Settings, sql: str) -> int:
    with psycopg.connect(PG_DSN) as conn:
        conn.execute(f'SET search_path TO "{settings.database_schema}"')
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def _assessed(settings: Settings) -> int:
    return _count(settings, "SELECT count(*) FROM fraud_events WHERE topic LIKE '%FraudAssessed'")


def _start(settings: Settings, model_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": settings.database_url,
        "KEEL_DATABASE_SCHEMA": settings.database_schema,
        "KEEL_FRAUD_MODEL_DIR": str(model_dir),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "fraud"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_worker_scores_every_transfer_exactly_once_across_sigkill(pg_session_schemas: list[str], model_dir: Path) -> None:
    settings = fresh_pg_settings(pg_session_schemas)
    c = build(settings)
    rng = random.Random(4)
    try:
        w = c.writer
        accounts = [w.execute(OpenAccount(tenant="k", currency="EUR")).id for _ in range(ACCOUNTS)]
        for a in accounts:
            w.execute(Deposit(tenant="k", account_id=a, amount_minor=10_000_000, currency="EUR"))
        for _ in range(BATCHES):
            items = []
            for _ in range(1000):
                x, y = rng.sample(accounts, 2)
                items.append(MakeTransfer(tenant="k", debit_account_id=x, credit_account_id=y,
                                          amount_minor=rng.randint(100, 5_000), currency="EUR"))
            w.execute(TransferBatch(tenant="k", items=tuple(items)))
        total = ACCOUNTS + BATCHES * 1000
        kills = 0
        deadline = time.monotonic() + WAIT_S
        proc = _start(settings, model_dir)
        try:
            while time.monotonic() < deadline:
                done = _assessed(settings)
                if done >= total:
                    break
                if kills < KILLS and done > 0 and rng.random() < 0.5:
                    # Somewhere in the middle of the work, at a moment nobody chose.
                    time.sleep(rng.uniform(0.0, 0.3))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    proc = _start(settings, model_dir)
                    continue
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert kills == KILLS, f"the worker finished before it could be killed {KILLS} times ({kills})"
        assert _assessed(settings) == total
        assert _count(settings, "SELECT count(DISTINCT originator_id) FROM fraud_events WHERE topic LIKE '%FraudAssessed'") == total
        # Pages redone after a kill wrote their id rows again; the table holds each transfer once.
        assert _count(settings, "SELECT count(*) FROM fraud_transfer_ids") == total

        app = build_fraud_app(settings)
        try:
            ex = FeatureExtractor()
            notes = c.ledger.recorder.select_notifications(start=0, limit=1_000_000, topics=LEDGER_TOPICS, inclusive_of_start=False)
            expected = [o for o in map(ex.observe, map(c.ledger.mapper.to_domain_event, notes)) if o]
            assert len(expected) == total
            for o in expected[:: max(1, total // 400)] + expected[-50:]:
                a = app.assessment(o.transfer_key)  # assessments are kept under the transfer's storage key
                assert a.features == list(o.features)
                assert (a.public_id, a.tenant) == (o.public_id, "k") and o.transfer_key == transfer_key("k", o.public_id)
                assert app.transfer_keys(o.public_id) == [("k", o.transfer_key)]
            assert app.position() == notes[-1].id
        finally:
            app.close()
    finally:
        c.close()
