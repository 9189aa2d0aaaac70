"""Projection lag while the ledger writes at full speed, then rebuild speed, on PostgreSQL.

    .venv/bin/python -m keel_tools.bench_projections --seconds 15 [--report docs/benchmarks.md]

1. A scratch schema; 10,000 funded accounts; `keel worker projections` as its own process.
2. Account set-up, then `keel bench ledger`'s group-commit driver (64 clients, uniform
   transfers) for --seconds. The worker follows from the first event and records, for every
   event it applies, the time from the event's timestamp (taken in the writer, before its
   commit) to the commit of the view rows; it prints p50/p99/max when stopped (SIGTERM).
3. The worker is stopped (SIGTERM), then `keel replay --rebuild` rebuilds every view from the
   whole log; the rate is events/s of that rebuild. The schema is dropped afterwards.
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from infrastructure.replay import replay_check, replay_rebuild
from infrastructure.settings import load_settings
from keel.bootstrap import build_ledger, migrate, open_store
from keel_tools.bench_ledger import _drive, _open_accounts
from keel_tools.pgbench import DEFAULT_PG

SAMPLE_INTERVAL_S = 0.005


def sample_lag(dsn: str, head_sql: str, pos_sql: str, stop: Any, out: Any) -> None:
    """In its own process (no GIL shared with the writers): polls the log head and the views'
    position; a commit's lag is from the first sample that saw it in the log to the first
    sample that saw it in the views."""
    heads: list[tuple[float, int]] = []
    positions: list[tuple[float, int]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            t = time.monotonic()
            heads.append((t, conn.execute(head_sql).fetchone()[0] or 0))
            positions.append((time.monotonic(), conn.execute(pos_sql).fetchone()[0]))
            time.sleep(SAMPLE_INTERVAL_S)
    lags: list[float] = []
    last, i = -1, 0
    for t, h in heads:
        if h <= last:
            continue
        last = h
        while i < len(positions) and (positions[i][0] < t or positions[i][1] < h):
            i += 1
        if i < len(positions):
            lags.append((positions[i][0] - t) * 1000)
    out.put(lags)


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
    store = open_store(settings)
    ledger = build_ledger(settings, store)
    worker = None
    worker_log = Path(f"/tmp/{schema}-worker.log")
    try:
        env = dict(os.environ, KEEL_DATABASE_URL=args.pg, KEEL_DATABASE_SCHEMA=schema, KEEL_LOG_LEVEL="INFO")
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", "projections"], env=env, stderr=out)
        conn = psycopg.connect(args.pg, autocommit=True)
        head_sql = f'SELECT MAX(notification_id) FROM "{schema}".ledger_events'
        pos_sql = f"SELECT position FROM \"{schema}\".rm_tracking WHERE name = 'views'"
        # The worker follows from the first event: account set-up is written at full speed too.
        ids = _open_accounts(ledger, args.accounts)
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        sampler = ctx.Process(target=sample_lag, args=(args.pg, head_sql, pos_sql, stop, results))
        sampler.start()
        run = _drive("group commit", ledger, ids, args.clients, args.seconds, batch_max=2000)
        time.sleep(0.5)
        stop.set()
        commit_lags = results.get(timeout=60)
        sampler.join(10)
        c50, c99, cmax = percentile(commit_lags, 0.5), percentile(commit_lags, 0.99), max(commit_lags)
        total_events = conn.execute(head_sql).fetchone()[0]
        deadline = time.monotonic() + 60
        while conn.execute(pos_sql).fetchone()[0] < total_events and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker = None
        summary = next(
            (line[line.index("projection lag over"):] for line in worker_log.read_text().splitlines() if "projection lag over" in line),
            "no lag summary in the worker log",
        )
        m = re.search(r"over (\d+) events: p50 ([0-9.]+) ms, p99 ([0-9.]+) ms, max ([0-9.]+) ms", summary)
        assert m, summary
        samples, p50, p99, worst = int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4))
        print(f"writes: {run.tps:,.0f} transfers/s for {run.seconds:.1f}s ({run.transfers:,} transfers, {run.commits:,} commits)")
        print(f"event time -> views (in the worker, includes the writer's own commit): {summary}")
        print(f"commit visible -> views ({len(commit_lags):,} new log heads sampled): "
              f"p50 {c50:.1f} ms, p99 {c99:.1f} ms, max {cmax:.1f} ms")  # fmt: skip

        t0 = time.monotonic()
        rate = replay_rebuild(ledger, store.read_models)
        rebuild_s = time.monotonic() - t0
        t0 = time.monotonic()
        differences = replay_check(ledger, store.read_models)
        check_s = time.monotonic() - t0
        print(f"rebuild: {total_events:,} events in {rebuild_s:.1f}s end to end ({rate:,.0f} events/s replaying); "
              f"check: {check_s:.1f}s, {differences} difference(s)")  # fmt: skip
        if args.report:
            with open(args.report, "a") as f:
                f.write(
                    f"\n### Read models — {datetime.now(tz=timezone.utc).isoformat(timespec='seconds')}\n\n"
                    f"`python -m keel_tools.bench_projections --seconds {args.seconds:g}` — {os.cpu_count()} CPUs, "
                    f"`keel worker projections` as its own process, {args.accounts:,} accounts, {args.clients} submitters.\n\n"
                    "| measure | value |\n|---|---:|\n"
                    f"| ledger writes during the lag run | {run.tps:,.0f} transfers/s |\n"
                    f"| projection lag, commit visible → views: p50 / p99 / max ({len(commit_lags):,} log heads) "
                    f"| {c50:.1f} / {c99:.1f} / {cmax:.1f} ms |\n"
                    f"| lag, event time → views (includes the writer's commit; {samples:,} events): p50 / p99 / max "
                    f"| {p50:.1f} / {p99:.1f} / {worst:.1f} ms |\n"
                    f"| `keel replay --rebuild` ({total_events:,} events) | {rate:,.0f} events/s ({rebuild_s:.1f} s end to end) |\n"
                    f"| `keel replay --check` | {check_s:.1f} s, {differences} differences |\n"
                )
        return 0
    finally:
        if worker is not None:
            worker.kill()
        ledger.close()
        store.close()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
