"""The fraud module as the rest of Keel sees it: the consumer, the current scorer, queries,
reviews, training from reviews, and exact re-scoring of a recorded assessment.

Built by the composition root (`keel.bootstrap.fraud_service`); it never constructs an
Application or reads settings from the environment itself.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fraud.app import Assessment, FraudApp, FraudConsumer
from fraud.model import ModelStore, Scorer, ensure_model, train
from fraud.rules import RULES_VERSION


@dataclass(frozen=True)
class Rescored:
    transfer_id: UUID
    model_version: str
    recorded_score: float
    recomputed_score: float
    recorded_level: str
    recomputed_level: str
    recorded_reasons: tuple[str, ...]
    recomputed_reasons: tuple[str, ...]
    rules_version_matches: bool

    @property
    def matches(self) -> bool:
        return (self.recorded_score == self.recomputed_score and self.recorded_level == self.recomputed_level
                and self.recorded_reasons == self.recomputed_reasons and self.rules_version_matches)


class FraudService:
    def __init__(self, *, ledger: Any, app: FraudApp, store: ModelStore, elevated: float, high: float) -> None:
        self.app = app
        self.store = store
        self.elevated = elevated
        self.high = high
        self._scorers: dict[str, Scorer] = {}
        self._current: Scorer | None = None
        self._lock = threading.Lock()
        self.consumer = FraudConsumer(ledger, app, self.current_scorer)

    def scorer(self, version: str) -> Scorer:
        with self._lock:
            s = self._scorers.get(version)
            if s is None:
                s = self._scorers[version] = Scorer(self.store.load(version), version, elevated=self.elevated, high=self.high)
            return s

    def current_scorer(self) -> Scorer:
        """The model current when first asked (a process keeps it until it restarts, so one
        process never mixes versions mid-run); the shipped or seeded default if there is none."""
        if self._current is None:
            self._current = self.scorer(ensure_model(self.store))
        return self._current

    def train(self, *, seed: int, customers: int, days: int, use_reviews: bool = True) -> str:
        reviewed = self.app.reviewed_examples() if use_reviews else []
        return self.store.save(train(seed=seed, customers=customers, days=days, reviewed=reviewed))

    def rescore(self, transfer_id: UUID) -> Rescored:
        a: Assessment = self.app.assessment(transfer_id)
        # The thresholds of the recorded level are today's settings; the score needs only the model.
        d = self.scorer(a.model_version).score(a.features)
        return Rescored(
            transfer_id=transfer_id, model_version=a.model_version, recorded_score=a.score, recomputed_score=d.score,
            recorded_level=a.level, recomputed_level=d.level, recorded_reasons=tuple(a.reasons),
            recomputed_reasons=d.reasons, rules_version_matches=a.rules_version == RULES_VERSION,
        )

    def close(self) -> None:
        self.app.close()
