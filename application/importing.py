"""Importing history (issue #15): rows of one generic, documented shape (docs/import.md) turned into
the ledger's own commands, so history goes through the same write path as live traffic.

A row is one money movement, or the opening of an account with its opening balance:

    id, occurred_at, type (transfer | deposit | withdrawal | open), from, to, amount, currency,
    label (optional), pattern (optional)

Ids are the client's: a UUID is used as it is, any other id (1..64 printable characters) is mapped
to a UUID by name (`imported_id`), so importing the same file again names the same accounts and
transfers and the ledger answers each row as a repeat: the import is idempotent, and resumable by
running it again. Accounts are opened at their `open` row, else at the first row that names them,
in that row's currency. Rows are put in time order (stable) before anything is written.

Parsing never writes; the caller (keel/import_cli.py) parses the whole file first, so a file with
a bad row writes nothing, then submits the commands in order and counts the outcomes.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

import msgspec

from application.commands import Deposit, MakeTransfer, OpenAccount, Withdraw
from domain.errors import DomainError
from domain.limits import REFERENCE_MAX_CHARS
from domain.money import check_currency

IMPORT_ROWS_MAX = 2_000_000  # rows in one file: they are sorted in memory (≈ 0.5 KiB each)
IMPORT_LINE_MAX_BYTES = 4096
IMPORT_ID_MAX_CHARS = 64
AMOUNT_MAX_MINOR = 10**15  # beyond any single movement a bank imports; the ledger bounds balances too
# Names the UUIDs of ids that are not UUIDs: uuid5(IMPORTED_NAMESPACE, "<kind>:<id>").
IMPORTED_NAMESPACE = UUID("6b65656c-1a90-5000-8000-000000000001")
TYPES = ("transfer", "deposit", "withdrawal", "open")
FRAUD_LABELS = {"1": 1, "true": 1, "fraud": 1, "0": 0, "false": 0, "legit": 0, "": None}
COLUMNS = ("id", "occurred_at", "type", "from", "to", "amount", "currency", "label", "pattern")

Command = OpenAccount | MakeTransfer | Deposit | Withdraw


class ImportError_(ValueError):
    """A row that cannot be imported, with its line number: nothing has been written."""


class Row(msgspec.Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    id: str
    occurred_at: datetime
    type: Literal["transfer", "deposit", "withdrawal", "open"]
    amount: int
    currency: str
    from_: str | None = None
    to: str | None = None
    label: int | None = None
    pattern: str | None = None
    line: int = 0


def imported_id(kind: str, raw: str) -> UUID:
    """The UUID of a client's id: itself if it is one, else named from it (deterministic)."""
    try:
        return UUID(raw)
    except ValueError:
        return uuid.uuid5(IMPORTED_NAMESPACE, f"{kind}:{raw}")


def _text_id(value: Any, name: str, line: int) -> str | None:
    if value is None or value == "":
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not 1 <= len(text) <= IMPORT_ID_MAX_CHARS or not text.isprintable():
        raise ImportError_(f"line {line}: {name} must be 1..{IMPORT_ID_MAX_CHARS} printable characters")
    return text.strip()


def parse_row(raw: Mapping[str, Any], line: int) -> Row:
    """One row of a CSV (all strings) or JSON-lines file, checked; ImportError_ names the line."""
    unknown = set(raw) - set(COLUMNS)
    if unknown:
        raise ImportError_(f"line {line}: unknown column(s) {', '.join(sorted(map(str, unknown)))}; the columns are {', '.join(COLUMNS)}")
    values = {k: v for k, v in raw.items() if v is not None and v != ""}
    label = values.pop("label", None)
    if label is not None:
        key = str(label).strip().lower() if not isinstance(label, bool) else str(label).lower()
        if key not in FRAUD_LABELS:
            raise ImportError_(f"line {line}: label must be one of 1, 0, true, false, fraud, legit")
        values["label"] = FRAUD_LABELS[key]
    amount = values.get("amount")
    if isinstance(amount, float) or (isinstance(amount, str) and not amount.strip().lstrip("-").isdigit()):
        raise ImportError_(f"line {line}: amount must be an integer number of minor units (e.g. 1050 for 10.50)")
    for name in ("id", "from", "to"):
        if name in values:
            values[name] = _text_id(values[name], name, line)
    try:
        row = msgspec.convert({**values, "line": line}, type=Row, strict=False)
    except msgspec.ValidationError as e:
        raise ImportError_(f"line {line}: {str(e).replace('`$.', '`')}") from None
    if row.occurred_at.tzinfo is None:
        raise ImportError_(f"line {line}: occurred_at needs a UTC offset (RFC 3339, e.g. 2026-03-01T09:30:00Z)")
    low = 0 if row.type == "open" else 1
    if not low <= row.amount <= AMOUNT_MAX_MINOR:
        raise ImportError_(f"line {line}: amount must be {low}..{AMOUNT_MAX_MINOR} minor units")
    try:
        check_currency(row.currency)
    except DomainError as e:
        raise ImportError_(f"line {line}: {e.message}") from None
    needs = {"transfer": ("from_", "to"), "deposit": ("to",), "withdrawal": ("from_",), "open": ("to",)}[row.type]
    for name in needs:
        if getattr(row, name) is None:
            raise ImportError_(f"line {line}: a {row.type} row needs `{name.rstrip('_')}`")
    if row.type == "transfer" and row.from_ == row.to:
        raise ImportError_(f"line {line}: from and to are the same account")
    return row


def ordered(rows: Iterable[Row]) -> list[Row]:
    """In time order; rows of the same instant keep their file order; at most IMPORT_ROWS_MAX."""
    out: list[Row] = []
    for row in rows:
        out.append(row)
        if len(out) > IMPORT_ROWS_MAX:
            raise ImportError_(f"more than {IMPORT_ROWS_MAX} rows: split the file (each part in time order)")
    out.sort(key=lambda r: r.occurred_at)
    return out


def transfer_public_id(row: Row) -> UUID:
    return imported_id("opening" if row.type == "open" else "transfer", row.id)


def commands(rows: Iterable[Row], tenant: str) -> Iterator[tuple[int, Row, Command]]:
    """The ledger commands of rows in time order, each account opened before its first movement,
    with the index of the row each belongs to."""
    opened: set[str] = set()  # client account ids

    def open_if_new(account: str, row: Row) -> Iterator[tuple[int, Row, Command]]:
        # Opened once, in the currency of its first row; a later row in another currency is
        # refused by the ledger (currency_mismatch) and counted, never guessed around.
        if account not in opened:
            opened.add(account)
            yield index, row, OpenAccount(tenant=tenant, currency=row.currency, account_id=imported_id("account", account),
                                          occurred_at=row.occurred_at)  # fmt: skip

    for index, row in enumerate(rows):
        reference = row.id[:REFERENCE_MAX_CHARS]
        tid = transfer_public_id(row)
        if row.type == "open":
            assert row.to is not None
            yield from open_if_new(row.to, row)
            if row.amount:
                yield index, row, Deposit(tenant=tenant, account_id=imported_id("account", row.to), amount_minor=row.amount,
                                   currency=row.currency, transfer_id=tid, reference=reference, occurred_at=row.occurred_at)  # fmt: skip
        elif row.type == "deposit":
            assert row.to is not None
            yield from open_if_new(row.to, row)
            yield index, row, Deposit(tenant=tenant, account_id=imported_id("account", row.to), amount_minor=row.amount,
                               currency=row.currency, transfer_id=tid, reference=reference, occurred_at=row.occurred_at)  # fmt: skip
        elif row.type == "withdrawal":
            assert row.from_ is not None
            yield from open_if_new(row.from_, row)
            yield index, row, Withdraw(tenant=tenant, account_id=imported_id("account", row.from_), amount_minor=row.amount,
                                currency=row.currency, transfer_id=tid, reference=reference, occurred_at=row.occurred_at)  # fmt: skip
        else:
            assert row.from_ is not None and row.to is not None
            yield from open_if_new(row.from_, row)
            yield from open_if_new(row.to, row)
            yield index, row, MakeTransfer(tenant=tenant, debit_account_id=imported_id("account", row.from_),
                                    credit_account_id=imported_id("account", row.to), amount_minor=row.amount,
                                    currency=row.currency, transfer_id=tid, reference=reference,
                                    occurred_at=row.occurred_at)  # fmt: skip


class ImportReport(msgspec.Struct, kw_only=True):
    rows: int = 0
    skipped: int = 0  # rows an earlier run of the same file settled: not submitted again
    commands: int = 0
    created: int = 0  # accounts opened and movements recorded by this run
    repeated: int = 0  # already there (the same id earlier in the file, or from elsewhere): nothing written
    refused: dict[str, int] = msgspec.field(default_factory=dict)  # by error code
    first_refusals: list[dict[str, Any]] = msgspec.field(default_factory=list)  # line, id, code, message
    seconds: float = 0.0


class ImportProgress(Protocol):
    """How many rows of a file (by digest) have settled for a tenant (infrastructure/imports.py)."""

    def get(self, tenant: str, digest: str) -> tuple[int, str] | None: ...

    def save(self, tenant: str, digest: str, rows_total: int, rows_done: int, report: str) -> None: ...


FIRST_REFUSALS_MAX = 20
IN_FLIGHT_MAX = 4000  # commands queued at the writer at once (group commits of up to its batch size)


def run_import(writer: Any, rows: list[Row], tenant: str, *, digest: str, done: ImportProgress,
               progress: Any = None) -> ImportReport:  # fmt: skip
    """Submits the rows' commands to the group-commit writer in order, at most IN_FLIGHT_MAX at a
    time (the writer commits them in order, in batches), and counts each outcome. A refusal
    (insufficient funds, an event time out of order, ...) fails its row alone; the ledger records
    refused debits as facts (Account.DebitRefused), so the fraud module sees them as it would live.

    Resumable: how many rows have settled is saved (`done`, per tenant and file digest) as it
    goes; a run of the same file starts after them, so a refused row is never re-tried against a
    later balance and a finished file writes nothing. (A crash between a commit and the save
    re-submits at most IN_FLIGHT_MAX commands: written ones answer as repeats.)
    `progress(report)` is called every IN_FLIGHT_MAX // 2 commands."""
    import time
    from collections import deque
    from concurrent.futures import Future

    saved = done.get(tenant, digest)
    start = saved[0] if saved is not None else 0
    report = ImportReport(rows=len(rows), skipped=start)
    t0 = time.perf_counter()
    pending: deque[tuple[int, Row, Future[Any]]] = deque()
    settled_rows = start

    def settle(index: int, row: Row, future: Future[Any]) -> None:
        nonlocal settled_rows
        outcome = future.result(timeout=120)
        if isinstance(outcome, DomainError):
            report.refused[outcome.code] = report.refused.get(outcome.code, 0) + 1
            if len(report.first_refusals) < FIRST_REFUSALS_MAX:
                report.first_refusals.append({"line": row.line, "id": row.id, "code": outcome.code, "message": outcome.message})
        elif getattr(outcome, "created", False):
            report.created += 1
        else:
            report.repeated += 1
        settled_rows = index  # every row before this one has settled (commands go in row order)

    def save(rows_done: int) -> None:
        report.seconds = time.perf_counter() - t0
        done.save(tenant, digest, len(rows), rows_done, msgspec.json.encode(report).decode())

    for index, row, command in commands(rows, tenant):
        if index < start:
            continue
        pending.append((index, row, writer.submit(command)))
        report.commands += 1
        if len(pending) >= IN_FLIGHT_MAX:
            while len(pending) > IN_FLIGHT_MAX // 2:
                settle(*pending.popleft())
            save(settled_rows)
            if progress is not None:
                progress(report)
    while pending:
        settle(*pending.popleft())
    save(len(rows))
    return report
