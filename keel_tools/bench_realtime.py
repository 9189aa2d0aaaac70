"""`keel bench realtime`: the real-time path under load (issue #17).

Starts `keel serve` (PostgreSQL in a scratch schema with `keel worker feed` and `keel worker webhooks`
beside it, or the embedded SQLite store with everything in the process), a local webhook receiver
and one open SSE stream, then sends transfers at `--rate` per second (batches of `--batch` every
batch/rate seconds through POST /v1/transfers/batch) for `--seconds`. Reports, for each transfer,
commit (the batch's 201) → its `transfer.posted` on the SSE stream and → its webhook delivery:
p50/p99/max latency, the rate achieved, and the webhook deliveries per second while the load ran
and after it (the drain). Measures on the box it runs on; nothing here is a timed unit test.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("realtime", help="SSE latency and webhook delivery throughput at a transfer rate")
    p.add_argument("--pg", default=None, help="PostgreSQL DSN (a scratch schema); default: the embedded SQLite store")
    p.add_argument("--rate", type=float, default=1000.0, help="transfers per second (default 1000)")
    p.add_argument("--batch", type=int, default=20, help="transfers per request (default 20)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--accounts", type=int, default=200)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class _Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        lock = threading.Lock()
        arrivals = self.arrivals

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.monotonic()
                tid = json.loads(body)["data"]["id"]
                with lock:
                    arrivals.setdefault(tid, now)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def main(args: argparse.Namespace) -> int:
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)

    from infrastructure.settings import load_settings
    from keel.bootstrap import migrate
    from keel_tools.procs import ServerProcess, auth, make_token

    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-rt-"))
    env = {"KEEL_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "KEEL_RATE_LIMIT_PER_S": "0", "KEEL_LOG_LEVEL": "WARNING"}
    workers: list[subprocess.Popen[bytes]] = []
    if args.pg:
        schema = f"keel_bench_rt_{uuid.uuid4().hex[:8]}"
        kek = "hbench:" + __import__("base64").b64encode(os.urandom(32)).decode()
        env |= {"KEEL_DATABASE_URL": args.pg, "KEEL_DATABASE_SCHEMA": schema, "KEEL_HOLDER_KEK": kek}
        settings = load_settings(env)
        migrate(settings)
    else:
        settings = load_settings({}, database_url=f"sqlite:///{tmp}/var/keel.db")
    server = ServerProcess(env, cwd=tmp, log_path=tmp / "serve.log")
    if args.pg:
        child = {**{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}, **env}
        workers = [subprocess.Popen([sys.executable, "-m", "keel.cli", "worker", n], env=child) for n in ("feed", "webhooks")]
    receiver = _Receiver()
    try:
        token = make_token(settings, "banking", "bench")
        c = httpx.Client(base_url=server.base_url, headers=auth(token), timeout=30)
        accounts = []
        for _ in range(args.accounts):
            aid = c.post("/v1/accounts", json={"currency": "EUR"}).json()["id"]
            c.post("/v1/deposits", json={"account_id": aid, "amount": 10**12, "currency": "EUR"})
            accounts.append(aid)
        assert c.post("/v1/webhooks", json={"url": receiver.url, "types": ["transfer.posted"]}).status_code == 201
        sse_arrivals: dict[str, float] = {}
        stop = threading.Event()

        def follow() -> None:
            with httpx.stream("GET", server.base_url + "/v1/events/stream", params={"types": "transfer.posted"},
                              headers=auth(token), timeout=None) as r:  # fmt: skip
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        sse_arrivals.setdefault(json.loads(line[6:])["data"]["id"], time.monotonic())
                    if stop.is_set():
                        return

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(1.0)
        committed: dict[str, float] = {}
        interval = args.batch / args.rate
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            due = started + n * interval
            time.sleep(max(0.0, due - time.monotonic()))
            items = [{"debit_account_id": accounts[(n * args.batch + i) % len(accounts)],
                      "credit_account_id": accounts[(n * args.batch + i + 1) % len(accounts)],
                      "amount": 1, "currency": "EUR"} for i in range(args.batch)]  # fmt: skip
            r = c.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
            now = time.monotonic()
            for result in r.json()["results"]:
                if result.get("ok"):
                    committed[result["transfer"]["id"]] = now
            n += 1
        load_s = time.monotonic() - started
        end_of_load = time.monotonic()
        deadline = end_of_load + 60
        while time.monotonic() < deadline and (len(receiver.arrivals) < len(committed) or len(sse_arrivals) < len(committed)):
            time.sleep(0.05)
        stop.set()
        sse = [(sse_arrivals[t] - at) * 1000 for t, at in committed.items() if t in sse_arrivals]
        hook = [(receiver.arrivals[t] - at) * 1000 for t, at in committed.items() if t in receiver.arrivals]
        during = sum(1 for t in receiver.arrivals.values() if t <= end_of_load)
        last = max(receiver.arrivals.values(), default=end_of_load)
        print(f"store: {'postgresql' if args.pg else 'sqlite (embedded)'}; {len(committed)} transfers in {load_s:.1f} s "
              f"= {len(committed) / load_s:.0f} transfers/s (target {args.rate:.0f}, batches of {args.batch})")
        for name, values in (("SSE", sse), ("webhook", hook)):
            print(f"{name:8s} commit -> arrival ms: p50 {_percentile(values, 0.5):.0f}  p99 {_percentile(values, 0.99):.0f}  "
                  f"max {max(values, default=float('nan')):.0f}  ({len(values)}/{len(committed)} arrived)")
        print(f"webhook deliveries: {during / load_s:.0f}/s during the load; all {len(receiver.arrivals)} done "
              f"{max(0.0, last - end_of_load):.2f} s after it ended "
              f"({len(receiver.arrivals) / max(1e-9, last - started):.0f}/s overall)")
        return 0 if len(sse) == len(hook) == len(committed) else 1
    finally:
        for w in workers:
            w.terminate()
            w.wait(15)
        server.stop()
        receiver.server.shutdown()
