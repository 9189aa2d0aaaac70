"""Projection lag while the ledger writes at full speed, then rebuild speed, on PostgreSQL.

    .venv/bin/python scripts/bench_projections.py --seconds 15 [--report docs/benchmarks.md]

1. A scratch schema; 10,000 funded accounts; `keel worker projections` as its own process.
2. `keel bench ledger`'s group-commit driver (64 clients, uniform transfers) for --seconds, while
   a sampler polls the log head and the views' tracking position every ~2 ms. The lag of a
   commit is the time from the sample that first saw it in the log to the first sample that
   saw it in the views (resolution: one sampling interval).
3. The worker is stopped (SIGTERM), then `keel replay --rebuild` rebuilds every view from the
   whole log; the rate is events/s of that rebuild. The schema is dropped afterwards.
"""
from __future__ import annotations

import argparse
import bisect
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infrastructure.settings import load_settings  # noqa: E402
from keel.bench import DEFAULT_PG, _drive, _open_accounts  # noqa: E402
from keel.bootstrap import build_ledger, migrate  # noqa: E402
from keel.projections import replay_check, replay_rebuild  # noqa: E402

SAMPLE_INTERVAL_S = 0.002


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("KEEL_BENCH_POSTGRES", DEFAULT_PG))
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--report", help="append a Markdown section to this file")
    args = p.parse_args()

    schema = f"bench_rm_{uuid.uuid4().hex[:8]}"
    settings = load_settings({}, database_url=args.pg, database_schema=schema, pg_pool_size=4)
    migrate(settings)
    ledger = build_ledger(settings)
    worker = None
    try:
        ids = _open_accounts(ledger, args.accounts)
        env = dict(os.environ, KEEL_DATABASE_URL=args.pg, KEEL_DATABASE_SCHEMA=schema, KEEL_LOG_LEVEL="WARNING")
        worker = subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "projections"], env=env, cwd=ROOT)
        conn = psycopg.connect(args.pg, autocommit=True)
        head_sql = f'SELECT MAX(notification_id) FROM "{schema}".ledger_events'
        pos_sql = f"SELECT position FROM \"{schema}\".rm_tracking WHERE name = 'views'"
        # Let the worker catch up with the account setup before measuring.
        while conn.execute(pos_sql).fetchone()[0] < conn.execute(head_sql).fetchone()[0]:
            time.sleep(0.05)

        heads: list[tuple[float, int]] = []
        positions: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                t = time.monotonic()
                heads.append((t, conn.execute(head_sql).fetchone()[0] or 0))
                positions.append((time.monotonic(), conn.execute(pos_sql).fetchone()[0]))
                time.sleep(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run = _drive("group commit", ledger, ids, args.clients, args.seconds, batch_max=2000)
        time.sleep(1.0)  # let the views drain what the last commits wrote
        stop.set()
        sampler.join()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker = None

        pos_times = [t for t, _ in positions]
        pos_values = [v for _, v in positions]
        lags_ms: list[float] = []
        last_head = -1
        for t, h in heads:
            if h <= last_head:
                continue
            last_head = h
            i = bisect.bisect_left(pos_times, t)
            while i < len(pos_values) and pos_values[i] < h:
                i += 1
            if i < len(pos_values):
                lags_ms.append((pos_times[i] - t) * 1000)
        total_events = conn.execute(head_sql).fetchone()[0]
        conn.close()
        p50, p99, worst = percentile(lags_ms, 0.5), percentile(lags_ms, 0.99), max(lags_ms)
        print(f"writes: {run.tps:,.0f} transfers/s for {run.seconds:.1f}s ({run.transfers:,} transfers, {run.commits:,} commits)")
        print(f"projection lag over {len(lags_ms):,} new log heads: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")

        t0 = time.monotonic()
        rate = replay_rebuild(settings)
        rebuild_s = time.monotonic() - t0
        t0 = time.monotonic()
        differences = replay_check(settings)
        check_s = time.monotonic() - t0
        print(f"rebuild: {total_events:,} events in {rebuild_s:.1f}s end to end ({rate:,.0f} events/s replaying); "
              f"check: {check_s:.1f}s, {differences} difference(s)")  # fmt: skip
        if args.report:
            with open(args.report, "a") as f:
                f.write(
                    f"\n### Read models — {datetime.now(tz=timezone.utc).isoformat(timespec='seconds')}\n\n"
                    f"`python scripts/bench_projections.py --seconds {args.seconds:g}` — {os.cpu_count()} CPUs, "
                    f"`keel worker projections` as its own process, {args.accounts:,} accounts, {args.clients} submitters.\n\n"
                    "| measure | value |\n|---|---:|\n"
                    f"| ledger writes during the lag run | {run.tps:,.0f} transfers/s |\n"
                    f"| projection lag p50 (commit visible → views) | {p50:.1f} ms |\n"
                    f"| projection lag p99 | {p99:.1f} ms |\n"
                    f"| projection lag max | {worst:.1f} ms |\n"
                    f"| `keel replay --rebuild` ({total_events:,} events) | {rate:,.0f} events/s ({rebuild_s:.1f} s end to end) |\n"
                    f"| `keel replay --check` | {check_s:.1f} s, {differences} differences |\n"
                )
        return 0
    finally:
        if worker is not None:
            worker.kill()
        ledger.close()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
