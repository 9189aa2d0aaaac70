"""The fraud application: its own event store ("fraud": tables fraud_events, fraud_tracking),
the `Assessment` and `Alert` aggregates, and the consumer that follows the ledger's log.

`FraudConsumer.tick()` reads ledger notifications after its tracking position, computes features
and scores *outside* any database transaction, then records every FraudAssessed (and any Alert
opened) together with the tracking position of the last notification in one transaction. So a
SIGKILL at any moment either loses the whole batch (it is redone) or keeps all of it (never
redone): no transfer is skipped or scored twice. The feature state lives in memory and is
rebuilt after a restart by replaying the ledger's log up to the tracking position.

It never writes to the ledger and never scores inside a transaction.

Identity (domain/identity.py): a transfer is keyed here by its *storage key* (the originator id of
its Transfer.Initiated), which is tenant-isolated by construction. Assessments and alerts also
record the transfer's tenant and *public id* (the id its tenant knows it by), so they can be shown
without asking the ledger. The table `fraud_transfer_ids` maps a public id to the tenants and
storage keys that use it, for the cross-tenant roles that name a transfer by its public id alone.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.utils import get_topic

from domain.errors import DomainError, NotFound, ValidationFailed
from fraud.features import TOPICS_CLASSES, FeatureExtractor
from fraud.model import HIGH, Decision, Scorer
from fraud.rules import RULES_VERSION

log = logging.getLogger(__name__)

LEDGER_APP = "ledger"
READ_LIMIT = 500
ALERT_PAGE_MAX = 500
ALERT_CURSOR_MAX = 2**63 - 1  # an alert cursor is a fraud log position: signed 64-bit
NOTE_MAX_CHARS = 1000
LABELS = ("fraud", "legit")
OPEN = "open"
REVIEWED = "reviewed"
ASSESSMENT_NAMESPACE = UUID("a51c2e8e-3f0b-4f55-8f0a-0e7f6f3b9d21")
ALERT_NAMESPACE = UUID("c0b8d9a4-6f1e-4f0c-b2a7-93d1f7e5a6b2")
LEDGER_TOPICS = [get_topic(c) for c in TOPICS_CLASSES]


class AlertAlreadyReviewed(DomainError):
    code = "alert_already_reviewed"


def assessment_id(transfer_key: UUID) -> UUID:
    """The assessment of the transfer stored at `transfer_key` (its storage key, not a public id)."""
    return uuid5(ASSESSMENT_NAMESPACE, str(transfer_key))


def alert_id(transfer_key: UUID) -> UUID:
    return uuid5(ALERT_NAMESPACE, str(transfer_key))


class Assessment(Aggregate):
    class FraudAssessed(Aggregate.Created):
        transfer_key: UUID  # the transfer's storage key (its aggregate id in the ledger)
        public_id: UUID  # the transfer's id within `tenant`, for showing it
        tenant: str
        ledger_position: int
        score: float
        level: str
        reasons: list[str]
        features: list[float]
        model_version: str
        rules_version: str
        model_probability: float
        rules: list[str]

        def apply(self, aggregate: Assessment) -> None:
            for name in ("transfer_key", "public_id", "tenant", "ledger_position", "score", "level", "reasons", "features",
                         "model_version", "rules_version", "model_probability", "rules"):
                setattr(aggregate, name, getattr(self, name))

    @classmethod
    def record(cls, *, transfer_key: UUID, public_id: UUID, tenant: str, ledger_position: int, decision: Decision,
               features: Sequence[float], model_version: str) -> Assessment:
        return cls._create(
            cls.FraudAssessed, id=assessment_id(transfer_key), transfer_key=transfer_key, public_id=public_id, tenant=tenant,
            ledger_position=ledger_position, score=decision.score, level=decision.level, reasons=list(decision.reasons),
            features=list(features), model_version=model_version, rules_version=RULES_VERSION,
            model_probability=decision.model_probability, rules=list(decision.rules),
        )


class Alert(Aggregate):
    class Opened(Aggregate.Created):
        transfer_key: UUID  # storage key
        public_id: UUID  # within `tenant`
        tenant: str
        score: float
        reasons: list[str]
        model_version: str

        def apply(self, aggregate: Alert) -> None:
            aggregate.transfer_key = self.transfer_key
            aggregate.public_id = self.public_id
            aggregate.tenant = self.tenant
            aggregate.score = self.score
            aggregate.reasons = self.reasons
            aggregate.model_version = self.model_version
            aggregate.status = OPEN
            aggregate.label = None
            aggregate.note = None
            aggregate.reviewer = None

    class Reviewed(Aggregate.Event):
        label: str
        note: str
        reviewer: str

        def apply(self, aggregate: Alert) -> None:
            aggregate.status = REVIEWED
            aggregate.label = self.label
            aggregate.note = self.note
            aggregate.reviewer = self.reviewer

    @classmethod
    def open(cls, *, transfer_key: UUID, public_id: UUID, tenant: str, decision: Decision, model_version: str) -> Alert:
        return cls._create(cls.Opened, id=alert_id(transfer_key), transfer_key=transfer_key, public_id=public_id,
                           tenant=tenant, score=decision.score, reasons=list(decision.reasons), model_version=model_version)

    def review(self, label: str, note: str, reviewer: str) -> None:
        if label not in LABELS:
            raise ValidationFailed("label must be 'fraud' or 'legit'", label=str(label)[:20])
        if len(note) > NOTE_MAX_CHARS:
            raise ValidationFailed(f"note is at most {NOTE_MAX_CHARS} characters")
        if self.status == REVIEWED:
            raise AlertAlreadyReviewed("alert was already reviewed", alert_id=str(self.id), label=self.label)
        self.trigger_event(self.Reviewed, label=label, note=note, reviewer=reviewer[:128])


@dataclass(frozen=True)
class AlertView:
    id: UUID
    transfer_key: UUID  # storage key
    public_id: UUID  # the transfer's id within `tenant`
    tenant: str
    score: float
    reasons: list[str]
    model_version: str
    status: str
    label: str | None
    note: str | None
    opened_at: str
    position: int = 0  # of its Opened event in the fraud log: the cursor of a page of alerts


@dataclass(frozen=True)
class AlertsPage:
    items: list[AlertView]
    next_after: int | None  # the position to pass as `after` for the next page; None at the end


class TransferIds(Protocol):
    """public id -> (tenant, storage key) of every scored transfer."""

    def add(self, rows: Sequence[tuple[UUID, str, UUID]]) -> None: ...

    def keys_of(self, public_id: UUID) -> list[tuple[str, UUID]]: ...


class FraudApp(Application[UUID]):
    """The fraud module's event store. Its recorder is a process recorder: events + tracking."""

    name = "fraud"
    # The table of scored transfers' ids (infrastructure/transfer_ids.py), set by the composition
    # root: how a cross-tenant role finds a transfer by the public id alone.
    transfer_ids: TransferIds | None = None

    def construct_recorder(self) -> Any:
        return self.factory.process_recorder()

    def record(self, aggregates: Iterable[Aggregate], tracking: Tracking) -> None:
        """Stores the aggregates' new events and the tracking position in one transaction."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent(tracking=tracking)
        for agg in aggregates:  # as collect_events, without its isinstance checks against runtime
            processing_event.events.extend(agg.collect_events())  # Protocols (7 % of a page's CPU)
            processing_event.aggregates[agg.id] = agg
        recordings = self._record(processing_event)
        self._notify(recordings)

    def position(self) -> int:
        return self.recorder.max_tracking_id(LEDGER_APP) or 0

    def record_transfer_ids(self, rows: Sequence[tuple[UUID, str, UUID]]) -> None:
        """Adds (public id, tenant, storage key) rows to the transfer-id table; rows it already
        holds are left alone, so a page that is scored again after a crash adds nothing twice.
        A row states a fact of the ledger (that transfer exists), so it may be written before
        the assessments that name it are committed."""
        if rows:
            self._ids().add(rows)

    # ---- queries --------------------------------------------------------------------------

    def transfer_keys(self, public_id: UUID) -> list[tuple[str, UUID]]:
        """(tenant, storage key) of every scored transfer whose public id is `public_id`."""
        return self._ids().keys_of(public_id)

    def _ids(self) -> TransferIds:
        assert self.transfer_ids is not None, "the composition root sets FraudApp.transfer_ids"
        return self.transfer_ids

    def find_assessment(self, transfer_key: UUID) -> Assessment | None:
        """The assessment of the transfer stored at `transfer_key`, None if it has none (yet)."""
        try:
            a = self.repository.get(assessment_id(transfer_key))
        except AggregateNotFoundError:
            return None
        return a if isinstance(a, Assessment) else None

    def assessment(self, transfer_key: UUID) -> Assessment:
        a = self.find_assessment(transfer_key)
        if a is None:
            raise NotFound("no assessment for this transfer (yet)", transfer_id=str(transfer_key))
        return a

    def alert(self, alert_uuid: UUID) -> Alert:
        try:
            a = self.repository.get(alert_uuid)
        except AggregateNotFoundError:
            raise NotFound("alert not found", alert_id=str(alert_uuid)) from None
        if not isinstance(a, Alert):
            raise NotFound("alert not found", alert_id=str(alert_uuid))
        return a

    def all_alerts(self, status: str | None = None) -> list[AlertView]:
        """Every alert in the order it was opened. Scans the alert events of the fraud log: alerts
        are rare (high scores only); a read-model table would be the next step at scale."""
        if status not in (None, OPEN, REVIEWED):
            raise ValidationFailed("status must be 'open' or 'reviewed'", status=str(status)[:20])
        views: dict[UUID, AlertView] = {}
        pos = 0
        topics = [get_topic(Alert.Opened), get_topic(Alert.Reviewed)]
        while True:
            notes = self.recorder.select_notifications(start=pos, limit=1000, topics=topics, inclusive_of_start=False)
            for n in notes:
                e = self.mapper.to_domain_event(n)
                if isinstance(e, Alert.Opened):
                    views[e.originator_id] = AlertView(
                        id=e.originator_id, transfer_key=e.transfer_key, public_id=e.public_id, tenant=e.tenant,
                        score=e.score, reasons=e.reasons, model_version=e.model_version, status=OPEN, label=None,
                        note=None, opened_at=e.timestamp.isoformat(), position=n.id,
                    )
                elif e.originator_id in views:
                    v = views[e.originator_id]
                    views[e.originator_id] = AlertView(**{**v.__dict__, "status": REVIEWED, "label": e.label, "note": e.note})
                pos = n.id
            if len(notes) < 1000:
                break
        return [v for v in views.values() if status is None or v.status == status]

    def alerts(self, status: str | None = None, limit: int = 100, after: int = 0) -> AlertsPage:
        """A page of alerts opened after log position `after` (0: from the start), oldest first.
        The cursor is a position, not an offset, so an alert reviewed between two pages of
        `status=open` does not shift the next page past an alert nobody has seen."""
        if type(limit) is not int or not 1 <= limit <= ALERT_PAGE_MAX:
            raise ValidationFailed(f"limit must be an integer in 1..{ALERT_PAGE_MAX}", field="limit")
        if type(after) is not int or not 0 <= after <= ALERT_CURSOR_MAX:
            raise ValidationFailed("cursor must be a next_cursor value from a previous page", field="cursor")
        views = [v for v in self.all_alerts(status) if v.position > after]
        items = views[:limit]
        return AlertsPage(items=items, next_after=items[-1].position if len(views) > limit else None)

    def review(self, alert_uuid: UUID, label: str, note: str, reviewer: str) -> Alert:
        alert = self.alert(alert_uuid)
        alert.review(label, note, reviewer)
        try:
            self.save(alert)
        except IntegrityError:
            raise AlertAlreadyReviewed("alert was reviewed concurrently", alert_id=str(alert_uuid)) from None
        return alert

    def reviewed_examples(self) -> list[tuple[list[float], int]]:
        """Analysts' decisions as training examples: (recorded features, 1 = fraud), every one."""
        return [(self.assessment(v.transfer_key).features, 1 if v.label == "fraud" else 0) for v in self.all_alerts(REVIEWED)]


class FraudConsumer:
    """Follows the ledger's log, scores each new transfer once, records it with tracking."""

    def __init__(self, ledger: Any, app: FraudApp, scorer: Callable[[], Scorer]) -> None:
        self.ledger = ledger
        self.app = app
        self._scorer = scorer
        self.extractor: FeatureExtractor | None = None
        self.position = 0
        self.scored = 0
        self._lock = threading.Lock()
        self.on_scored: Callable[[int, float], None] | None = None  # (count, seconds) for metrics

    def _read(self, start: int, stop: int | None = None) -> Sequence[Any]:
        return self.ledger.recorder.select_notifications(
            start=start, limit=READ_LIMIT, stop=stop, topics=LEDGER_TOPICS, inclusive_of_start=False
        )

    def rebuild(self) -> None:
        """Feature state as of the recorded tracking position, replayed from the ledger's log."""
        extractor = FeatureExtractor()
        target = self.app.position()
        pos = 0
        while pos < target:
            notes = self._read(pos, stop=target)
            if not notes:
                break
            for n in notes:
                extractor.observe(self.ledger.mapper.to_domain_event(n))
                pos = n.id
        self.extractor = extractor
        self.position = target
        log.info("fraud features rebuilt from the ledger log up to position %d", target)

    def tick(self) -> int:
        """Scores everything committed since the last tick; returns how many transfers."""
        with self._lock:
            scorer = self._scorer()  # may train the default model on first use: before any read
            if self.extractor is None:
                self.rebuild()
            total = 0
            while True:
                count, more = self._step(scorer)
                total += count
                if not more:
                    return total

    def _step(self, scorer: Scorer) -> tuple[int, bool]:
        """One page of the log: (transfers scored, whether there may be more)."""
        assert self.extractor is not None
        notes = self._read(self.position)
        if not notes:
            return 0, False
        t0 = time.perf_counter()
        try:
            observed = []
            for n in notes:
                assert n.id > self.position, "ledger positions must increase"
                o = self.extractor.observe(self.ledger.mapper.to_domain_event(n))
                if o is not None:
                    observed.append((n.id, o))
            decisions = scorer.score_many([o.features for _, o in observed])
            aggregates: list[Aggregate] = []
            for (pos, o), d in zip(observed, decisions, strict=True):
                aggregates.append(Assessment.record(transfer_key=o.transfer_key, public_id=o.public_id, tenant=o.tenant,
                                                    ledger_position=pos, decision=d, features=o.features,
                                                    model_version=scorer.version))
                if d.level == HIGH:
                    aggregates.append(Alert.open(transfer_key=o.transfer_key, public_id=o.public_id, tenant=o.tenant,
                                                 decision=d, model_version=scorer.version))
            # Before the assessments: a crash in between leaves rows that the redone page adds again.
            self.app.record_transfer_ids([(o.public_id, o.tenant, o.transfer_key) for _, o in observed])
            self.app.record(aggregates, Tracking(application_name=LEDGER_APP, notification_id=notes[-1].id))
        except IntegrityError:
            # Another consumer recorded this position first: take up from where it got to.
            log.warning("fraud: position %d already recorded elsewhere; rebuilding", notes[-1].id)
            self.extractor = None
            self.rebuild()
            return 0, True
        except BaseException:
            # The in-memory features have moved past what is recorded: rebuild before retrying.
            self.extractor = None
            raise
        self.position = notes[-1].id
        self.scored += len(observed)
        log.debug("fraud page: %d notifications, %d scored, %.1f ms", len(notes), len(observed), (time.perf_counter() - t0) * 1000)
        if self.on_scored is not None and observed:
            self.on_scored(len(observed), time.perf_counter() - t0)
        return len(observed), len(notes) == READ_LIMIT
