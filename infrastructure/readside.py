"""The read side: plain SQL queries over the read models, for the API and the CLI.

Every query is bounded (page size, time range, number of buckets) and paginates with an opaque
cursor over a unique, stable key, so pages never overlap or skip when rows are added. Every
number a client sends (limits, amounts, times, the keys inside cursors) is range-checked here
too, so nothing out of range ever reaches the database: a ValidationFailed, never an overflow.
Nothing here returns holder personal data (the views never store it), and nothing writes.

Identity: the views are keyed by storage keys (domain/identity.py); callers name one account by
its storage key (the API resolves a client's id inside its tenant first), and every answer shows
public ids, in the fields the API has always used (`id`, `account_id`, `transfer_id`, ...).

Read-your-writes: the ledger's save returns notification ids (positions). A handler that wants
a client to see its own write passes the last position to `wait_for_position(position)`, which
waits (at most WAIT_MAX_S) until the projection has applied it.
"""
from __future__ import annotations

import base64
import binascii
import functools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec

from application.projections import (
    ACCOUNT_COLUMNS,
    DAY_S,
    ENTRY_COLUMNS,
    INTERVALS,
    TRANSFER_COLUMNS,
    VIEWS,
)
from domain.errors import ValidationFailed
from domain.limits import check_tenant
from infrastructure.readmodels import LIVE, Tables, ViewDatabase

PAGE_MAX = 1000
PAGE_DEFAULT = 100
CSV_ROWS_MAX = 10_000
TOP_MAX = 100
BUCKETS_MAX = 10_000
WAIT_MAX_S = 2.0
WAIT_POLL_S = 0.005
CURSOR_CHARS_MAX = 64
# Integers a query may carry (positions, amounts, microseconds): PostgreSQL's and SQLite's
# signed 64-bit range; a larger Python int would fail in the driver (OverflowError).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Cursor key types: an integer (in INT64 range) or a UUID in its canonical text form.
CursorKey = type[int] | type[UUID]


def _iso(us: int) -> str:
    """RFC 3339 in UTC, as `datetime.isoformat` writes it (microseconds only when not zero), from
    integer microseconds without a float (exact), the date and time of its second cached: a page
    of history formats 2 per row (issue #16)."""
    s, frac = divmod(us, 1_000_000)
    return f"{_iso_second(s)}.{frac:06d}Z" if frac else f"{_iso_second(s)}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(s: int) -> str:
    return datetime.fromtimestamp(s, tz=timezone.utc).isoformat().removesuffix("+00:00")


def _iso_s(s: int) -> str:
    return datetime.fromtimestamp(s, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(["v1", *key])).decode().rstrip("=")


def _cursor_key(value: Any, kind: CursorKey) -> Any:
    """One key of a decoded cursor, checked like any client input; None if it is not one."""
    if kind is int:
        return value if type(value) is int and INT64_MIN <= value <= INT64_MAX else None
    if kind is UUID and type(value) is str and len(value) == 36:
        try:
            canonical = str(UUID(value))
        except ValueError:
            return None
        return value if canonical == value else None
    return None


def decode_cursor(cursor: str | None, types: tuple[CursorKey, ...]) -> tuple[Any, ...] | None:
    """The key inside a cursor made by encode_cursor; a ValidationFailed for anything else
    (integers outside the signed 64-bit range, and UUIDs not in canonical form, included)."""
    if cursor is None:
        return None
    if len(cursor) > CURSOR_CHARS_MAX:
        raise ValidationFailed("cursor is not valid (too long)", field="cursor")
    try:
        raw = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed("cursor is not valid", field="cursor") from None
    if not isinstance(raw, list) or len(raw) != len(types) + 1 or raw[0] != "v1":
        raise ValidationFailed("cursor is not valid", field="cursor")
    key = tuple(_cursor_key(v, t) for v, t in zip(raw[1:], types, strict=True))
    if any(k is None for k in key):
        raise ValidationFailed("cursor is not valid", field="cursor")
    return key


def check_limit(limit: int | None, default: int = PAGE_DEFAULT, maximum: int = PAGE_MAX) -> int:
    if limit is None:
        return default
    if type(limit) is not int or not 1 <= limit <= maximum:
        raise ValidationFailed(f"limit must be 1..{maximum}", field="limit", limit=str(limit)[:40])
    return limit


def check_int(value: int | None, name: str, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int | None:
    """An optional integer filter, within `minimum..maximum` (default: signed 64-bit)."""
    if value is None:
        return None
    if type(value) is not int or not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be an integer in {minimum}..{maximum}", field=name)
    return value


def to_us(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise ValidationFailed("times must carry a UTC offset (RFC 3339)")
    d = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def _check_range(from_us: int | None, to_us_: int | None) -> None:
    check_int(from_us, "from")
    check_int(to_us_, "to")
    if from_us is not None and to_us_ is not None and from_us > to_us_:
        raise ValidationFailed("'from' must not be after 'to'")


class Page(msgspec.Struct, frozen=True):
    items: list[dict[str, Any]]
    next_cursor: str | None


def account_view(row: tuple[Any, ...]) -> dict[str, Any]:
    r = dict(zip(ACCOUNT_COLUMNS, row, strict=True))
    return {
        "id": r["public_id"],
        "tenant": r["tenant"],
        "currency": r["currency"],
        "kind": r["kind"],
        "status": r["status"],
        "overdraft_limit": r["overdraft_limit_minor"],
        "posted": r["posted_minor"],
        "pending_debits": r["pending_debits_minor"],
        "pending_credits": r["pending_credits_minor"],
        "available": r["posted_minor"] - r["pending_debits_minor"] + r["overdraft_limit_minor"],
        "opened_at": _iso(r["opened_at_us"]),
    }


# What a history page shows of an entry, in this order (the storage keys are not read: three
# UUIDs a row the driver would build for nothing).
HISTORY_COLUMNS = (
    "position", "tenant", "transfer_public_id", "account_public_id", "counterparty_public_id", "direction",
    "amount_minor", "currency", "kind", "status", "reference", "at_us", "occurred_at_us",
)  # fmt: skip
assert set(HISTORY_COLUMNS) <= set(ENTRY_COLUMNS)
_ENTRY_TENANT = HISTORY_COLUMNS.index("tenant")


def entry_view(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of HISTORY_COLUMNS as the API shows it."""
    (position, _, transfer, account, counterparty, direction, amount, currency, kind, status, reference, at_us,
     occurred_us) = row
    return {
        "transfer_id": transfer,
        "account_id": account,
        "counterparty_id": counterparty,
        "direction": direction,
        "amount": amount,
        "currency": currency,
        "kind": kind,
        "status": status,
        "reference": reference,
        "timestamp": _iso(at_us),
        "occurred_at": _iso(occurred_us),
        "position": position,
    }


def transfer_view(row: tuple[Any, ...]) -> dict[str, Any]:
    r = dict(zip(TRANSFER_COLUMNS, row, strict=True))
    return {
        "id": r["public_id"],
        "tenant": r["tenant"],
        "kind": r["kind"],
        "debit_account_id": r["debit_public_id"],
        "credit_account_id": r["credit_public_id"],
        "amount": r["amount_minor"],
        "posted_amount": r["posted_amount_minor"],
        "currency": r["currency"],
        "status": r["status"],
        "reference": r["reference"],
        "reverses_id": r["reverses_public_id"],
        "reversed_by_id": r["reversed_by_public_id"],
        "timestamp": _iso(r["at_us"]),
        "occurred_at": _iso(r["occurred_at_us"]),
        "position": r["position"],
    }


# The two times of a transfer (bitemporal): when it was recorded, and when it happened.
TIME_COLUMNS = {"recorded": "at_us", "occurred": "occurred_at_us"}

TRANSFER_CSV_FIELDS = (
    "id", "timestamp", "occurred_at", "position", "tenant", "kind", "status", "currency", "amount", "posted_amount",
    "debit_account_id", "credit_account_id", "reference", "reverses_id", "reversed_by_id",
)  # fmt: skip


class ReadSide:
    """Queries over the live views. `head()`, `event_time_after()` and `last_position()` read
    the event log."""

    def __init__(
        self,
        db: ViewDatabase,
        head: Callable[[], int | None],
        event_time_after: Callable[[int], datetime | None],
        last_position: Callable[[UUID], int],
    ) -> None:
        self.db = db
        self.t = Tables(db, LIVE)
        self._head = head
        self._event_time_after = event_time_after
        self._last_position = last_position
        self._poll_lock = threading.Lock()
        self._polled = 0
        self._polled_at = float("-inf")

    # ---- tracking -----------------------------------------------------------------------

    def position(self) -> int:
        row = self.db.fetchone(*self.position_statement())
        return int(row[0]) if row else 0

    def _polled_position(self) -> int:
        """position(), read at most once per WAIT_POLL_S for all the requests waiting in this
        process (each waiter polled on its own: 64 waiting reads made 12,800 queries/s)."""
        with self._poll_lock:
            if time.monotonic() - self._polled_at < WAIT_POLL_S:
                return self._polled
        position = self.position()
        with self._poll_lock:
            self._polled, self._polled_at = position, time.monotonic()
        return position

    def wait_for_position(self, position: int, timeout_s: float = WAIT_MAX_S) -> bool:
        """True once the views include `position`; False after `timeout_s` (capped at WAIT_MAX_S)."""
        deadline = time.monotonic() + min(max(timeout_s, 0.0), WAIT_MAX_S)
        while True:
            if self._polled_position() >= position:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_S)

    def wait_for_aggregate(self, aggregate_id: UUID, timeout_s: float = WAIT_MAX_S, last: int | None = None) -> bool:
        """`wait_for_position` for every write that touched one aggregate (an account's history
        needs no more): waiting for the whole log's head instead made every history read wait
        for the projection whenever anything at all was being written. `last`: its latest
        position, when the caller already knows it as of its request (else it is read)."""
        return self.wait_for_position(self._last_position(aggregate_id) if last is None else last, timeout_s)

    def projections(self) -> dict[str, Any]:
        head = self._head() or 0
        position = self.position()
        lag_ms = 0
        if head > position:
            oldest = self._event_time_after(position)
            if oldest is not None:
                lag_ms = max(0, int((datetime.now(tz=timezone.utc) - oldest).total_seconds() * 1000))
        return {
            "head": head,
            "projections": [
                {"name": VIEWS, "position": position, "lag_events": max(0, head - position), "lag_ms": lag_ms}
            ],
        }

    # ---- banking: one account's history ----------------------------------------------------

    def account_tenant(self, account_key: str) -> str | None:
        """The tenant of the account stored at `account_key`, None if the view does not hold it."""
        row = self.db.fetchone(f"SELECT tenant FROM {self.t.accounts} WHERE account_id = %s", (account_key,))
        return row[0] if row else None

    def account_transactions(self, account_key: str, cursor: str | None, limit: int | None) -> Page:
        """Legs of the account stored at `account_key`, newest first; the cursor is the last
        position returned."""
        return self.account_history(account_key, cursor, limit)[1]

    def account_history(self, account_key: str, cursor: str | None, limit: int | None) -> tuple[str | None, Page]:
        """(the account's tenant, None if the view does not hold it; a page of its legs). One
        statement when the page has legs (each carries the tenant), two when it is empty."""
        sql, params, n = self.history_statement(account_key, cursor, limit)
        found = self.history_page(self.db.fetchall(sql, params), n)
        return found if found is not None else (self.account_tenant(account_key), Page([], None))

    def history_statement(self, account_key: str, cursor: str | None, limit: int | None) -> tuple[str, list[Any], int]:
        """The one statement of a history page: (SQL, parameters, page size); for `history_page`.
        Shared with the API's event-loop reader (PostgreSQL placeholders)."""
        n = check_limit(limit)
        key = decode_cursor(cursor, (int,))
        sql = f"SELECT {', '.join(HISTORY_COLUMNS)} FROM {self.t.entries} WHERE account_id = %s"
        params: list[Any] = [account_key]
        if key is not None:
            sql += " AND position < %s"
            params.append(key[0])
        sql += " ORDER BY position DESC LIMIT %s"
        params.append(n + 1)
        return sql, params, n

    @staticmethod
    def history_page(rows: list[tuple[Any, ...]], n: int) -> tuple[str, Page] | None:
        """(the tenant the legs carry, the page) from `history_statement`'s rows; None when there
        are none (the account's tenant is then asked of the accounts view)."""
        if not rows:
            return None
        more = len(rows) > n
        rows = rows[:n]
        return rows[0][_ENTRY_TENANT], Page([entry_view(r) for r in rows], encode_cursor(rows[-1][0]) if more else None)

    def position_statement(self) -> tuple[str, tuple[Any, ...]]:
        """The statement `position()` runs (for the API's event-loop reader)."""
        return f"SELECT position FROM {self.t.tracking} WHERE name = %s", (VIEWS,)

    # ---- analytics ------------------------------------------------------------------------

    def balances(self, currency: str | None, cursor: str | None, limit: int | None) -> dict[str, Any]:
        n = check_limit(limit)
        key = decode_cursor(cursor, (UUID,))  # an account's storage key
        where, params = ("WHERE currency = %s", [currency]) if currency else ("", [])
        totals = self.db.fetchall(
            f"SELECT currency, kind, COUNT(*), SUM(posted_minor), SUM(pending_debits_minor), SUM(pending_credits_minor)"
            f" FROM {self.t.accounts} {where} GROUP BY currency, kind ORDER BY currency, kind",
            params,
        )
        sql = f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM {self.t.accounts}"
        conds, args = ([], [])
        if currency:
            conds.append("currency = %s")
            args.append(currency)
        if key is not None:
            conds.append("account_id > %s")
            args.append(key[0])
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY account_id LIMIT %s"
        args.append(n + 1)
        rows = self.db.fetchall(sql, args)
        more = len(rows) > n
        rows = rows[:n]
        return {
            "totals": [
                {
                    "currency": c, "kind": k, "accounts": int(cnt), "posted": int(p),
                    "pending_debits": int(pd), "pending_credits": int(pc),
                }
                for c, k, cnt, p, pd, pc in totals
            ],
            "accounts": [account_view(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1][0]) if more else None,
        }  # fmt: skip

    def volumes(self, currency: str | None, interval: str, from_us: int | None, to_us_: int | None) -> list[dict[str, Any]]:
        if interval not in INTERVALS:
            raise ValidationFailed("interval must be hour or day", interval=interval)
        _check_range(from_us, to_us_)
        sql = f"SELECT bucket_s, currency, amount_minor, count FROM {self.t.volumes} WHERE period = %s"
        params: list[Any] = [interval]
        if currency:
            sql += " AND currency = %s"
            params.append(currency)
        if from_us is not None:
            # The bucket that contains `from` is included.
            sql += " AND bucket_s >= %s"
            params.append(from_us // 1_000_000 // INTERVALS[interval] * INTERVALS[interval])
        if to_us_ is not None:
            sql += " AND bucket_s < %s"
            params.append(-(-to_us_ // 1_000_000))
        sql += " ORDER BY bucket_s, currency LIMIT %s"
        params.append(BUCKETS_MAX + 1)
        rows = self.db.fetchall(sql, params)
        if len(rows) > BUCKETS_MAX:
            raise ValidationFailed(f"more than {BUCKETS_MAX} buckets: narrow the range or use a wider interval")
        return [
            {"bucket_start": _iso_s(b), "currency": c, "amount": int(a), "count": int(k)} for b, c, a, k in rows
        ]

    def transactions(
        self,
        *,
        account: str | None,
        tenant: str | None = None,
        min_amount: int | None,
        max_amount: int | None,
        from_us: int | None,
        to_us_: int | None,
        cursor: str | None,
        limit: int | None,
        maximum: int = PAGE_MAX,
        time: str = "recorded",
    ) -> Page:
        """Transfers in log order (oldest first); the cursor is the last position returned.

        `from_us`/`to_us_` bound the recording time (`time="recorded"`) or the event time
        (`time="occurred"`: when it happened, as the client said for imported history).

        `account` is a public id (an analyst's filter, across tenants): the transfers of every
        account with that public id, or only of the one in `tenant` when it is given. `tenant`
        alone keeps that tenant's transfers."""
        n = check_limit(limit, maximum=maximum)
        _check_range(from_us, to_us_)
        if time not in TIME_COLUMNS:
            raise ValidationFailed(f"time must be one of {', '.join(TIME_COLUMNS)}", field="time")
        time_column = TIME_COLUMNS[time]
        check_int(min_amount, "min_amount", 0)
        check_int(max_amount, "max_amount", 0)
        if min_amount is not None and max_amount is not None and min_amount > max_amount:
            raise ValidationFailed("min_amount must not exceed max_amount")
        key = decode_cursor(cursor, (int,))
        if tenant is not None:
            check_tenant(tenant)
        conds: list[str] = []
        params: list[Any] = []
        if account is not None:
            try:
                public_id = str(UUID(account))
            except (TypeError, ValueError):
                raise ValidationFailed("account must be a UUID", field="account") from None
            # The account's storage keys by its public id (index on accounts), then its legs by
            # the entries' primary key.
            in_tenant = " AND tenant = %s" if tenant is not None else ""
            conds.append(
                f"position IN (SELECT position FROM {self.t.entries} WHERE account_id IN"
                f" (SELECT account_id FROM {self.t.accounts} WHERE public_id = %s{in_tenant}))"
            )
            params.extend([public_id, tenant] if tenant is not None else [public_id])
        elif tenant is not None:
            conds.append("tenant = %s")
            params.append(tenant)
        for cond, value in (
            ("amount_minor >= %s", min_amount),
            ("amount_minor <= %s", max_amount),
            (f"{time_column} >= %s", from_us),
            (f"{time_column} < %s", to_us_),
            ("position > %s", key[0] if key else None),
        ):
            if value is not None:
                conds.append(cond)
                params.append(value)
        sql = f"SELECT {', '.join(TRANSFER_COLUMNS)} FROM {self.t.transfers}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY position LIMIT %s"
        params.append(n + 1)
        rows = self.db.fetchall(sql, params)
        more = len(rows) > n
        rows = rows[:n]
        return Page([transfer_view(r) for r in rows], encode_cursor(rows[-1][1]) if more else None)

    def top_accounts(self, by: str, from_us: int | None, to_us_: int | None, limit: int | None) -> list[dict[str, Any]]:
        if by not in ("inflow", "outflow"):
            raise ValidationFailed("by must be inflow or outflow", by=by)
        n = check_limit(limit, default=10, maximum=TOP_MAX)
        _check_range(from_us, to_us_)
        conds, params = [], []
        if from_us is not None:
            conds.append("f.day_s >= %s")
            params.append(from_us // 1_000_000 // DAY_S * DAY_S)
        if to_us_ is not None:
            conds.append("f.day_s < %s")
            params.append(-(-to_us_ // 1_000_000))
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        column = f"{by}_minor"
        rows = self.db.fetchall(
            f"SELECT a.public_id, a.tenant, a.currency, a.kind, SUM(f.{column}) AS total, SUM(f.{by}_count)"
            f" FROM {self.t.flows} f JOIN {self.t.accounts} a ON a.account_id = f.account_id {where}"
            f" GROUP BY f.account_id, a.public_id, a.tenant, a.currency, a.kind HAVING SUM(f.{column}) > 0"
            f" ORDER BY total DESC, f.account_id LIMIT %s",
            [*params, n],
        )
        return [
            {"account_id": a, "tenant": t, "currency": c, "kind": k, by: int(total), "count": int(cnt)}
            for a, t, c, k, total, cnt in rows
        ]
