"""Expiry of two-phase holds whose timeout has passed.

`HoldExpiry` keeps an in-memory index of open holds with a deadline, built by following the
ledger's notification log (only the four Transfer lifecycle topics), and submits an ExpireHold
command for each hold that is due. Several processes may run it: the ledger's optimistic
concurrency lets exactly one expiry commit, and ExpireHold on a finished hold changes nothing.
"""
from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.utils import get_topic

from application.commands import ExpireHold
from application.ledger import Ledger, utcnow
from domain.transfer import Transfer

log = logging.getLogger(__name__)

READ_LIMIT = 1000
# An expiry that was submitted but is not in the log yet is submitted again after this long
# (the store was down, the queue full): a hold leaves the index only when the log says it ended.
RESUBMIT_AFTER_S = 5.0
TOPICS = [
    get_topic(Transfer.Initiated),
    get_topic(Transfer.HoldPosted),
    get_topic(Transfer.HoldVoided),
    get_topic(Transfer.HoldExpired),
]


class HoldExpiry:
    def __init__(self, ledger: Ledger, submit: Callable[[ExpireHold], object]) -> None:
        self.ledger = ledger
        self.submit = submit
        self.position = 0
        self._due: list[tuple[datetime, UUID]] = []
        self._open: set[UUID] = set()

    def catch_up(self) -> None:
        while True:
            notes = self.ledger.recorder.select_notifications(
                start=self.position, limit=READ_LIMIT, topics=TOPICS, inclusive_of_start=False
            )
            for n in notes:
                event = self.ledger.mapper.to_domain_event(n)
                if isinstance(event, Transfer.Initiated):
                    if event.pending and event.timeout_s is not None:
                        deadline = event.timestamp + timedelta(seconds=event.timeout_s)
                        self._open.add(event.originator_id)
                        heapq.heappush(self._due, (deadline, event.originator_id))
                else:
                    self._open.discard(event.originator_id)
                self.position = n.id
            if len(notes) < READ_LIMIT:
                return

    def expire_due(self, now: datetime | None = None) -> int:
        """Submits an expiry for every open hold past its deadline; returns how many."""
        now = now or utcnow()
        self.catch_up()
        count = 0
        retry: list[tuple[datetime, UUID]] = []
        while self._due and self._due[0][0] <= now:
            _, transfer_id = heapq.heappop(self._due)
            if transfer_id not in self._open:
                continue  # posted, voided or expired: seen in the log
            retry.append((now + timedelta(seconds=RESUBMIT_AFTER_S), transfer_id))
            try:
                self.submit(ExpireHold(transfer_key=transfer_id))
            except Exception as e:  # noqa: BLE001 - the writer refused (overloaded, stopping): retry later
                log.warning("could not submit the expiry of %s: %s", transfer_id, type(e).__name__)
                continue
            count += 1
        for item in retry:
            heapq.heappush(self._due, item)
        return count
