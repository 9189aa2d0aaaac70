"""The projection writer on PostgreSQL: one batch of view changes and the tracking row in one
transaction, in as few round trips as the batch allows (see PostgresViewTx). It never writes
anything but view rows and their tracking position.
"""
from __future__ import annotations

from typing import Any

from application.projections import VIEWS, Changes
from application.view_follower import PositionMoved
from infrastructure.readmodels import Tables, ViewTx, cols as _cols, transfer_update as _transfer_update
from infrastructure.schema import TYPES

# Session-local staging tables for set-based updates (emptied at every commit).
_PG_STAGING = {
    "keel_rm_deltas": "(id text, dp bigint, dpd bigint, dpc bigint)",
    "keel_rm_status": "(id text, s text)",
    "keel_rm_tupd": "(id text, s text, p bigint, r text, rp text)",
    "keel_rm_volumes": "(period text, bucket_s bigint, currency text, amount_minor bigint, count bigint)",
    "keel_rm_flows": "(account_id text, day_s bigint, inflow_minor bigint, outflow_minor bigint,"
    " inflow_count bigint, outflow_count bigint)",
}


# Up to this many rows a batch goes in ONE statement (live following: a round trip costs more
# than the work); larger batches (replays) go by COPY.
ONE_STATEMENT_ROWS_MAX = 8000
# Views are derived data: a crash may lose the last few view commits, but never rows without
# their tracking position (one atomic commit, applied in WAL order), and the worker then simply
# re-applies them. Not waiting for the WAL flush keeps the lag low.
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
# Arrays go as binary parameters (`%b`): text arrays made psycopg quote-check every element with
# a regular expression, a quarter of the projection worker's CPU (issue #16).


class PostgresViewTx(ViewTx):
    """Small batches: one statement of data-modifying CTEs over `unnest` arrays, guarded by the
    tracking update. Large batches: rows by COPY (formatted in C), one statement per table."""

    # Reads the log on the view transaction's own connection (fewer round trips).
    reads_in_transaction = True

    def __init__(self, cur: Any, t: Tables, one_statement_rows_max: int | None = None) -> None:
        super().__init__(cur, t)
        # -1: always by COPY (tests use it to exercise both ways on small histories).
        self.one_statement_rows_max = ONE_STATEMENT_ROWS_MAX if one_statement_rows_max is None else one_statement_rows_max
        self._advance: tuple[int, int] | None = None

    def advance(self, expected: int, position: int) -> None:
        """Takes effect with `write()`, as its first step (a second runner stops there)."""
        assert position > expected, f"tracking must move forward: {expected} -> {position}"
        self._advance = (expected, position)

    def _advance_now(self) -> None:
        assert self._advance is not None, "advance() must come before write()"
        expected, position = self._advance
        self._advance = None
        self.cur.execute(
            f"UPDATE {self.t.tracking} SET position = %s WHERE name = %s AND position = %s", (position, VIEWS, expected)
        )
        if self.cur.rowcount != 1:
            raise PositionMoved(f"expected tracking at {expected}")

    def _one_statement(self, ch: Changes) -> None:
        assert self._advance is not None, "advance() must come before write()"
        expected, position = self._advance
        self._advance = None
        t = self.t
        ctes = [
            "cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v)",
            f"adv AS (UPDATE {t.tracking} SET position = %s WHERE name = %s AND position = %s RETURNING 1)",
        ]
        params: list[Any] = [position, VIEWS, expected]
        guard = "EXISTS (SELECT 1 FROM adv)"

        def insert(name: str, table: str, rows: list[Any], conflict: str = "") -> None:
            if rows:
                arrays = ", ".join(f"%b::{ty}[]" for ty in TYPES[table])
                ctes.append(
                    f"{name} AS (INSERT INTO {t.name(table)} ({_cols(table)}) SELECT * FROM unnest({arrays}) WHERE {guard}"
                    f" {conflict})"
                )
                params.extend(list(c) for c in zip(*rows, strict=True))

        insert("ia", "accounts", list(ch.new_accounts.values()))
        # Deltas and status in one UPDATE: a statement may change each row only once.
        account_ids = list(ch.account_deltas.keys() | ch.account_status.keys())
        if account_ids:
            zero = (0, 0, 0)
            rows = [(k, *ch.account_deltas.get(k, zero), ch.account_status.get(k)) for k in account_ids]
            ctes.append(
                f"ua AS (UPDATE {t.accounts} AS a SET posted_minor = a.posted_minor + v.dp,"
                " pending_debits_minor = a.pending_debits_minor + v.dpd,"
                " pending_credits_minor = a.pending_credits_minor + v.dpc, status = COALESCE(v.s, a.status)"
                " FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::text[]) AS v(id, dp, dpd, dpc, s)"
                f" WHERE a.account_id = v.id AND {guard} RETURNING 1)"
            )
            params.extend(list(c) for c in zip(*rows, strict=True))
        insert("it", "transfers", list(ch.new_transfers.values()))
        insert("ie", "entries", ch.entry_rows())
        if ch.transfer_updates:
            rows = [_transfer_update(k, u) for k, u in ch.transfer_updates.items()]
            ctes.append(
                f"ut AS (UPDATE {t.transfers} AS x SET status = COALESCE(v.s, x.status),"
                " posted_amount_minor = COALESCE(v.p, x.posted_amount_minor), reversed_by_id = COALESCE(v.r, x.reversed_by_id),"
                " reversed_by_public_id = COALESCE(v.rp, x.reversed_by_public_id)"
                " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[]) AS v(id, s, p, r, rp)"
                f" WHERE x.transfer_id = v.id AND {guard} RETURNING 1)"
            )
            params.extend(list(c) for c in zip(*rows, strict=True))
            ctes.append(
                f"ue AS (UPDATE {t.entries} AS e SET status = COALESCE(v.s, e.status), amount_minor = COALESCE(v.p, e.amount_minor)"
                " FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS v(id, s, p)"
                f" WHERE e.transfer_id = v.id AND (v.s IS NOT NULL OR v.p IS NOT NULL) AND {guard})"
            )
            params.extend(list(c) for c in zip(*[r[:3] for r in rows], strict=True))
        insert(
            "iv", "volumes", [[*k, *v] for k, v in ch.volumes.items()],
            f"ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = {t.volumes}.amount_minor"
            f" + excluded.amount_minor, count = {t.volumes}.count + excluded.count",
        )  # fmt: skip
        insert(
            "if", "flows", [[*k, *v] for k, v in ch.flows.items()],
            f"ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = {t.flows}.inflow_minor + excluded.inflow_minor,"
            f" outflow_minor = {t.flows}.outflow_minor + excluded.outflow_minor,"
            f" inflow_count = {t.flows}.inflow_count + excluded.inflow_count,"
            f" outflow_count = {t.flows}.outflow_count + excluded.outflow_count",
        )  # fmt: skip
        counts = ", ".join(
            f"(SELECT count(*) FROM {name})" if present else "0"
            for name, present in (("adv", True), ("ua", bool(account_ids)), ("ut", bool(ch.transfer_updates)), ("cfg", True))
        )
        self.cur.execute("WITH " + ", ".join(ctes) + " SELECT " + counts, params)
        advanced, accounts, transfers, _ = self.cur.fetchone()
        if advanced != 1:
            raise PositionMoved(f"expected tracking at {expected}")
        assert accounts == len(account_ids), "balance change for an account the view never saw opened"
        assert transfers == len(ch.transfer_updates), "change to a transfer the view never saw initiated"

    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]:
        self.cur.execute(
            f"SELECT transfer_id, currency FROM {self.t.transfers} WHERE transfer_id = ANY(%b::text[])", (list(transfer_ids),)
        )
        return dict(self.cur.fetchall())

    def _copy(self, table: str, columns: str, rows: Any) -> None:
        with self.cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _stage(self, name: str, rows: Any) -> None:
        self.cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} {_PG_STAGING[name]} ON COMMIT DELETE ROWS")
        columns = ", ".join(c.split()[0] for c in _PG_STAGING[name].strip("()").split(","))
        self._copy(name, columns, rows)

    def write(self, ch: Changes) -> None:
        rows = (
            len(ch.new_accounts) + len(ch.account_deltas) + len(ch.account_status) + 3 * len(ch.new_transfers)
            + 3 * len(ch.transfer_updates) + len(ch.volumes) + len(ch.flows)
        )  # fmt: skip
        if rows <= self.one_statement_rows_max:
            self._one_statement(ch)
            return
        self.cur.execute(_ASYNC_COMMIT)
        self._advance_now()
        t = self.t
        if ch.new_accounts:
            self._copy(t.accounts, _cols("accounts"), ch.new_accounts.values())
        if ch.account_deltas:
            self._stage("keel_rm_deltas", ((k, *d) for k, d in ch.account_deltas.items()))
            self.cur.execute(
                f"UPDATE {t.accounts} AS a SET posted_minor = a.posted_minor + v.dp,"
                " pending_debits_minor = a.pending_debits_minor + v.dpd,"
                " pending_credits_minor = a.pending_credits_minor + v.dpc"
                " FROM keel_rm_deltas AS v WHERE a.account_id = v.id"
            )
            assert self.cur.rowcount == len(ch.account_deltas), "balance change for an account the view never saw opened"
        if ch.account_status:
            self._stage("keel_rm_status", ch.account_status.items())
            self.cur.execute(f"UPDATE {t.accounts} AS a SET status = v.s FROM keel_rm_status AS v WHERE a.account_id = v.id")
        if ch.new_transfers:
            self._copy(t.transfers, _cols("transfers"), ch.new_transfers.values())
        if ch.new_entries:
            self._copy(t.entries, _cols("entries"), ch.entry_rows())
        if ch.transfer_updates:
            self._stage("keel_rm_tupd", (_transfer_update(k, u) for k, u in ch.transfer_updates.items()))
            self.cur.execute(
                f"UPDATE {t.transfers} AS x SET status = COALESCE(v.s, x.status),"
                " posted_amount_minor = COALESCE(v.p, x.posted_amount_minor),"
                " reversed_by_id = COALESCE(v.r, x.reversed_by_id),"
                " reversed_by_public_id = COALESCE(v.rp, x.reversed_by_public_id)"
                " FROM keel_rm_tupd AS v WHERE x.transfer_id = v.id"
            )
            assert self.cur.rowcount == len(ch.transfer_updates), "change to a transfer the view never saw initiated"
            self.cur.execute(
                f"UPDATE {t.entries} AS e SET status = COALESCE(v.s, e.status), amount_minor = COALESCE(v.p, e.amount_minor)"
                " FROM keel_rm_tupd AS v WHERE e.transfer_id = v.id AND (v.s IS NOT NULL OR v.p IS NOT NULL)"
            )
        if ch.volumes:
            self._stage("keel_rm_volumes", ((*k, *v) for k, v in ch.volumes.items()))
            self.cur.execute(
                f"INSERT INTO {t.volumes} ({_cols('volumes')}) SELECT * FROM keel_rm_volumes"
                f" ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = {t.volumes}.amount_minor"
                f" + excluded.amount_minor, count = {t.volumes}.count + excluded.count"
            )
        if ch.flows:
            self._stage("keel_rm_flows", ((*k, *v) for k, v in ch.flows.items()))
            self.cur.execute(
                f"INSERT INTO {t.flows} ({_cols('flows')}) SELECT * FROM keel_rm_flows"
                f" ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = {t.flows}.inflow_minor + excluded.inflow_minor,"
                f" outflow_minor = {t.flows}.outflow_minor + excluded.outflow_minor,"
                f" inflow_count = {t.flows}.inflow_count + excluded.inflow_count,"
                f" outflow_count = {t.flows}.outflow_count + excluded.outflow_count"
            )
