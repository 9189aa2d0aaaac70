"""`keel import FILE --tenant T`: historical transactions (CSV or JSON lines, docs/import.md)
through the ledger's own write path, idempotent and resumable (application/importing.py).

The whole file is read and checked before anything is written: a bad row stops the import with
its line number and nothing half-written. Then the rows go to the group-commit writer in time
order; refusals (insufficient funds, an event time out of order) fail their row alone and are
counted. Running the same file again writes nothing new and reports every row as already there.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from typing import Any

from application.importing import (
    COLUMNS,
    IMPORT_LINE_MAX_BYTES,
    IMPORT_ROWS_MAX,
    ImportError_,
    ImportReport,
    Row,
    ordered,
    parse_row,
    run_import,
)

FILE_MAX_BYTES = 2 * 1024**3


def _json_lines(f: io.BufferedReader, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        if len(line) > IMPORT_LINE_MAX_BYTES:
            raise ImportError_(f"{path}:{number}: line longer than {IMPORT_LINE_MAX_BYTES} bytes")
        try:
            value = json.loads(line)
        except ValueError as e:
            raise ImportError_(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise ImportError_(f"{path}:{number}: each line must be a JSON object")
        yield number, value


def _csv_rows(f: io.BufferedReader, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    try:
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "occurred_at", "type", "amount", "currency") if c not in header]
        if missing:
            raise ImportError_(f"{path}: the header lacks {', '.join(missing)} (columns: {', '.join(COLUMNS)})")
        for row in reader:
            if None in row:
                raise ImportError_(f"{path}:{reader.line_num}: more values than columns")
            yield reader.line_num, row
    finally:
        text.detach()  # the file is the caller's to close


def read_rows(path: str) -> list[Row]:
    """Every row of the file, checked and in time order; ImportError_ names the first bad line."""
    with open(path, "rb") as f:
        head = f.peek(64)[:64].lstrip()
        if f.seek(0, 2) > FILE_MAX_BYTES:
            raise ImportError_(f"{path}: larger than {FILE_MAX_BYTES // 1024**3} GiB: split it")
        f.seek(0)
        is_json = path.endswith((".jsonl", ".ndjson", ".json")) or head.startswith(b"{")
        source = _json_lines(f, path) if is_json else _csv_rows(f, path)  # type: ignore[arg-type]
        try:
            rows = ordered(parse_row(raw, number) for number, raw in source)
        except ImportError_ as e:
            text = str(e)
            raise ImportError_(text if text.startswith(path) else f"{path}: {text}") from None
        except UnicodeDecodeError:
            raise ImportError_(f"{path}: not UTF-8 text") from None
        finally:
            source.close()  # while the file is still open
    return rows


def add_import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="load historical transactions (CSV or JSON lines) through the ledger, idempotently",
        description="Loads history in the generic shape of docs/import.md: columns "
        f"{', '.join(COLUMNS)}; at most {IMPORT_ROWS_MAX:,} rows. Every row is checked before anything "
        "is written; then rows go through the ledger's own write path in time order, with their event "
        "time (occurred_at). Running the same file again writes nothing twice (resumable).",
    )
    p.add_argument("file", help="a .csv (with a header row) or .jsonl file")
    p.add_argument("--tenant", required=True, help="the tenant the history belongs to")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_import, uses_store=True)


def import_file(c: Any, path: str, tenant: str, *, quiet: bool = True) -> ImportReport:
    """Reads, checks and imports `path` into the container's ledger as `tenant`."""
    from domain.limits import check_tenant

    check_tenant(tenant)
    rows = read_rows(path)

    def progress(r: ImportReport) -> None:
        if not quiet:
            rate = r.commands / r.seconds if r.seconds else 0.0
            print(f"  {r.commands:,} commands for {len(rows):,} rows: {r.created:,} written, {r.repeated:,} already there, "
                  f"{sum(r.refused.values()):,} refused ({rate:,.0f}/s)", file=sys.stderr)

    from infrastructure.imports import SqlImportProgress

    return run_import(c.writer, rows, tenant, digest=file_digest(path), done=SqlImportProgress(c.store.sql), progress=progress)


def file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_import(args: argparse.Namespace) -> int:
    import os

    from domain.errors import DomainError
    from infrastructure.settings import load_settings
    from keel.bootstrap import build

    c = build(load_settings(os.environ, database_url=getattr(args, "database_url", None)))
    try:
        try:
            report = import_file(c, args.file, args.tenant, quiet=args.quiet or args.json)
        except (ImportError_, DomainError) as e:
            print(f"keel: {getattr(e, 'message', None) or e}", file=sys.stderr)
            return 2
    finally:
        c.close()
    if args.json:
        import msgspec

        print(msgspec.json.encode(report).decode())
        return 0
    refused = sum(report.refused.values())
    if report.skipped:
        print(f"{report.skipped:,} of {report.rows:,} rows were settled by an earlier run of this file: resumed after them")
    print(f"imported {report.rows:,} rows ({report.commands:,} commands) in {report.seconds:.1f} s: {report.created:,} written, "
          f"{report.repeated:,} already there, {refused:,} refused")
    for code, n in sorted(report.refused.items()):
        print(f"  refused {code}: {n:,}")
    for r in report.first_refusals[:5]:
        print(f"    line {r['line']} ({r['id']}): {r['code']}: {r['message']}")
    return 0
