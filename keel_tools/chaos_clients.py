"""The clients of `keel chaos` and its nemesis: writer threads that move money between accounts,
retrying every error or timeout with the same key and body; reader threads that check every
balance they list; the nemesis that injects a fault every few seconds; and what they all record
(`Record`) for the checks afterwards. Clients touch the product only through its HTTP API.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel_tools.chaos_cluster import Cluster

REQUEST_TIMEOUT_S = 5.0
RETRY_PAUSE_S = (0.1, 0.5)
PAUSE_S = (1.0, 4.0)
PG_DOWN_S = (1.0, 6.0)  # long enough, often, for requests to outwait the 2 s pool wait
INITIAL_BALANCE_MINOR = 100_000
TRANSFER_MAX_MINOR = 60_000  # large against the balance, so insufficient_funds happens often
PAGE_LIMIT = 200
CURRENCY = "EUR"


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
