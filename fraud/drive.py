"""Replays a simulated record stream into a live Keel: through the ledger's writer (in process)
or through the HTTP API (`keel simulate --api URL --rate N`).

Live replay compresses simulated time into wall-clock time (the ledger stamps its own events),
so velocity and time-of-day features of a replay differ from the simulated period: a replay is
for exercising the pipeline end to end, not for measuring model quality (`keel fraud evaluate`).
It never retries a refused transfer: a refusal is a result, counted and reported.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from application.commands import Deposit, MakeTransfer, OpenAccount, Withdraw
from domain.errors import DomainError
from domain.transfer import DEPOSIT, WITHDRAWAL
from fraud.dataset import SIM_TENANT, Record, SimOpen

IN_FLIGHT_MAX = 2000
RATE_MAX = 100_000
HTTP_TIMEOUT_S = 30.0


@dataclass
class DriveResult:
    accounts: int = 0
    transfers: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def command_for(r: Record, tenant: str, currency: str) -> Any:
    if isinstance(r, SimOpen):
        return OpenAccount(tenant=tenant, currency=currency, account_id=r.account_id, metadata={"role": r.role})
    if r.kind == DEPOSIT:
        return Deposit(tenant=tenant, account_id=r.credit_account_id, amount_minor=r.amount_minor, currency=currency,
                       transfer_id=r.transfer_id)
    if r.kind == WITHDRAWAL:
        return Withdraw(tenant=tenant, account_id=r.debit_account_id, amount_minor=r.amount_minor, currency=currency,
                        transfer_id=r.transfer_id)
    return MakeTransfer(tenant=tenant, debit_account_id=r.debit_account_id, credit_account_id=r.credit_account_id,
                        amount_minor=r.amount_minor, currency=currency, transfer_id=r.transfer_id)


def drive_ledger(records: Iterable[Record], writer: Any, *, tenant: str = SIM_TENANT, currency: str = "EUR") -> DriveResult:
    """Submits every record in order through the group-commit writer (which keeps submission order)."""
    out = DriveResult()
    t0 = time.perf_counter()
    pending: list[tuple[Record, Future[Any]]] = []

    def settle() -> None:
        for rec, fut in pending:
            result = fut.result()
            if isinstance(result, DomainError):
                out.refused[result.code] = out.refused.get(result.code, 0) + 1
            elif isinstance(rec, SimOpen):
                out.accounts += 1
            else:
                out.transfers += 1
        pending.clear()

    for r in records:
        pending.append((r, writer.submit(command_for(r, tenant, currency))))
        if len(pending) >= IN_FLIGHT_MAX:
            settle()
    settle()
    out.seconds = time.perf_counter() - t0
    return out


def request_for(r: Record, currency: str) -> tuple[str, dict[str, Any]]:
    """The API call for a record, in the banking API's request shapes (SPEC §5)."""
    if isinstance(r, SimOpen):
        return "/v1/accounts", {"id": str(r.account_id), "currency": currency, "metadata": {"role": r.role}}
    if r.kind == DEPOSIT:
        return "/v1/deposits", {"id": str(r.transfer_id), "account_id": str(r.credit_account_id), "amount": r.amount_minor,
                                "currency": currency}
    if r.kind == WITHDRAWAL:
        return "/v1/withdrawals", {"id": str(r.transfer_id), "account_id": str(r.debit_account_id), "amount": r.amount_minor,
                                   "currency": currency}
    return "/v1/transfers", {"id": str(r.transfer_id), "debit_account_id": str(r.debit_account_id),
                             "credit_account_id": str(r.credit_account_id), "amount": r.amount_minor, "currency": currency}


def drive_api(records: Iterable[Record], base_url: str, token: str, *, rate_per_s: float, currency: str = "EUR") -> DriveResult:
    """One request at a time, paced to `rate_per_s`, in record order (later records depend on earlier)."""
    if not 0 < rate_per_s <= RATE_MAX:
        raise ValueError(f"rate must be in (0, {RATE_MAX}]")
    out = DriveResult()
    t0 = time.perf_counter()
    interval = 1.0 / rate_per_s
    next_at = t0
    base = base_url.rstrip("/")
    for r in records:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        path, body = request_for(r, currency)
        req = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310 - operator-given URL
                resp.read()
            if isinstance(r, SimOpen):
                out.accounts += 1
            else:
                out.transfers += 1
        except urllib.error.HTTPError as e:
            try:
                code = json.loads(e.read() or b"{}").get("code", str(e.code))
            except ValueError:
                code = str(e.code)
            out.refused[code] = out.refused.get(code, 0) + 1
    out.seconds = time.perf_counter() - t0
    return out
