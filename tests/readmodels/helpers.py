"""Helpers for the read-model tests: random ledger histories, a literal fold, view dumps."""
from __future__ import annotations

import calendar
import random
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from application.commands import (
    Deposit,
    FreezeAccount,
    MakeTransfer,
    OpenAccount,
    PostTransfer,
    ReverseTransfer,
    UnfreezeAccount,
    VoidTransfer,
    Withdraw,
)
from application.ledger import Ledger
from application.projections import ACCOUNT_COLUMNS, ENTRY_COLUMNS, FLOW_COLUMNS, TRANSFER_COLUMNS, VOLUME_COLUMNS
from domain.account import Account
from domain.errors import DomainError
from domain.transfer import Transfer
from infrastructure.readmodels import COLUMNS, KEYS, VIEW_TABLES, Tables, ViewDatabase

TENANT = "t1"
# Accounts are opened two days back in event time, so movements can carry event times after it.
OPENED_AT = datetime.now(tz=timezone.utc).replace(microsecond=0) - timedelta(days=2)
TENANT2 = "t2"
CURRENCIES = ("USD", "EUR")

# One operation of a generated history; indices are taken modulo what exists at that point.
Op = tuple[Any, ...]


def run_history(ledger: Ledger, ops: list[Op]) -> None:
    """Executes `ops` against the ledger; ("commit",) ends a batch (one execute_batch call).

    Commands name objects by public id (results' `.id`) inside their tenant, like clients do.
    ("open", currency, overdraft, twin): with `twin` true the same public id is also opened in
    TENANT2, so the views hold two accounts with one public id (and each tenant has its own
    settlement account, whose public id is the same in every tenant). Transfers pick both
    accounts inside one tenant."""
    accounts: list[tuple[str, UUID, str]] = []  # (tenant, public id, currency)
    transfers: list[tuple[str, UUID]] = []
    pending: list[tuple[str, UUID]] = []  # holds not yet known to be finished: what post and void pick from
    batch: list[Any] = []

    def flush() -> None:
        if not batch:
            return
        for outcome in ledger.execute_batch(list(batch)):
            if isinstance(outcome, DomainError):
                continue
            if type(outcome).__name__ == "AccountState" and outcome.kind == "customer":
                if (outcome.tenant, outcome.id, outcome.currency) not in accounts:
                    accounts.append((outcome.tenant, outcome.id, outcome.currency))
            elif type(outcome).__name__ == "TransferState":
                t = (outcome.tenant, outcome.id)
                if t not in transfers:
                    transfers.append(t)
                if outcome.status == "pending" and t not in pending:
                    pending.append(t)
                elif outcome.status != "pending" and t in pending:
                    pending.remove(t)
        batch.clear()

    for op in ops:
        kind = op[0]
        if kind == "commit":
            flush()
        elif kind == "open":
            currency = CURRENCIES[op[1] % len(CURRENCIES)]
            public_id = uuid.uuid4()
            for tenant in (TENANT, TENANT2) if len(op) > 3 and op[3] else (TENANT,):
                batch.append(OpenAccount(tenant=tenant, account_id=public_id, currency=currency, overdraft_limit_minor=op[2],
                                         occurred_at=OPENED_AT))  # fmt: skip
        elif not accounts:
            continue
        elif kind in ("deposit", "withdraw"):
            tenant, acct, cur = accounts[op[1] % len(accounts)]
            cls = Deposit if kind == "deposit" else Withdraw
            # An event time some hours back (history), when the op says: the views bucket by it.
            when = OPENED_AT + timedelta(hours=op[3]) if len(op) > 3 and op[3] is not None else None
            batch.append(cls(tenant=tenant, account_id=acct, amount_minor=op[2], currency=cur, occurred_at=when))
        elif kind == "transfer":
            tenant, a, cur = accounts[op[1] % len(accounts)]
            mates = [x for x in accounts if x[0] == tenant]
            _, b, _ = mates[op[2] % len(mates)]
            batch.append(
                MakeTransfer(tenant=tenant, debit_account_id=a, credit_account_id=b, amount_minor=op[3], currency=cur, pending=op[4])
            )
        elif kind in ("freeze", "unfreeze"):
            tenant, acct, _ = accounts[op[1] % len(accounts)]
            batch.append((FreezeAccount if kind == "freeze" else UnfreezeAccount)(tenant=tenant, account_id=acct))
        elif not transfers:
            continue
        elif kind == "post" and pending:
            tenant, tid = pending[op[1] % len(pending)]
            batch.append(PostTransfer(tenant=tenant, transfer_id=tid, amount_minor=op[2]))
        elif kind == "void" and pending:
            tenant, tid = pending[op[1] % len(pending)]
            batch.append(VoidTransfer(tenant=tenant, transfer_id=tid))
        elif kind == "reverse":
            tenant, tid = transfers[op[1] % len(transfers)]
            batch.append(ReverseTransfer(tenant=tenant, transfer_id=tid))
    flush()


def random_ops(rng: random.Random, n: int) -> list[Op]:
    ops: list[Op] = [("open", 0, 0, True), ("open", 0, 500, False), ("open", 1, 0, True), ("commit",)]
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            ops.append(("open", rng.randrange(2), rng.choice((0, 1000)), rng.random() < 0.5))
        elif r < 0.2:
            ops.append(("deposit", rng.randrange(50), rng.randint(1, 5000)))
        elif r < 0.25:
            ops.append(("withdraw", rng.randrange(50), rng.randint(1, 3000)))
        elif r < 0.7:
            ops.append(("transfer", rng.randrange(50), rng.randrange(50), rng.randint(1, 2000), rng.random() < 0.3))
        elif r < 0.78:
            ops.append(("post", rng.randrange(50), rng.choice((None, 1, 100))))
        elif r < 0.83:
            ops.append(("void", rng.randrange(50)))
        elif r < 0.88:
            ops.append(("reverse", rng.randrange(50)))
        elif r < 0.9:
            ops.append(("freeze" if rng.random() < 0.5 else "unfreeze", rng.randrange(50)))
        else:
            ops.append(("commit",))
    return ops


def log_events(ledger: Ledger) -> list[tuple[int, Any]]:
    notes = ledger.recorder.select_notifications(start=1, limit=10**9)
    return [(n.id, ledger.mapper.to_domain_event(n)) for n in notes]


def _us(ts: Any) -> int:
    return calendar.timegm(ts.utctimetuple()) * 1_000_000 + ts.microsecond


def literal_fold(events: list[tuple[int, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every view, by applying one event at a time to dicts: the specification of the views.

    Keys are storage keys (the events' originator ids and the key fields of their payloads);
    the `*public_id` columns are the events' public id fields, shown back to clients."""
    accounts: dict[str, dict[str, Any]] = {}
    transfers: dict[str, dict[str, Any]] = {}
    entries: dict[tuple[str, int], dict[str, Any]] = {}
    volumes: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0, 0])
    flows: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def flow(account_id: Any, ts: Any, inflow: int, outflow: int) -> None:
        f = flows[(str(account_id), _us(ts) // 1_000_000 // 86400 * 86400)]
        f[0] += inflow
        f[1] += outflow
        f[2] += inflow > 0
        f[3] += outflow > 0

    def volume(ts: Any, currency: str, amount: int) -> None:
        s = _us(ts) // 1_000_000
        for period, width in (("hour", 3600), ("day", 86400)):
            v = volumes[(period, s // width * width, currency)]
            v[0] += amount
            v[1] += 1

    def legs(tid: str) -> list[dict[str, Any]]:
        t = transfers[tid]
        return [entries[(t["debit_account_id"], t["position"])], entries[(t["credit_account_id"], t["position"])]]

    for pos, e in events:
        aid = str(e.originator_id)
        if isinstance(e, Account.Opened):
            accounts[aid] = dict(
                account_id=aid, tenant=e.tenant, currency=e.currency, kind=e.kind, status="open",
                overdraft_limit_minor=e.overdraft_limit_minor, posted_minor=0, pending_debits_minor=0,
                pending_credits_minor=0, opened_at_us=_us(e.timestamp), position=pos, public_id=str(e.public_id),
            )  # fmt: skip
        elif isinstance(e, Account.Debited):
            accounts[aid]["posted_minor"] -= e.amount_minor
            flow(aid, e.occurred_at or e.timestamp, 0, e.amount_minor)  # event time
        elif isinstance(e, Account.Credited):
            accounts[aid]["posted_minor"] += e.amount_minor
            flow(aid, e.occurred_at or e.timestamp, e.amount_minor, 0)
        elif isinstance(e, Account.DebitHeld):
            accounts[aid]["pending_debits_minor"] += e.amount_minor
        elif isinstance(e, Account.CreditHeld):
            accounts[aid]["pending_credits_minor"] += e.amount_minor
        elif isinstance(e, Account.DebitHoldSettled):
            accounts[aid]["pending_debits_minor"] -= e.held_minor
            accounts[aid]["posted_minor"] -= e.posted_minor
            if e.posted_minor:
                flow(aid, e.timestamp, 0, e.posted_minor)
        elif isinstance(e, Account.CreditHoldSettled):
            accounts[aid]["pending_credits_minor"] -= e.held_minor
            accounts[aid]["posted_minor"] += e.posted_minor
            if e.posted_minor:
                flow(aid, e.timestamp, e.posted_minor, 0)
        elif isinstance(e, Account.Frozen):
            accounts[aid]["status"] = "frozen"
        elif isinstance(e, Account.Unfrozen):
            accounts[aid]["status"] = "open"
        elif isinstance(e, Account.Closed):
            accounts[aid]["status"] = "closed"
        elif isinstance(e, Transfer.Initiated):
            status = "pending" if e.pending else "posted"
            transfers[aid] = dict(
                transfer_id=aid, position=pos, tenant=e.tenant, kind=e.kind,
                debit_account_id=str(e.debit_account_id), credit_account_id=str(e.credit_account_id),
                amount_minor=e.amount_minor, posted_amount_minor=0 if e.pending else e.amount_minor,
                currency=e.currency, status=status, reference=e.reference,
                reverses_id=str(e.reverses_id) if e.reverses_id else None, reversed_by_id=None, at_us=_us(e.timestamp),
                public_id=str(e.public_id), debit_public_id=str(e.debit_public_id),
                credit_public_id=str(e.credit_public_id),
                reverses_public_id=str(e.reverses_public_id) if e.reverses_public_id else None, reversed_by_public_id=None,
                occurred_at_us=_us(e.occurred_at or e.timestamp),
            )  # fmt: skip
            for me, other, me_pub, other_pub, direction in (
                (e.debit_account_id, e.credit_account_id, e.debit_public_id, e.credit_public_id, "debit"),
                (e.credit_account_id, e.debit_account_id, e.credit_public_id, e.debit_public_id, "credit"),
            ):
                entries[(str(me), pos)] = dict(
                    account_id=str(me), position=pos, transfer_id=aid, counterparty_id=str(other), direction=direction,
                    amount_minor=e.amount_minor, currency=e.currency, kind=e.kind, status=status,
                    reference=e.reference, at_us=_us(e.timestamp), tenant=e.tenant,
                    account_public_id=str(me_pub), transfer_public_id=str(e.public_id), counterparty_public_id=str(other_pub),
                    occurred_at_us=_us(e.occurred_at or e.timestamp),
                )  # fmt: skip
            if not e.pending:
                volume(e.occurred_at or e.timestamp, e.currency, e.amount_minor)
        elif isinstance(e, Transfer.HoldPosted):
            transfers[aid].update(status="posted", posted_amount_minor=e.amount_minor)
            for leg in legs(aid):
                leg.update(status="posted", amount_minor=e.amount_minor)
            volume(e.timestamp, transfers[aid]["currency"], e.amount_minor)
        elif isinstance(e, (Transfer.HoldVoided, Transfer.HoldExpired)):
            status = "voided" if isinstance(e, Transfer.HoldVoided) else "expired"
            transfers[aid]["status"] = status
            for leg in legs(aid):
                leg["status"] = status
        elif isinstance(e, Transfer.Reversed):
            transfers[aid]["reversed_by_id"] = str(e.reversal_id)
            transfers[aid]["reversed_by_public_id"] = str(e.reversal_public_id)
    return {
        "accounts": sorted(tuple(r[c] for c in ACCOUNT_COLUMNS) for r in accounts.values()),
        "entries": sorted(tuple(r[c] for c in ENTRY_COLUMNS) for r in entries.values()),
        "transfers": sorted(tuple(r[c] for c in TRANSFER_COLUMNS) for r in transfers.values()),
        "volumes": sorted((*k, *v) for k, v in volumes.items()),
        "flows": sorted((*k, *v) for k, v in flows.items()),
    }


def dump_views(db: ViewDatabase, prefix: str = "rm_") -> dict[str, list[tuple[Any, ...]]]:
    t = Tables(db, prefix)
    out = {}
    for table in VIEW_TABLES:
        rows = db.fetchall(f"SELECT {', '.join(COLUMNS[table])} FROM {t.name(table)} ORDER BY {', '.join(KEYS[table])}")
        out[table] = sorted(rows)
    return out


assert VOLUME_COLUMNS == ("period", "bucket_s", "currency", "amount_minor", "count")
assert FLOW_COLUMNS == ("account_id", "day_s", "inflow_minor", "outflow_minor", "inflow_count", "outflow_count")
