"""The checks `keel chaos` runs once the faults stop: every account's history against every
client's intent and every balance read (`check_history`), each API process serving a write again
by itself (`check_recovery`, one probe transfer each), and the read models against a fresh replay
(`check_replay`). They read the ledger only through its HTTP API and CLI, never its database.
"""
from __future__ import annotations

import bisect
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from domain.identity import transfer_key
from keel_tools.chaos_clients import CURRENCY, PAGE_LIMIT, REQUEST_TIMEOUT_S, Bank, Intent, Record
from keel_tools.chaos_cluster import TENANT, Cluster
from keel_tools.procs import child_env

# How long each API process has to serve a write again after the faults stop, and the read
# models to equal a fresh replay.
RECOVERY_S = 30.0
REPLAY_CONVERGE_S = 10.0


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
                # Opened moves nothing; a refused debit (Account.DebitRefused, issue #15) is a
                # recorded attempt that changed no balance.
                if e["event_type"] not in ("Account.Opened", "Account.DebitRefused"):
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
    """`keel replay --check` must pass within REPLAY_CONVERGE_S."""
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
