"""`keel replay`: every view rebuilt from the ledger's log into scratch tables, then compared
with the live views (`--check`) or swapped in for them (`--rebuild`). Never touches the log."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from application.projections import VIEWS, project
from application.view_follower import ViewFollower
from infrastructure.projection_worker import log_reader
from infrastructure.readmodels import (
    LIVE,
    SCRATCH,
    SqlViewStore,
    Tables,
    ViewDatabase,
    compare,
    create_scratch,
    drop_scratch,
    replace_live,
    view_tx,
)

REBUILD_BATCH_MAX = 50_000
CHECK_CHASE_MAX = 20
PROGRESS_DRAW_S = 0.2


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str) -> None:
        self.total = max(total, 1)
        self.label = label
        self.started = time.monotonic()
        self.done_events = 0
        self.last_draw = 0.0

    def __call__(self, position: int, events: int) -> None:
        self.done_events = events
        now = time.monotonic()
        if now - self.last_draw < PROGRESS_DRAW_S and position < self.total:
            return
        self.last_draw = now
        width = 30
        filled = int(width * min(position, self.total) / self.total)
        rate = events / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {position:,}/{self.total:,} ({rate:,.0f} events/s)"
        )
        sys.stderr.flush()

    def finish(self) -> float:
        sys.stderr.write("\n")
        return self.done_events / max(time.monotonic() - self.started, 1e-9)


def _rebuild_scratch(ledger: Any, db: ViewDatabase, stop: int | None, label: str) -> tuple[ViewFollower, float]:
    scratch = create_scratch(db)
    follower = ViewFollower(log_reader(ledger, db), scratch, batch_max=REBUILD_BATCH_MAX)
    target = stop if stop is not None else (ledger.recorder.max_notification_id() or 0)
    bar = _Progress(target, label)
    applied = 0
    while follower.position < target:
        n = follower.step(target)
        if n == 0:
            break
        applied += n
        bar(follower.position, applied)
    return follower, bar.finish() if applied else 0.0


def replay_check(ledger: Any, db: ViewDatabase, out: Any = sys.stdout) -> int:
    """Rebuilds every view into scratch tables and compares them with the live ones.

    Returns the number of differences (0: identical). The comparison runs in one snapshot
    taken when the live tracking position equals the replayed one.
    """
    live = SqlViewStore(db, LIVE)
    try:
        follower, rate = _rebuild_scratch(ledger, db, live.position(), "replaying")
        diffs: list[str] = []
        for _ in range(CHECK_CHASE_MAX):
            with db.snapshot() as cur:
                cur.execute(f"SELECT position FROM {live.t.tracking} WHERE name = %s", (VIEWS,))
                live_position = int(cur.fetchone()[0])
                if live_position == follower.position:
                    diffs = compare(db, Tables(db, LIVE), Tables(db, SCRATCH), cur)
                    break
            if live_position < follower.position or follower.catch_up(stop=live_position) == 0:
                diffs = [f"tracking: live views claim position {live_position}, the log replays to {follower.position}"]
                break
        else:
            diffs = ["tracking: the live views kept moving; stop the projection worker and check again"]
        print(f"replayed {follower.position:,} positions ({rate:,.0f} events/s)", file=out)
        for line in diffs:
            print(line, file=out)
        print("read models match the log" if not diffs else f"read models DIFFER from the log ({len(diffs)} line(s))", file=out)
        return len(diffs)
    finally:
        drop_scratch(db)


def scratch_catch_up(ledger: Any, db: ViewDatabase, scratch_position: int) -> Callable[[Any, int], int]:
    """For replace_live: applies to the scratch tables, inside the swap transaction, the events
    the live views already hold beyond `scratch_position`, so the live position never goes back."""

    def catch_up(cur: Any, live_position: int) -> int:
        position = scratch_position
        tx = view_tx(db, cur, SCRATCH)
        read = log_reader(ledger, db)
        while position < live_position:
            events = read(position, REBUILD_BATCH_MAX, live_position, tx)
            if not events:
                break
            tx.advance(position, events[-1][0])
            tx.write(project(events, tx.transfer_currencies))
            position = events[-1][0]
        return position

    return catch_up


def replay_rebuild(ledger: Any, db: ViewDatabase, out: Any = sys.stdout) -> float:
    """Rebuilds every view from the log and swaps it in; returns the rebuild rate in events/s."""
    try:
        follower, rate = _rebuild_scratch(ledger, db, None, "rebuilding")
        position = replace_live(db, follower.position, scratch_catch_up(ledger, db, follower.position))
        print(f"rebuilt read models to position {position:,} ({rate:,.0f} events/s)", file=out)
        return rate
    finally:
        drop_scratch(db)
