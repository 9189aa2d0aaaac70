"""The `keel` subcommands that live outside the runtime: `keel bench ledger|http` and `keel chaos`.

Each `add_*` function is an entry of the `keel.commands` entry-point group (pyproject.toml):
keel/cli.py calls it with its subparsers and never imports this package by name. Loading this
module fails without the [tools] extra, so that `keel` answers the command with how to install
it instead of failing halfway through a run.
"""
from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from keel_tools import bench_http, bench_ledger, bench_realtime

# The [tools] extra's own dependencies (pyproject.toml): looked up, not imported (every `keel`
# command loads this module; the tools import them when they run).
EXTRA_MODULES = ("httpx",)
for _name in EXTRA_MODULES:
    if importlib.util.find_spec(_name) is None:
        raise ModuleNotFoundError(f"No module named {_name!r}", name=_name)


def add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks (see docs/benchmarks.md)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    bench_ledger.add_arguments(bench_sub)
    bench_http.add_arguments(bench_sub)
    bench_realtime.add_arguments(bench_sub)
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    return {"ledger": bench_ledger.main, "http": bench_http.main, "realtime": bench_realtime.main}[args.bench](args)


def add_chaos(sub: Any) -> None:
    p = sub.add_parser("chaos", help="bank test with faults on a throwaway PostgreSQL cluster (see keel_tools/chaos.py)")
    p.add_argument("--minutes", type=float, default=5.0, help="how long to inject faults")
    p.add_argument("--seed", type=int, help="random seed (printed at start) to replay a run's choices")
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--writers", type=int, default=6, help="concurrent transferring clients")
    p.set_defaults(func=run_chaos)


def run_chaos(args: argparse.Namespace) -> int:
    from keel_tools.chaos import main  # httpx and the process helpers: only when it runs

    return main(args.minutes, seed=args.seed, accounts=args.accounts, writers=args.writers)
