"""`keel bench http`: the whole service through HTTP, against pgbench on the same PostgreSQL.

Starts a scratch schema (fsync and synchronous_commit must be on), opens and funds the accounts,
starts `keel serve` with the chosen worker count, and drives it with wrk (closed loop, Lua
scripts generated here) for scenarios 1-4 and with keel_tools.loadgen (open loop) for scenario 5.
The load generators' own CPU time is measured (wait4 rusage) and reported, because on a 2-core
machine they compete with the service. pgbench's TPC-B-like TPS (8 clients) is measured in the
same run. Writes JSON, appends a Markdown table to docs/benchmarks.md and draws an SVG.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from application.commands import Deposit, OpenAccount
from application.group_commit import GroupCommitWriter
from domain.errors import DomainError
from infrastructure.audit_keys import new_holder_kek
from infrastructure.settings import load_settings
from keel.bootstrap import build_ledger, migrate
from keel_tools.pgbench import DEFAULT_PG, pgbench_tps, server_settings
from keel_tools import bench_routes

TENANT = "bench"
SCENARIOS = ("uniform", "hot", "batch", "mixed", "open")
# The open loop runs at 70 % of uniform's rate, right after it: after the batch scenario's bulk
# load, the first seconds are slow (a WAL-triggered checkpoint, caches refilling; measured in
# docs/benchmarks.md), which is a finding of its own, not the steady-state latency asked for.
RUN_ORDER = ("uniform", "open", "hot", "batch", "mixed")
FOLLOWER_MODES = ("background", "idle", "normal", "none")
OPEN_RATE_MAX = 1_000_000
WARM_UP_S = 5  # uniform load first: the writer's cache holds the accounts, statements are prepared
SETTLE_MAX_S = 120
SETTLED_FRAUD_LAG = 100  # events: about one page of the consumer
FOLLOWERS_TEXT = {
    "background": "projections worker at normal priority (reads wait for it), fraud and expiry workers at SCHED_IDLE",
    "idle": "projections, fraud and expiry workers at SCHED_IDLE",
    "normal": "projections, fraud and expiry workers at normal priority",
    "none": "none: no projections, fraud or expiry worker ran, so no lag figures",
}

LUA = r"""
local accounts = {%(accounts)s}
local n = #accounts
local mode = "%(mode)s"
local auth = "Bearer %(token)s"
local post_headers = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
local get_headers = {["Authorization"] = auth}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + seed)
end

local function pair()
  local a = math.random(n)
  local b = math.random(n - 1)
  if b >= a then b = b + 1 end
  return accounts[a], accounts[b]
end

local function transfer_json(a, b)
  return string.format('{"debit_account_id":"%%s","credit_account_id":"%%s","amount":%%d,"currency":"USD"}', a, b, math.random(100))
end

request = function()
  if mode == "uniform" then
    local a, b = pair()
    return wrk.format("POST", "/v1/transfers", post_headers, transfer_json(a, b))
  elseif mode == "hot" then
    local a, b = pair()
    if math.random() < 0.5 then
      if math.random() < 0.5 then a = accounts[1] else b = accounts[1] end
      if a == b then b = accounts[2] end
    end
    return wrk.format("POST", "/v1/transfers", post_headers, transfer_json(a, b))
  elseif mode == "batch" then
    local items = {}
    for i = 1, 1000 do
      local a, b = pair()
      items[i] = transfer_json(a, b)
    end
    return wrk.format("POST", "/v1/transfers/batch", post_headers, '{"transfers":[' .. table.concat(items, ",") .. ']}')
  else -- mixed: 80 %% reads, 20 %% transfers
    local r = math.random()
    local a, b = pair()
    if r < 0.4 then
      return wrk.format("GET", "/v1/accounts/" .. a, get_headers)
    elseif r < 0.8 then
      return wrk.format("GET", "/v1/accounts/" .. a .. "/transactions?limit=20", get_headers)
    else
      return wrk.format("POST", "/v1/transfers", post_headers, transfer_json(a, b))
    end
  end
end

done = function(summary, latency, requests)
  io.write(string.format(
    'KEELJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"socket_errors":%%d,"p50_ms":%%.2f,"p95_ms":%%.2f,"p99_ms":%%.2f,"p99_9_ms":%%.2f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
"""


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("http", help="the service through HTTP (wrk + open-loop generator) vs pgbench")
    p.add_argument("--pg", default=os.environ.get("KEEL_BENCH_POSTGRES", DEFAULT_PG),
                   help="PostgreSQL DSN to benchmark on (a scratch schema is made and dropped)")
    p.add_argument("--accounts", type=int, default=10_000, help="accounts opened first (default 10000)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--workers", type=int, default=1, help="keel serve worker processes")
    p.add_argument("--seconds", type=float, default=15.0, help="per scenario (default 15)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--json", default="var/bench-http.json")
    p.add_argument("--report", default=None, help="append Markdown to this file (e.g. docs/benchmarks.md)")
    p.add_argument("--svg", default="docs/bench-http.svg")
    p.add_argument("--followers", choices=FOLLOWER_MODES, default="background",
                   help="the projections, fraud and expiry workers: background = fraud and expiry at SCHED_IDLE (CPU "
                        "the service leaves), projections at normal priority (history reads wait for them); idle = all "
                        "three at SCHED_IDLE; normal = all at the service's priority; none = not started (the service "
                        "alone, as pgbench runs alone; history reads of written accounts then wait 2 s and answer stale)")
    p.add_argument("--open-rate", type=float, default=None, metavar="PER_S",
                   help="the open loop's offered rate in transfers/s (default: 70 %% of this run's uniform rate); "
                        "a fixed rate compares tail latency across code that changes the uniform rate")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="py-spy the service and its workers during each scenario; collapsed stacks go to DIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total_kb = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def _run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Runs a load generator; returns its stdout and the CPU seconds it used (wait4 rusage)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {text[-400:]}")
    return text, usage.ru_utime + usage.ru_stime


def _wrk(mode: str, port: int, token: str, accounts: list[str], connections: int, seconds: float) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("keel bench http needs wrk (Debian: apt-get install wrk)")
    script = LUA % {"accounts": ",".join(f'"{a}"' for a in accounts), "mode": mode, "token": token}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        conns = min(connections, 4) if mode == "batch" else connections
        text, cpu = _run_measured([exe, "-t", "2", "-c", str(conns), "-d", f"{int(seconds)}s", "--timeout", "10s", "-s", f.name, f"http://127.0.0.1:{port}"])
    finally:
        os.unlink(f.name)
    m = re.search(r"KEELJSON (\{.*\})", text)
    if not m:
        raise RuntimeError(f"wrk printed no result: {text[-400:]}")
    r = json.loads(m.group(1))
    seconds_run = r["duration_us"] / 1e6
    ok = r["requests"] - r["status_errors"]
    per_request = 1000 if mode == "batch" else (0.2 if mode == "mixed" else 1)
    r.update(
        scenario=mode,
        requests_per_s=round(r["requests"] / seconds_run, 1),
        transfers_per_s=round(ok * per_request / seconds_run, 1),
        errors=r["status_errors"] + r["socket_errors"],
        loadgen_cpu_s=round(cpu, 2),
        loadgen_cpu_share=round(cpu / seconds_run / (os.cpu_count() or 1), 3),
    )
    return r


def _profile(directory: str | None, scenario: str, pids: list[int], seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (sampling, outside the process) on each pid and its children, as collapsed stacks:
    `DIR/<scenario>-<pid>.txt`, one line per stack with its sample count (read with
    `sort -t' ' -k2 -n` or any flamegraph tool)."""
    if directory is None:
        return []
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--duration", str(max(1, int(seconds) - 1)),
                          "--rate", "200", "--format", "raw", "--nonblocking", "--output", f"{directory}/{scenario}-{pid}.txt"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for pid in pids
    ]


def _open_loop(port: int, token: str, accounts: list[str], rate: float, seconds: float, connections: int) -> dict[str, Any]:
    spec = {"host": "127.0.0.1", "port": port, "token": token, "accounts": accounts, "rate": rate, "seconds": seconds, "connections": connections}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        text, cpu = _run_measured([sys.executable, "-m", "keel_tools.loadgen", f.name])
    finally:
        os.unlink(f.name)
    r = json.loads(text.strip().splitlines()[-1])
    r.update(scenario="open", transfers_per_s=r["rate_achieved"], loadgen_cpu_s=round(cpu, 2),
             loadgen_cpu_share=round(cpu / r["seconds"] / (os.cpu_count() or 1), 3))  # fmt: skip
    return r


def _http_json(port: int, path: str, token: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except Exception:  # noqa: BLE001 - optional endpoints (projections/fraud) may not exist
        return None


def _lags(port: int, analyst: str) -> tuple[Any, Any, float | None]:
    """(projection lag in events, in ms, fraud lag in events) as the service reports them."""
    views = ((_http_json(port, "/v1/analytics/projections", analyst) or {}).get("projections")) or [{}]
    return views[0].get("lag_events"), views[0].get("lag_ms"), _metric(port, "keel_fraud_lag_events")


def _settle(port: int, analyst: str) -> float:
    """Waits (at most SETTLE_MAX_S) until the followers have caught up; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_MAX_S:
        projection_lag, _, fraud_lag = _lags(port, analyst)
        if projection_lag == 0 and fraud_lag is not None and fraud_lag <= SETTLED_FRAUD_LAG:
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return None
    return None


def _create_key(env: dict[str, str], role: str, tenant: str | None) -> str:
    cmd = [sys.executable, "-m", "keel.cli", "keys", "create", "--role", role] + (["--tenant", tenant] if tenant else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.open_rate is not None and not 0 < args.open_rate <= OPEN_RATE_MAX:
        raise SystemExit(f"--open-rate must be above 0 and at most {OPEN_RATE_MAX:,} transfers/s")
    scenarios = sorted(set(scenarios), key=RUN_ORDER.index)
    server = server_settings(args.pg)
    if server["fsync"] != "on" or server["synchronous_commit"] != "on":
        raise SystemExit(f"refusing to benchmark without durability: {server}")
    schema = f"benchhttp_{uuid.uuid4().hex[:8]}"
    settings = load_settings({}, database_url=args.pg, database_schema=schema)
    migrate(settings)
    # A rate limit far above any load (the default 100 requests/s of one key would be the result),
    # and a scratch holder KEK for this schema (`keel serve` refuses PostgreSQL without one).
    env = dict(os.environ, KEEL_DATABASE_URL=args.pg, KEEL_DATABASE_SCHEMA=schema, KEEL_RATE_LIMIT_PER_S="1000000",
               KEEL_HOLDER_KEK=new_holder_kek(set()), KEEL_LOG_LEVEL="WARNING")  # fmt: skip
    results: list[dict[str, Any]] = []
    proc = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        ledger = build_ledger(settings)
        writer = GroupCommitWriter(ledger, window_s=0, batch_max=2000).start()
        ids = [uuid.uuid4() for _ in range(args.accounts)]
        futures = [writer.submit(OpenAccount(tenant=TENANT, currency="USD", account_id=i)) for i in ids]
        futures += [writer.submit(Deposit(tenant=TENANT, account_id=i, amount_minor=10**13, currency="USD")) for i in ids]
        for fut in futures:
            assert not isinstance(fut.result(timeout=600), DomainError)
        writer.stop()
        ledger.close()
        accounts = [str(i) for i in ids]
        token = _create_key(env, "banking", TENANT)
        analyst = _create_key(env, "analyst", None)
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "keel.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # As in production (docker-compose): the read models, fraud scoring and hold expiry follow the
        # log in their own processes, so the mixed scenario's history reads and the lag figures are real.
        # On shared cores the API answers first and the background followers use what CPU is left
        # (SCHED_IDLE; their lag is reported); on hosts of their own, as in production, that changes
        # nothing. The projections keep normal priority by default: history reads wait for them.
        idle = {"background": {"fraud", "expiry"}, "idle": {"projections", "fraud", "expiry"}}.get(args.followers, set())
        workers = [
            subprocess.Popen([*(["chrt", "--idle", "0"] if name in idle else []), sys.executable, "-m", "keel.cli", "worker", name],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            for name in (() if args.followers == "none" else ("projections", "fraud", "expiry"))
        ]
        deadline = time.monotonic() + 60
        while _http_json(port, "/healthz", token) is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("keel serve did not come up")
            time.sleep(0.2)
        _wrk("uniform", port, token, accounts, args.connections, WARM_UP_S)  # caches, prepared statements
        uniform_tps = None
        for scenario in scenarios:
            # Each scenario starts with the followers caught up, not behind on the last one's backlog.
            settle_s = _settle(port, analyst) if workers else 0.0
            if scenario == "open":
                rate = args.open_rate if args.open_rate else 0.7 * (uniform_tps or 1000.0)
                r = _open_loop(port, token, accounts, rate, args.seconds, args.connections)
            else:
                spies = _profile(args.profile, scenario, [proc.pid] + [w.pid for w in workers], args.seconds)
                before = bench_routes.scrape(port)
                r = _wrk(scenario, port, token, accounts, args.connections, args.seconds)
                r["routes"] = bench_routes.route_latency(before, bench_routes.scrape(port), r["duration_us"] / 1e6)
                for spy in spies:
                    spy.wait(30)
                if scenario == "uniform":
                    uniform_tps = r["transfers_per_s"]
            r["service_rss_mb"] = _tree_rss_mb(proc.pid)
            r["settle_s"] = settle_s
            if workers:  # without followers there is no lag to speak of
                projection_lag, projection_lag_ms, fraud_lag = _lags(port, analyst)
                r.update(projection_lag_events=projection_lag, projection_lag_ms=projection_lag_ms, fraud_lag_events=fraud_lag)
            results.append(r)
            print(f"{scenario:8} {r['transfers_per_s']:>10,.0f} transfers/s  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  "
                  f"loadgen cpu {r['loadgen_cpu_share']:.0%}  rss {r['service_rss_mb']} MB", flush=True)  # fmt: skip
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    pgbench = pgbench_tps(args.pg, 8, args.seconds)
    print(f"pgbench TPC-B-like (8 clients): {pgbench:,.0f} tps", flush=True)
    by = {r["scenario"]: r for r in results}
    ratios: dict[str, float] = {}
    if "uniform" in by:
        ratios["uniform_vs_pgbench"] = round(by["uniform"]["transfers_per_s"] / pgbench, 2)
        if "hot" in by:
            ratios["hot_vs_uniform"] = round(by["hot"]["transfers_per_s"] / by["uniform"]["transfers_per_s"], 2)
        if "mixed" in by:  # target (issue #16): >= 3x, in requests/s
            ratios["mixed_requests_vs_uniform"] = round(by["mixed"]["requests_per_s"] / by["uniform"]["transfers_per_s"], 2)
    return {
        "when": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "server": server, "cpus": os.cpu_count(), "workers": args.workers, "accounts": args.accounts,
        "followers": args.followers,
        "connections": args.connections, "seconds": args.seconds, "pgbench_tps": pgbench,
        "scenarios": results, "ratios": ratios,
    }  # fmt: skip


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"\n### keel bench http — {result['when']}\n",
        f"`{command}` — {result['cpus']} CPUs shared by PostgreSQL, the service ({result['workers']} worker(s)), its "
        f"followers ({FOLLOWERS_TEXT[result.get('followers', 'normal')]}) and the load generator; fsync={result['server']['fsync']}, synchronous_commit={result['server']['synchronous_commit']}.\n",
        "| scenario | transfers/s | requests/s | vs pgbench | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | load-gen CPU | service RSS MB | projection lag (events / ms) | fraud lag (events) | settle s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['transfers_per_s']:,.0f} | {r.get('requests_per_s', r['transfers_per_s']):,.0f} | "
            f"{r['transfers_per_s'] / result['pgbench_tps']:.2f}× | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['p99_9_ms']} | {r['errors']} | {r['loadgen_cpu_share']:.0%} | {r['service_rss_mb']} | "
            f"{r.get('projection_lag_events', 'n/a')} / {r.get('projection_lag_ms', 'n/a')} | {r.get('fraud_lag_events', 'n/a')} | "
            f"{r.get('settle_s', '')} |"
        )
    lines.append(f"| pgbench TPC-B-like, 8 clients (reference) | {result['pgbench_tps']:,.0f} | | 1.00× | | | | | | | | | | |")
    lines.append(f"\nRatios: {json.dumps(result['ratios'])}. Load-gen CPU is the generator's share of all cores. Lags are "
                 "read right after each scenario; settle s is how long the followers needed to catch up before it started.\n")
    return "\n".join(lines) + bench_routes.markdown(result)


def svg(result: dict[str, Any]) -> str:
    """Throughput per scenario (bars) and open-loop latency over time (p50/p99 lines)."""
    w, h = 900, 360
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="20" y="20" font-size="14">keel bench http: transfers/s by scenario (left), open-loop latency per second (right)</text>']  # fmt: skip
    scen = result["scenarios"]
    top = max([r["transfers_per_s"] for r in scen] + [result["pgbench_tps"], 1.0])
    bars = [(r["scenario"], r["transfers_per_s"]) for r in scen] + [("pgbench", result["pgbench_tps"])]
    for k, (name, value) in enumerate(bars):
        bh = 260 * value / top
        x = 30 + k * 60
        parts.append(f'<rect x="{x}" y="{320 - bh:.1f}" width="40" height="{bh:.1f}" fill="{"#888" if name == "pgbench" else "#2b6cb0"}"/>')
        parts.append(f'<text x="{x}" y="335">{name}</text><text x="{x}" y="{315 - bh:.1f}">{value:,.0f}</text>')
    timeline = next((r.get("timeline") for r in scen if r["scenario"] == "open"), None) or []
    if timeline:
        x0, x1, y0 = 480, 880, 320
        tmax = max(t["t"] for t in timeline) or 1
        lmax = max(max(t["p99_ms"] for t in timeline), 1.0)
        for key, color in (("p50_ms", "#2f855a"), ("p99_ms", "#c53030")):
            pts = " ".join(f"{x0 + (x1 - x0) * t['t'] / tmax:.1f},{y0 - 260 * t[key] / lmax:.1f}" for t in timeline)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{x0}" y="335">0 s</text><text x="{x1 - 30}" y="335">{tmax} s</text>')
        parts.append(f'<text x="{x0}" y="55">{lmax:.1f} ms</text><text x="{x0 + 80}" y="55" fill="#c53030">p99</text>'
                     f'<text x="{x0 + 120}" y="55" fill="#2f855a">p50</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


WRK_MISSING = ("keel bench http drives the service with wrk, which is not installed: "
               "apt-get install wrk (Debian/Ubuntu) or brew install wrk (macOS)")


def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:  # before any work: no scratch schema, no server, no pgbench
        print(f"keel: {WRK_MISSING}", file=sys.stderr)
        return 2
    result = bench_http(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    if args.svg:
        Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
        Path(args.svg).write_text(svg(result))
    command = (f"keel bench http --workers {args.workers} --seconds {args.seconds:g} --connections {args.connections}"
               f" --followers {args.followers} --scenarios {args.scenarios}")  # fmt: skip
    if args.open_rate:
        command += f" --open-rate {args.open_rate:g}"
    print(markdown(result, command))
    if args.report:
        with open(args.report, "a") as f:
            f.write(markdown(result, command))
    return 0
