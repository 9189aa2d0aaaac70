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
balance equals its history; every API process serves writes again after the faults; and, once
`keel replay --check` exists, the read models equal a fresh replay within 10 s.

Responses are checked too: a 5xx other than a 503 problem+json with Retry-After is an anomaly.
The harness never touches the product's state except through its HTTP API and its CLI; it
must never be pointed at a database it did not create (it stops and deletes the cluster).
"""
from __future__ import annotations

import bisect
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from domain.identity import transfer_key

PG_START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 5.0
RETRY_PAUSE_S = (0.1, 0.5)
# After the faults stop, how long a client may keep retrying before its transfer is
# "indeterminate", and how long each API process has to serve a write again.
SETTLE_S = 45.0
RECOVERY_S = 30.0
REPLAY_CONVERGE_S = 10.0
PAUSE_S = (1.0, 4.0)
PG_DOWN_S = (1.0, 6.0)  # long enough, often, for requests to outwait the 2 s pool wait
INITIAL_BALANCE_MINOR = 100_000
TRANSFER_MAX_MINOR = 60_000  # large against the balance, so insufficient_funds happens often
PAGE_LIMIT = 200
TENANT = "chaos"
CURRENCY = "EUR"
ANOMALIES_SHOWN_MAX = 30


# ---- PostgreSQL cluster of our own -----------------------------------------------------------


def _pg_bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "pg_ctl").exists():
            return Path(out)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) not found")


def _runuser() -> str:
    found = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise RuntimeError("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
    return found


class PgCluster:
    """A throwaway PostgreSQL cluster on its own port that the nemesis may crash."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.bindir = _pg_bindir()
        # PostgreSQL refuses to run as root. runuser lives in /usr/sbin, which a minimal PATH
        # (cron, CI) may leave out.
        self._as_postgres = [_runuser(), "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(root, user="postgres", group="postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/keel"

    def _run(self, *args: str, timeout: float = PG_START_TIMEOUT_S) -> None:
        subprocess.run(
            [*self._as_postgres, *args], check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE keel")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(PG_START_TIMEOUT_S), "start")  # fmt: skip

    def crash(self) -> None:
        """Immediate stop: no checkpoint, every backend killed; the next start runs recovery."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# ---- what happened -----------------------------------------------------------------------------


@dataclass
class Intent:
    """One transfer a client asked for, and what it learned about it."""

    transfer_id: uuid.UUID
    key: str
    debit: uuid.UUID
    credit: uuid.UUID
    amount_minor: int
    outcome: str = "pending"  # acknowledged | rejected | indeterminate
    attempts: int = 0


@dataclass
class Observation:
    account_id: uuid.UUID
    version: int
    posted_minor: int


@dataclass
class Record:
    anomalies: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    intents: list[Intent] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(text)

    def status(self, label: str) -> None:
        with self.lock:
            self.statuses[label] += 1


# ---- processes ---------------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, name: str, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        from keel.procs import child_env

        self.name = name
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "keel.cli", "worker", name],
            cwd=cwd, env=child_env(env), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Cluster:
    """PostgreSQL + two API processes + the workers, each restartable by the nemesis."""

    def __init__(self, root: Path, api_count: int = 2) -> None:
        from infrastructure.settings import load_settings
        from keel.bootstrap import migrate
        from keel.procs import free_port, make_token

        self.root = root
        pg_root = root / "pg"
        pg_root.mkdir()
        self.pg = PgCluster(pg_root, free_port())
        self.pg.init()
        self.settings = load_settings({}, database_url=self.pg.dsn)
        migrate(self.settings)
        self.token = make_token(self.settings, "banking", TENANT)
        # The history check reads each account's own events (with versions) as an auditor.
        self.auditor_token = make_token(self.settings, "auditor")
        self.key_id = self.token.split("_")[1]
        from infrastructure.audit_keys import new_holder_kek

        # No rate limit (the writers outrun the default 100 requests/s of one key), and a holder
        # KEK for this throwaway cluster (`keel serve` refuses PostgreSQL without one).
        self.env = {
            "KEEL_DATABASE_URL": self.pg.dsn,
            "KEEL_LOG_LEVEL": "WARNING",
            "KEEL_RATE_LIMIT_PER_S": "0",
            "KEEL_HOLDER_KEK": new_holder_kek(set()),
        }
        self.ports = [free_port() for _ in range(api_count)]
        self.apis: list[Any] = [self._start_api(i) for i in range(api_count)]
        from keel.workers import WORKERS

        self.worker_names = sorted(WORKERS)
        self.workers = [self._start_worker(n) for n in self.worker_names]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.paused: set[int] = set()  # pids stopped by the nemesis

    def _start_api(self, index: int) -> Any:
        from keel.procs import ServerProcess

        return ServerProcess(self.env, cwd=self.root, log_path=self.root / f"api-{index}.log", port=self.ports[index])

    def _start_worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(name, self.env, cwd=self.root, log_path=self.root / f"worker-{name}.log")

    # ---- faults ------------------------------------------------------------------------------

    def kill_api(self, index: int) -> None:
        self.apis[index].proc.kill()
        self.apis[index].proc.wait()
        self.apis[index].stop()
        self.apis[index] = self._start_api(index)

    def kill_worker(self, index: int) -> None:
        self.workers[index].proc.kill()
        self.workers[index].proc.wait()
        self.workers[index].stop()
        self.workers[index] = self._start_worker(self.worker_names[index])

    def restart_pg(self, down_s: float) -> None:
        self.pg.crash()
        time.sleep(down_s)
        self.pg.start()

    def pause(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        self.paused.add(proc.pid)
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)
            self.paused.discard(proc.pid)

    def heal(self) -> None:
        """Everything running again: PostgreSQL up, no process stopped or dead."""
        if not self.pg.running():
            self.pg.start()
        for i, api in enumerate(self.apis):
            api.proc.send_signal(signal.SIGCONT)
            if api.proc.poll() is not None:
                self.apis[i].stop()
                self.apis[i] = self._start_api(i)
        for i, w in enumerate(self.workers):
            w.proc.send_signal(signal.SIGCONT)
            if w.proc.poll() is not None:
                self.workers[i].stop()
                self.workers[i] = self._start_worker(self.worker_names[i])

    def close(self) -> None:
        for api in self.apis:
            with contextlib.suppress(Exception):
                api.proc.send_signal(signal.SIGCONT)
                api.stop()
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        self.pg.destroy()


# ---- clients -----------------------------------------------------------------------------------


def _check_response(rec: Record, r: httpx.Response, what: str) -> None:
    """A 5xx must be a retryable 503 problem+json with Retry-After; anything else is a bug."""
    rec.status(f"{r.status_code}")
    if r.status_code < 500:
        if r.status_code >= 400 and not r.headers.get("content-type", "").startswith("application/problem+json"):
            rec.anomaly(f"{what}: {r.status_code} is not problem+json")
        return
    ok = (
        r.status_code == 503
        and r.headers.get("content-type", "").startswith("application/problem+json")
        and r.headers.get("retry-after", "").isdigit()
    )
    if not ok:
        rec.anomaly(f"{what}: {r.status_code} {r.headers.get('content-type')} {r.text[:200]!r}")


class Bank:
    def __init__(self, cluster: Cluster, rec: Record, accounts: int, seed: int) -> None:
        self.cluster = cluster
        self.rec = rec
        self.rng = random.Random(seed)
        self.headers = {"Authorization": f"Bearer {cluster.token}"}
        self.accounts: list[uuid.UUID] = []
        self.total_minor = accounts * INITIAL_BALANCE_MINOR
        self.deposit_ids: set[uuid.UUID] = set()
        with httpx.Client(base_url=cluster.urls[0], headers=self.headers, timeout=30) as c:
            for _ in range(accounts):
                r = c.post("/v1/accounts", json={"currency": CURRENCY})
                r.raise_for_status()
                aid = uuid.UUID(r.json()["id"])
                self.accounts.append(aid)
                r = c.post("/v1/deposits", json={"account_id": str(aid), "amount": INITIAL_BALANCE_MINOR, "currency": CURRENCY})
                r.raise_for_status()
                self.deposit_ids.add(uuid.UUID(r.json()["id"]))
        self.writes_stop = threading.Event()  # no new transfers
        self.retry_deadline = float("inf")  # give up retrying after this (monotonic)
        self.reads_stop = threading.Event()

    # one writer thread
    def writer(self, seed: int) -> None:
        from api.idempotency import derived_id

        rng = random.Random(seed)
        with httpx.Client(headers=self.headers, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.writes_stop.is_set():
                debit, credit = rng.sample(self.accounts, 2)
                key = uuid.uuid4().hex
                amount = rng.randint(1, TRANSFER_MAX_MINOR)
                body: dict[str, Any] = {
                    "debit_account_id": str(debit), "credit_account_id": str(credit),
                    "amount": amount, "currency": CURRENCY, "reference": f"chaos {key[:8]} ✓",
                }  # fmt: skip
                if rng.random() < 0.5:
                    tid = uuid.uuid4()
                    body["id"] = str(tid)
                else:  # the id the service derives from (API key, Idempotency-Key)
                    tid = derived_id(self.cluster.key_id, key)
                    assert tid is not None
                intent = Intent(tid, key, debit, credit, amount)
                with self.rec.lock:
                    self.rec.intents.append(intent)
                self._drive(client, rng, intent, body)

    def _drive(self, client: httpx.Client, rng: random.Random, intent: Intent, body: dict[str, Any]) -> None:
        while time.monotonic() < self.retry_deadline:
            intent.attempts += 1
            url = rng.choice(self.cluster.urls)
            try:
                r = client.post(url + "/v1/transfers", json=body, headers={"Idempotency-Key": intent.key})
            except httpx.HTTPError as e:
                self.rec.status(type(e).__name__)
                time.sleep(rng.uniform(*RETRY_PAUSE_S))
                continue
            _check_response(self.rec, r, f"POST /v1/transfers {intent.transfer_id}")
            if r.status_code in (200, 201):
                got = r.json()
                if uuid.UUID(got["id"]) != intent.transfer_id or got["amount"] != intent.amount_minor:
                    self.rec.anomaly(f"transfer {intent.transfer_id}: acknowledged as {got['id']} {got['amount']}")
                intent.outcome = "acknowledged"
                return
            code = r.json().get("code") if r.headers.get("content-type", "").startswith("application/problem") else None
            if r.status_code == 422 and code == "insufficient_funds":
                intent.outcome = "rejected"
                return
            if r.status_code >= 500 or code == "idempotency_key_in_flight":
                time.sleep(rng.uniform(*RETRY_PAUSE_S))
                continue
            self.rec.anomaly(f"transfer {intent.transfer_id}: unexpected {r.status_code} {r.text[:200]!r}")
            intent.outcome = "rejected_unexpectedly"
            return
        intent.outcome = "indeterminate"

    # one reader thread
    def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(headers=self.headers, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.reads_stop.is_set():
                try:
                    r = client.get(rng.choice(self.cluster.urls) + "/v1/accounts", params={"limit": PAGE_LIMIT})
                except httpx.HTTPError as e:
                    self.rec.status(f"read {type(e).__name__}")
                    time.sleep(rng.uniform(*RETRY_PAUSE_S))
                    continue
                _check_response(self.rec, r, "GET /v1/accounts")
                if r.status_code != 200:
                    time.sleep(rng.uniform(*RETRY_PAUSE_S))
                    continue
                self._check_read(r.json()["items"])

    def _check_read(self, items: list[dict[str, Any]]) -> None:
        ids = {uuid.UUID(a["id"]) for a in items}
        with self.rec.lock:
            self.rec.reads += 1
        if ids != set(self.accounts):
            self.rec.anomaly(f"read: listed {len(ids)} accounts, expected {len(self.accounts)}")
        for a in items:
            if a["posted"] < -a["overdraft_limit"] or a["available"] < 0:
                self.rec.anomaly(f"read: account {a['id']} below its limit: {a}")
            if a["pending_debits"] or a["pending_credits"]:
                self.rec.anomaly(f"read: account {a['id']} has pending amounts: {a}")
            with self.rec.lock:
                self.rec.observations.append(Observation(uuid.UUID(a["id"]), a["version"], a["posted"]))


# ---- nemesis -----------------------------------------------------------------------------------

FAULTS = ("kill_api", "kill_worker", "restart_pg", "pause_api", "pause_worker")


def nemesis(cluster: Cluster, rec: Record, stop: threading.Event, rng: random.Random, gap_s: tuple[float, float], log: Any) -> None:
    # Shuffled rounds of every kind: random moments and order, yet each kind happens.
    kinds = [k for k in FAULTS if cluster.workers or "worker" not in k]
    queue: list[str] = []
    while not stop.wait(rng.uniform(*gap_s)):
        if not queue:
            queue = rng.sample(kinds, len(kinds))
        kind = queue.pop()
        started = time.monotonic()
        try:
            if kind == "kill_api":
                cluster.kill_api(rng.randrange(len(cluster.apis)))
            elif kind == "kill_worker":
                cluster.kill_worker(rng.randrange(len(cluster.workers)))
            elif kind == "restart_pg":
                cluster.restart_pg(rng.uniform(*PG_DOWN_S))
            elif kind == "pause_api":
                cluster.pause(rng.choice(cluster.apis).proc, rng.uniform(*PAUSE_S))
            else:
                cluster.pause(rng.choice(cluster.workers).proc, rng.uniform(*PAUSE_S))
        except Exception as e:  # noqa: BLE001 - a fault that could not be healed is itself an anomaly
            rec.anomaly(f"nemesis {kind}: {type(e).__name__}: {str(e)[:300]}")
            continue
        rec.faults[kind] += 1
        log(f"fault {sum(rec.faults.values()):3d}: {kind} ({time.monotonic() - started:.1f} s)")


# ---- checks after the run ----------------------------------------------------------------------


def _get_all(client: httpx.Client, url: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        p = dict(params)
        if cursor:
            p["cursor"] = cursor
        r = client.get(url, params=p)
        r.raise_for_status()
        page = r.json()
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def _account_moves(auditor: httpx.Client, account_id: uuid.UUID) -> list[dict[str, Any]]:
    """An account's posted debits and credits, from its events in the ledger itself (not a read
    model): {version, transfer_id, type: debited|credited, amount}."""
    moves: list[dict[str, Any]] = []
    after = 0
    while True:
        r = auditor.get(f"/v1/audit/accounts/{account_id}/events", params={"after": after, "limit": PAGE_LIMIT})
        r.raise_for_status()
        page = r.json()
        for e in page["items"]:
            kind = {"Account.Debited": "debited", "Account.Credited": "credited"}.get(e["event_type"])
            if kind is None:
                if e["event_type"] not in ("Account.Opened",):
                    moves.append({"version": e["version"], "type": e["event_type"], "transfer_id": None, "amount": 0})
                continue
            moves.append({"version": e["version"], "type": kind, "transfer_id": e["payload"]["transfer_id"],
                          "amount": e["payload"]["amount_minor"]})  # fmt: skip
        if page.get("next_after") is None:
            return moves
        after = page["next_after"]


def check_history(bank: Bank, rec: Record, client: httpx.Client, auditor: httpx.Client) -> dict[str, int]:
    accounts = {uuid.UUID(a["id"]): a for a in _get_all(client, "/v1/accounts", {"limit": PAGE_LIMIT})}
    total = sum(a["posted"] for a in accounts.values())
    if total != bank.total_minor:
        rec.anomaly(f"total not conserved: {total} != {bank.total_minor}")
    for aid, a in accounts.items():
        if a["posted"] < -a["overdraft_limit"]:
            rec.anomaly(f"final: account {aid} below its limit ({a['posted']})")
    # Every movement of every account, oldest first.
    debits: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = {}
    credits: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = {}
    prefix: dict[uuid.UUID, dict[int, int]] = {}  # account -> version -> posted after it
    for aid in bank.accounts:
        moves = _account_moves(auditor, aid)
        posted = 0
        by_version: dict[int, int] = {}
        for m in sorted(moves, key=lambda m: m["version"]):
            if m["transfer_id"] is None:
                rec.anomaly(f"account {aid}: unexpected event {m['type']}")
                continue
            tid = uuid.UUID(m["transfer_id"])
            if m["type"] == "debited":
                posted -= m["amount"]
                debits.setdefault(tid, []).append((aid, m["amount"]))
            elif m["type"] == "credited":
                posted += m["amount"]
                credits.setdefault(tid, []).append((aid, m["amount"]))
            else:
                rec.anomaly(f"account {aid}: unexpected movement {m['type']}")
            by_version[m["version"]] = posted
        prefix[aid] = by_version
        if posted != accounts[aid]["posted"]:
            rec.anomaly(f"account {aid}: balance {accounts[aid]['posted']} != its history {posted}")
    # The account events name transfers by storage key (domain/identity.py); clients by public id.
    public_of = {transfer_key(TENANT, t): t for t in [*(i.transfer_id for i in rec.intents), *bank.deposit_ids]}
    debits = {public_of.get(k, k): v for k, v in debits.items()}
    credits = {public_of.get(k, k): v for k, v in credits.items()}
    # Reads: the balance seen at a version is the one the history gives for that version.
    ordered = {aid: sorted(v) for aid, v in prefix.items()}
    for o in rec.observations:
        versions = ordered.get(o.account_id, [])
        at = bisect.bisect_right(versions, o.version)
        expected = prefix[o.account_id][versions[at - 1]] if at else 0
        if o.version > accounts[o.account_id]["version"]:
            rec.anomaly(f"read: account {o.account_id} at version {o.version}, beyond the final {accounts[o.account_id]['version']}")
        elif expected != o.posted_minor:
            rec.anomaly(f"read: account {o.account_id} v{o.version} showed {o.posted_minor}, history says {expected}")
    # Every transfer by intent.
    intents = {i.transfer_id: i for i in rec.intents}
    counted = Counter({"acknowledged": 0, "rejected": 0, "indeterminate_applied": 0, "indeterminate_absent": 0})
    for tid, i in intents.items():
        d, c = debits.get(tid, []), credits.get(tid, [])
        applied = len(d)
        if len(d) > 1 or len(c) > 1:
            rec.anomaly(f"transfer {tid} ({i.outcome}) applied {len(d)} debits / {len(c)} credits")
        if len(d) != len(c) or any(x != (i.debit, i.amount_minor) for x in d) or any(x != (i.credit, i.amount_minor) for x in c):
            rec.anomaly(f"transfer {tid}: legs {d} / {c} do not match {i.debit}->{i.credit} {i.amount_minor}")
        if i.outcome == "acknowledged":
            counted["acknowledged"] += 1
            if applied != 1:
                rec.anomaly(f"acknowledged transfer {tid} found {applied} times in the histories")
            r = client.get(f"/v1/transfers/{tid}")
            if r.status_code != 200 or r.json()["amount"] != i.amount_minor or r.json()["status"] != "posted":
                rec.anomaly(f"acknowledged transfer {tid}: GET answered {r.status_code} {r.text[:200]!r}")
        elif i.outcome == "rejected":
            counted["rejected"] += 1
            if applied:
                rec.anomaly(f"rejected transfer {tid} was applied")
        elif i.outcome == "indeterminate":
            counted["indeterminate_applied" if applied else "indeterminate_absent"] += 1
    for tid in set(debits) | set(credits):
        if tid not in intents and tid not in bank.deposit_ids:
            rec.anomaly(f"movement of transfer {tid}, which no client asked for")
    counted["accounts"] = len(accounts)
    return dict(counted)


def check_recovery(bank: Bank, rec: Record) -> None:
    """Every API process serves a write again, by itself, after the last fault."""
    for url in bank.cluster.urls:
        deadline = time.monotonic() + RECOVERY_S
        body = {"debit_account_id": str(bank.accounts[0]), "credit_account_id": str(bank.accounts[1]),
                "amount": 1, "currency": CURRENCY, "id": str(uuid.uuid4())}  # fmt: skip
        key = uuid.uuid4().hex
        intent = Intent(uuid.UUID(body["id"]), key, bank.accounts[0], bank.accounts[1], 1)
        with bank.rec.lock:
            bank.rec.intents.append(intent)
        while True:
            try:
                r = httpx.post(url + "/v1/transfers", json=body, headers={**bank.headers, "Idempotency-Key": key}, timeout=REQUEST_TIMEOUT_S)
                if r.status_code in (200, 201):
                    intent.outcome = "acknowledged"
                    break
                if r.status_code == 422:
                    intent.outcome = "rejected"
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                intent.outcome = "indeterminate"
                rec.anomaly(f"{url} did not serve a write within {RECOVERY_S:.0f} s after the faults stopped")
                break
            time.sleep(0.5)


def check_replay(cluster: Cluster, rec: Record, log: Any) -> str:
    """`keel replay --check` must pass within REPLAY_CONVERGE_S, if this build has it."""
    from keel.cli import build_parser

    subcommands = next(
        (a.choices for a in build_parser()._actions if getattr(a, "choices", None) and "serve" in a.choices), {}  # noqa: SLF001
    )
    if "replay" not in subcommands:
        return "skipped (no `keel replay` in this build)"
    from keel.procs import child_env

    deadline = time.monotonic() + REPLAY_CONVERGE_S
    while True:
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "keel.cli", "replay", "--check"],
            cwd=cluster.root, env=child_env(cluster.env), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode == 0:
            return "read models equal a fresh replay"
        if time.monotonic() > deadline:
            rec.anomaly(f"keel replay --check still failing {REPLAY_CONVERGE_S:.0f} s after the faults: {done.stdout[-500:]}{done.stderr[-500:]}")
            return "FAILED"
        log("replay --check differs; waiting for projections to catch up")
        time.sleep(1)


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
                log(f"--- {p.name} (tail) ---\n{p.read_text(errors='replace')[-3000:]}")
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


def main(minutes: float, seed: int | None = None, accounts: int = 10, writers: int = 6) -> int:
    summary = run(duration_s=minutes * 60, seed=seed, accounts=accounts, writers=writers)
    print(summary.text())
    return 1 if summary.anomalies else 0
