"""`keel bench ledger`: group commit against one-commit-per-transfer and pgbench, same server.

Everything runs in one process tree on one machine, and every figure is reported next to a
reference measured in the same run (SPEC §8): pgbench's built-in TPC-B-like script with 8
clients on the same PostgreSQL, in a scratch database that is dropped afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from application.commands import Deposit, MakeTransfer, OpenAccount, TransferBatch
from application.group_commit import GroupCommitWriter
from domain.errors import DomainError
from infrastructure.settings import load_settings
from keel.bootstrap import build_ledger, migrate
from keel_tools.pgbench import DEFAULT_PG, pgbench_tps, server_settings

TENANT = "bench"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("ledger", help="group commit vs one commit per transfer vs pgbench (PostgreSQL)")
    p.add_argument("--pg", default=os.environ.get("KEEL_BENCH_POSTGRES", DEFAULT_PG), help="PostgreSQL DSN to benchmark on")
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=64, help="concurrent submitters")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    p.add_argument("--pgbench-clients", type=int, default=8)
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--report", help="append a Markdown table to this file (e.g. docs/benchmarks.md)")


@dataclass
class Run:
    name: str
    transfers: int
    rejected: int
    seconds: float
    commits: int

    @property
    def tps(self) -> float:
        return self.transfers / self.seconds


def _open_accounts(ledger: Any, n: int) -> list[uuid.UUID]:
    writer = GroupCommitWriter(ledger, window_s=0, batch_max=2000).start()
    ids = [uuid.uuid4() for _ in range(n)]
    futures = [writer.submit(OpenAccount(tenant=TENANT, currency="USD", account_id=i)) for i in ids]
    futures += [writer.submit(Deposit(tenant=TENANT, account_id=i, amount_minor=10**12, currency="USD")) for i in ids]
    for f in futures:
        outcome = f.result(timeout=600)
        assert not isinstance(outcome, DomainError), outcome
    writer.stop()
    return ids


def _drive(name: str, ledger: Any, ids: list[uuid.UUID], clients: int, seconds: float, batch_max: int) -> Run:
    commits = [0]

    def on_commit(n: int, weight: int, s: float) -> None:
        commits[0] += 1

    writer = GroupCommitWriter(ledger, window_s=0.001 if batch_max > 1 else 0, batch_max=batch_max, on_commit=on_commit)
    writer.start()
    stop_at = time.monotonic() + seconds
    done = [0] * clients
    rejected = [0] * clients

    def client(k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < stop_at:
            a, b = rng.sample(ids, 2)
            outcome = writer.submit(
                MakeTransfer(tenant=TENANT, debit_account_id=a, credit_account_id=b, amount_minor=rng.randint(1, 10_000), currency="USD")
            ).result(timeout=60)
            if isinstance(outcome, DomainError):
                rejected[k] += 1
            else:
                done[k] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    writer.stop()
    return Run(name=name, transfers=sum(done), rejected=sum(rejected), seconds=elapsed, commits=commits[0])


def _batch_endpoint(ledger: Any, ids: list[uuid.UUID], seconds: float) -> Run:
    """Batches of 1,000 transfers in one command (what POST /v1/transfers/batch submits)."""
    writer = GroupCommitWriter(ledger, window_s=0, batch_max=2000).start()
    rng = random.Random(7)
    done = 0
    commits = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        items = []
        for _ in range(1000):
            a, b = rng.sample(ids, 2)
            items.append(MakeTransfer(tenant=TENANT, debit_account_id=a, credit_account_id=b, amount_minor=rng.randint(1, 10_000), currency="USD"))
        outcome = writer.submit(TransferBatch(tenant=TENANT, items=tuple(items), atomic=False)).result(timeout=120)
        done += sum(1 for r in outcome.results if not isinstance(r, DomainError))
        commits += 1
    elapsed = time.monotonic() - started
    writer.stop()
    return Run(name="batch command (1,000 per command)", transfers=done, rejected=0, seconds=elapsed, commits=commits)


def bench_ledger(args: argparse.Namespace) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    settings = load_settings({}, database_url=args.pg, database_schema=schema, pg_pool_size=4)
    server = server_settings(args.pg)
    if server["fsync"] != "on" or server["synchronous_commit"] != "on":
        raise SystemExit(f"refusing to benchmark without durability: {server}")
    migrate(settings)
    ledger = build_ledger(settings)
    try:
        t0 = time.monotonic()
        ids = _open_accounts(ledger, args.accounts)
        setup_s = time.monotonic() - t0
        print(f"opened and funded {len(ids)} accounts in {setup_s:.1f}s", flush=True)
        group = _drive("group commit", ledger, ids, args.clients, args.seconds, batch_max=2000)
        print(f"group commit: {group.tps:,.0f} transfers/s ({group.commits} commits)", flush=True)
        single = _drive("one commit per transfer", ledger, ids, args.clients, args.seconds, batch_max=1)
        print(f"one commit per transfer: {single.tps:,.0f} transfers/s", flush=True)
        batch = _batch_endpoint(ledger, ids, args.seconds)
        print(f"batch command: {batch.tps:,.0f} transfers/s", flush=True)
    finally:
        ledger.close()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    pgbench = pgbench_tps(args.pg, args.pgbench_clients, args.seconds)
    print(f"pgbench TPC-B-like ({args.pgbench_clients} clients): {pgbench:,.0f} tps", flush=True)
    result = {
        "when": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "server": server,
        "cpus": os.cpu_count(),
        "accounts": args.accounts,
        "clients": args.clients,
        "seconds": args.seconds,
        "runs": [dict(asdict(r), tps=round(r.tps, 1)) for r in (group, single, batch)],
        "pgbench_tps": pgbench,
        "ratio_group_vs_pgbench": round(group.tps / pgbench, 2),
        "ratio_group_vs_single": round(group.tps / max(single.tps, 1e-9), 2),
        "ratio_batch_vs_pgbench": round(batch.tps / pgbench, 2),
    }
    return result


def _markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"\n### keel bench ledger — {result['when']}\n",
        f"`{command}` — {result['cpus']} CPUs, PostgreSQL {result['server']['server_version']}, "
        f"fsync={result['server']['fsync']}, synchronous_commit={result['server']['synchronous_commit']}, "
        f"{result['accounts']:,} accounts, {result['clients']} submitters, {result['seconds']:.0f} s per run.\n",
        "| run | transfers/s | commits | ratio vs pgbench |",
        "|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['name']} | {r['tps']:,.0f} | {r['commits']:,} | {r['tps'] / result['pgbench_tps']:.2f}× |")
    lines.append(f"| pgbench TPC-B-like, 8 clients (reference) | {result['pgbench_tps']:,.0f} | | 1.00× |")
    lines.append(f"\nGroup commit vs one commit per transfer: **{result['ratio_group_vs_single']}×**.\n")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = bench_ledger(args)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.report:
        with open(args.report, "a") as f:
            f.write(_markdown(result, "keel bench ledger " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in (("seconds", args.seconds), ("clients", args.clients))
            )))  # fmt: skip
    return 0
