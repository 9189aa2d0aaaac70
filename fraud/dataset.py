"""The simulator's labelled records as data: the record types, the domain events the ledger would
record for them (`ledger_events`), their labels, and the JSON-lines dataset file format.

It never generates activity (fraud/simulate.py does) and never decides a score: labels are joined
to features only by transfer id, after the features were computed from the events alone.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from domain.account import CUSTOMER, SETTLEMENT, Account
from domain.identity import account_key, settlement_key, settlement_public_id, transfer_key
from domain.transfer import Transfer

SIM_TENANT = "sim"  # the tenant simulated activity is recorded in (ledger_events, keel simulate --ledger)


class SimOpen(msgspec.Struct, frozen=True, tag="open"):
    at: datetime
    account_id: UUID
    role: str


class SimTransfer(msgspec.Struct, frozen=True, tag="transfer"):
    at: datetime
    transfer_id: UUID
    kind: str  # transfer | deposit | withdrawal (as the ledger records it)
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    label: int  # 1 = fraud
    pattern: str  # "" for legitimate activity


Record = SimOpen | SimTransfer


def labels(records: Iterable[Record]) -> dict[UUID, tuple[int, str]]:
    """(label, pattern) by *public* transfer id; the log keys a transfer by its storage key,
    `transfer_key(tenant, public id)` (see fraud.training.training_set)."""
    return {r.transfer_id: (r.label, r.pattern) for r in records if isinstance(r, SimTransfer)}


def ledger_events(records: Iterable[Record], tenant: str = SIM_TENANT, currency: str = "EUR") -> Iterator[Any]:
    """The domain events the ledger would record for `records`, stamped with simulated time.

    Only the events the feature extractor reads are produced (Account.Opened, Transfer.Initiated);
    the balance events of the accounts carry nothing those two do not.
    """
    settlement = settlement_key(tenant, currency)
    first = True
    for r in records:
        if first:
            first = False
            yield Account.Opened(
                originator_id=settlement, originator_version=1, timestamp=r.at, originator_topic="",
                tenant=tenant, public_id=settlement_public_id(currency), currency=currency, kind=SETTLEMENT, overdraft_limit_minor=0, holder=None, metadata={},
            )
        if isinstance(r, SimOpen):
            yield Account.Opened(
                originator_id=account_key(tenant, r.account_id), originator_version=1, timestamp=r.at, originator_topic="",
                tenant=tenant, public_id=r.account_id, currency=currency, kind=CUSTOMER, overdraft_limit_minor=0, holder=None, metadata={},
            )
        else:
            yield Transfer.Initiated(
                originator_id=transfer_key(tenant, r.transfer_id), originator_version=1, timestamp=r.at,
                originator_topic="", tenant=tenant, public_id=r.transfer_id, kind=r.kind,
                debit_account_id=account_key(tenant, r.debit_account_id), credit_account_id=account_key(tenant, r.credit_account_id),
                debit_public_id=r.debit_account_id, credit_public_id=r.credit_account_id,
                amount_minor=r.amount_minor, currency=currency, reference=None, metadata={}, pending=False,
                timeout_s=None, reverses_id=None, reverses_public_id=None,
            )


# ---- files ----------------------------------------------------------------------------------
# `keel simulate --out` writes the generic import shape (application/importing.py, docs/import.md),
# which `keel import` loads and `keel fraud evaluate --dataset` evaluates: one format for any
# labelled history, the simulator's or a bank's.

_encoder = msgspec.json.Encoder()
GENERIC_COLUMNS = ("id", "occurred_at", "type", "from", "to", "amount", "currency", "label", "pattern")


def generic_rows(records: Iterable[Record], currency: str = "EUR") -> Iterator[dict[str, Any]]:
    """The records as rows of the generic import shape; accounts as `open` rows (no balance)."""
    for r in records:
        at = r.at.isoformat().replace("+00:00", "Z")
        if isinstance(r, SimOpen):
            yield {"id": f"open-{r.account_id}", "occurred_at": at, "type": "open", "from": "", "to": str(r.account_id),
                   "amount": 0, "currency": currency, "label": "", "pattern": ""}
            continue
        yield {"id": str(r.transfer_id), "occurred_at": at, "type": r.kind,
               "from": "" if r.kind == "deposit" else str(r.debit_account_id),
               "to": "" if r.kind == "withdrawal" else str(r.credit_account_id),
               "amount": r.amount_minor, "currency": currency, "label": r.label, "pattern": r.pattern}


def write_dataset(records: Iterable[Record], path: str) -> int:
    """Writes the generic shape: CSV (with a header) when `path` ends in .csv, else JSON lines.
    Returns the number of rows."""
    import csv

    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, GENERIC_COLUMNS) if path.endswith(".csv") else None
        if writer is not None:
            writer.writeheader()
        for row in generic_rows(records):
            if writer is not None:
                writer.writerow(row)
            else:
                f.write(_encoder.encode({k: v for k, v in row.items() if v != ""}).decode() + "\n")
            n += 1
    return n


def summary(records: list[Record]) -> dict[str, int]:
    out: dict[str, int] = {"accounts": 0, "transfers": 0, "fraud": 0}
    for r in records:
        if isinstance(r, SimOpen):
            out["accounts"] += 1
        else:
            out["transfers"] += 1
            if r.label:
                out["fraud"] += 1
                out[r.pattern] = out.get(r.pattern, 0) + 1
    return out
