"""`keel chaos`: a bank test with faults (SPEC §9), Jepsen-style, against real processes.

It starts its own PostgreSQL cluster (initdb into a temporary directory, its own port, fsync on;
as the `postgres` OS user when run as root, since PostgreSQL refuses root), two `keel serve`
processes and one `keel worker NAME` process per entry of keel.workers.WORKERS. N accounts of
one tenant hold a fixed total. Writer threads move random amounts between random accounts with
a client-chosen transfer id or only an Idempotency-Key, retrying every error or timeout with the
same key and the same body; reader threads list every balance. A nemesis meanwhile SIGKILLs and
restarts an API process or a worker, restarts PostgreSQL (immediate stop), or SIGSTOPs a process
for a few seconds.

Checked on every read: no balance below its limit, nothing pending, and (afterwards) that the
balance read at each account version is the one the final history gives for that version, so an
acknowledged write that later vanished is caught. Checked afterwards: the total is conserved;
every acknowledged transfer exists exactly once (GET /v1/transfers/{id}, and by counting its
debit and credit in the accounts' histories); every rejected one does not exist; no retry of an
unacknowledged one was applied twice; no movement exists that no client asked for; each
balance equals its history; every API process serves writes again after the faults; and the
read models equal a fresh replay (`keel replay --check`) within 10 s.

Responses are checked too: a 5xx other than a 503 problem+json with Retry-After is an anomaly.
The harness never touches the product's state except through its HTTP API and its CLI; it
must never be pointed at a database it did not create (it stops and deletes the cluster).

This module runs it (`run`, `main`); the processes and faults are keel_tools/chaos_cluster.py,
the clients and the nemesis keel_tools/chaos_clients.py, the checks keel_tools/chaos_checks.py.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from keel_tools.chaos_checks import check_history, check_recovery, check_replay
from keel_tools.chaos_clients import REQUEST_TIMEOUT_S, Bank, Record, nemesis
from keel_tools.chaos_cluster import Cluster

# After the faults stop, how long a client may keep retrying before its transfer is "indeterminate".
SETTLE_S = 45.0
ANOMALIES_SHOWN_MAX = 30


# ---- post-mortem -------------------------------------------------------------------------------


def _stored_events(cluster: Cluster, anomalies: list[str], rows_max: int = 200) -> str:
    """The stored events of every aggregate an anomaly names, for the post-mortem."""
    import re

    import psycopg

    ids = sorted(set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", " ".join(anomalies))))
    if not ids:
        return "(no aggregate ids in the anomalies)"
    lines = ["--- stored events of the aggregates named above (notification id, aggregate, version, topic) ---"]
    with psycopg.connect(cluster.pg.dsn) as conn:
        # Events of those aggregates, and events of others that name them (e.g. a Debited
        # event carries its transfer id); payloads are plain JSON unless KEEL_DATA_KEY is set.
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic FROM ledger_events"
            " WHERE originator_id = ANY(%s::uuid[]) OR encode(state, 'escape') LIKE ANY(%s)"
            " ORDER BY notification_id DESC LIMIT %s",
            (ids, [f"%{i}%" for i in ids], rows_max),
        ).fetchall()
        for n, oid, v, topic in reversed(rows):
            lines.append(f"{n:8d} {oid} v{v:<5d} {topic.rsplit(':', 1)[-1]}")
    return "\n".join(lines)


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Summary:
    seconds: float
    faults: dict[str, int]
    statuses: dict[str, int]
    transfers: dict[str, int]
    reads: int
    replay: str
    anomalies: list[str]

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    def text(self) -> str:
        lines = [
            f"keel chaos: {self.seconds:.0f} s",
            f"  faults ({self.fault_count}): " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            "  transfers: " + ", ".join(f"{k} {v}" for k, v in sorted(self.transfers.items())),
            f"  balance reads checked: {self.reads}",
            "  responses: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
            f"  read models: {self.replay}",
            f"  anomalies: {len(self.anomalies)}",
        ]
        lines += [f"    - {a}" for a in self.anomalies[:ANOMALIES_SHOWN_MAX]]
        if len(self.anomalies) > ANOMALIES_SHOWN_MAX:
            lines.append(f"    ... and {len(self.anomalies) - ANOMALIES_SHOWN_MAX} more")
        return "\n".join(lines)


def run(
    *,
    duration_s: float = 100.0,
    accounts: int = 10,
    writers: int = 6,
    readers: int = 2,
    fault_gap_s: tuple[float, float] = (2.0, 6.0),
    seed: int | None = None,
    workdir: Path | None = None,
    log: Any = print,
) -> Summary:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the summary
    seed = random.randrange(2**32) if seed is None else seed
    log(f"keel chaos: seed {seed}, {duration_s:.0f} s of faults, {accounts} accounts, {writers} writers, {readers} readers")
    root = Path(tempfile.mkdtemp(prefix="keel-chaos-", dir=workdir))
    os.chmod(root, 0o755)
    rec = Record()
    started = time.monotonic()
    cluster = Cluster(root)
    try:
        log(f"cluster up in {time.monotonic() - started:.1f} s: PostgreSQL :{cluster.pg.port}, API {cluster.ports}, workers {cluster.worker_names}")
        bank = Bank(cluster, rec, accounts, seed)
        threads = [threading.Thread(target=bank.writer, args=(seed + i,), daemon=True) for i in range(writers)]
        threads += [threading.Thread(target=bank.reader, args=(seed + 1000 + i,), daemon=True) for i in range(readers)]
        stop_faults = threading.Event()
        rng = random.Random(seed)
        chaos = threading.Thread(target=nemesis, args=(cluster, rec, stop_faults, rng, fault_gap_s, log), daemon=True)
        for t in threads:
            t.start()
        chaos.start()
        time.sleep(duration_s)
        stop_faults.set()
        bank.writes_stop.set()
        chaos.join()
        cluster.heal()
        log(f"faults stopped after {time.monotonic() - started:.0f} s; letting clients settle their retries")
        bank.retry_deadline = time.monotonic() + SETTLE_S
        for t in threads[:writers]:
            t.join(SETTLE_S + REQUEST_TIMEOUT_S * 2)
        bank.reads_stop.set()
        for t in threads[writers:]:
            t.join(REQUEST_TIMEOUT_S * 2)
        check_recovery(bank, rec)
        auditor_headers = {"Authorization": f"Bearer {cluster.auditor_token}"}
        with httpx.Client(base_url=cluster.urls[0], headers=bank.headers, timeout=30) as client, httpx.Client(
            base_url=cluster.urls[0], headers=auditor_headers, timeout=30
        ) as auditor:
            transfers = check_history(bank, rec, client, auditor)
        replay = check_replay(cluster, rec, log)
        if rec.anomalies:
            for p in sorted(root.glob("*.log")):
                text = p.read_text(errors="replace")
                log(f"--- {p.name} (tail) ---\n{text[-3000:]}")
                for block in _unhandled(text):  # a 500's traceback, wherever it is in the log
                    log(f"--- {p.name} (unhandled) ---\n{block}")
            log(_stored_events(cluster, rec.anomalies))
        return Summary(
            seconds=time.monotonic() - started,
            faults=dict(rec.faults),
            statuses=dict(rec.statuses),
            transfers=transfers,
            reads=rec.reads,
            replay=replay,
            anomalies=list(rec.anomalies),
        )
    except BaseException:
        for p in sorted(root.glob("*.log")):
            log(f"--- {p.name} (tail) ---\n{p.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def _unhandled(text: str, most: int = 3) -> list[str]:
    """The first `most` "unhandled error" records of a log, each with its traceback."""
    blocks, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if "unhandled error" in line and len(blocks) < most:
            end = next((j for j in range(i + 1, min(len(lines), i + 80)) if lines[j][:4].isdigit()), min(len(lines), i + 80))
            blocks.append("\n".join(lines[i:end]))
    return blocks


def main(minutes: float, seed: int | None = None, accounts: int = 10, writers: int = 6) -> int:
    summary = run(duration_s=minutes * 60, seed=seed, accounts=accounts, writers=writers)
    print(summary.text())
    return 1 if summary.anomalies else 0
