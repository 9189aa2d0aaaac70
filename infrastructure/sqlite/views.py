"""The projection writer on SQLite: one batch of view changes and the tracking row in one
transaction, by row statements. It never writes anything but view rows and their tracking position.
"""
from __future__ import annotations

from typing import Any

from application.projections import VIEWS, Changes
from application.view_follower import PositionMoved
from infrastructure.readmodels import ViewTx, cols as _cols, transfer_update as _transfer_update
from infrastructure.schema import COLUMNS


class SQLiteViewTx(ViewTx):
    """Row statements through `executemany` (in-process SQLite makes them cheap)."""

    # Reads the log before taking the write transaction: SQLite has one writer at a time.
    reads_in_transaction = False

    def advance(self, expected: int, position: int) -> None:
        assert position > expected, f"tracking must move forward: {expected} -> {position}"
        self.cur.execute(f"UPDATE {self.t.tracking} SET position = %s WHERE name = %s AND position = %s", (position, VIEWS, expected))
        if self.cur.rowcount != 1:
            raise PositionMoved(f"expected tracking at {expected}")

    def transfer_currencies(self, transfer_ids: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(transfer_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            self.cur.execute(
                f"SELECT transfer_id, currency FROM {self.t.transfers} WHERE transfer_id IN ({','.join(['%s'] * len(chunk))})", chunk
            )
            out.update((r[0], r[1]) for r in self.cur.fetchall())
        return out

    def _insert(self, table: str, rows: list[list[Any]], conflict: str = "") -> None:
        if rows:
            marks = ", ".join(["%s"] * len(COLUMNS[table]))
            self.cur.executemany(f"INSERT INTO {self.t.name(table)} ({_cols(table)}) VALUES ({marks}) {conflict}", rows)

    def write(self, ch: Changes) -> None:
        t = self.t
        self._insert("accounts", list(ch.new_accounts.values()))
        if ch.account_deltas:
            self.cur.executemany(
                f"UPDATE {t.accounts} SET posted_minor = posted_minor + %s, pending_debits_minor = pending_debits_minor + %s,"
                " pending_credits_minor = pending_credits_minor + %s WHERE account_id = %s",
                [(*d, k) for k, d in ch.account_deltas.items()],
            )
            assert self.cur.rowcount == len(ch.account_deltas), "balance change for an account the view never saw opened"
        if ch.account_status:
            self.cur.executemany(
                f"UPDATE {t.accounts} SET status = %s WHERE account_id = %s", [(s, k) for k, s in ch.account_status.items()]
            )
        self._insert("transfers", list(ch.new_transfers.values()))
        self._insert("entries", ch.entry_rows())
        if ch.transfer_updates:
            rows = [(*_transfer_update(k, u)[1:], k) for k, u in ch.transfer_updates.items()]
            self.cur.executemany(
                f"UPDATE {t.transfers} SET status = COALESCE(%s, status), posted_amount_minor = COALESCE(%s, posted_amount_minor),"
                " reversed_by_id = COALESCE(%s, reversed_by_id), reversed_by_public_id = COALESCE(%s, reversed_by_public_id)"
                " WHERE transfer_id = %s",
                rows,
            )
            assert self.cur.rowcount == len(rows), "change to a transfer the view never saw initiated"
            self.cur.executemany(
                f"UPDATE {t.entries} SET status = COALESCE(%s, status), amount_minor = COALESCE(%s, amount_minor)"
                " WHERE transfer_id = %s",
                [(s, p, k) for s, p, _, _, k in rows if s is not None or p is not None],
            )
        self._insert(
            "volumes",
            [[*k, *v] for k, v in ch.volumes.items()],
            "ON CONFLICT (period, bucket_s, currency) DO UPDATE SET amount_minor = amount_minor + excluded.amount_minor,"
            " count = count + excluded.count",
        )
        self._insert(
            "flows",
            [[*k, *v] for k, v in ch.flows.items()],
            "ON CONFLICT (account_id, day_s) DO UPDATE SET inflow_minor = inflow_minor + excluded.inflow_minor,"
            " outflow_minor = outflow_minor + excluded.outflow_minor, inflow_count = inflow_count + excluded.inflow_count,"
            " outflow_count = outflow_count + excluded.outflow_count",
        )
