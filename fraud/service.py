"""The fraud module as the rest of Keel sees it: the consumer, the current scorer, queries,
reviews, training from reviews, and exact re-scoring of a recorded assessment.

`find` names a transfer the way a caller can (domain/identity.py): a public id inside a tenant,
or, for the cross-tenant roles, a storage key or a public id that exactly one tenant uses. It
tells a transfer that exists but is not scored yet from one that does not exist.

Built by the composition root (`keel.bootstrap.fraud_service`); it never constructs an
Application or reads settings from the environment itself.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.errors import NotFound, ValidationFailed
from domain.identity import transfer_key
from domain.limits import check_tenant
from fraud.app import Assessment, FraudApp, FraudConsumer
from fraud.model import ModelStore, Scorer, ensure_model, train
from fraud.rules import RULES_VERSION


@dataclass(frozen=True)
class Unscored:
    """A transfer the ledger holds that the consumer has not scored yet (usually < 1 s)."""

    transfer_key: UUID
    public_id: UUID
    tenant: str


@dataclass(frozen=True)
class Rescored:
    transfer_key: UUID
    public_id: UUID
    tenant: str
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
        self.ledger = ledger
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

    # ---- finding a transfer's assessment ----------------------------------------------------

    def find(self, transfer_id: UUID, tenant: str | None) -> Assessment | Unscored:
        """The assessment of a transfer, or Unscored while the ledger has it but it is not scored.

        With `tenant` (a banking key always passes its own), `transfer_id` is a public id resolved
        inside that tenant: another tenant's transfer is NotFound exactly like a missing one.
        Without (cross-tenant roles), `transfer_id` is a storage key (the aggregate id of the audit
        log) or a public id that exactly one tenant's scored transfer uses; when it could name
        several transfers, ValidationFailed asks for the tenant. Blocking: call in a thread."""
        if tenant is not None:
            check_tenant(tenant)
            found = self._at(transfer_key(tenant, transfer_id), tenant)
        else:
            found = self._at(transfer_id, None)  # a storage key?
            keys = {key for _, key in self.app.transfer_keys(transfer_id)}  # a public id?
            if found is not None:
                keys.add(found.transfer_key)
            if len(keys) > 1:
                raise ValidationFailed(
                    "several tenants have a transfer with this id: give the tenant too", field="tenant",
                    transfer_id=str(transfer_id), tenants=len(keys),
                )
            if found is None and keys:
                found = self._at(keys.pop(), None)
        if found is None:
            raise NotFound("transfer not found", transfer_id=str(transfer_id))
        return found

    def _at(self, key: UUID, tenant: str | None) -> Assessment | Unscored | None:
        a = self.app.find_assessment(key)
        if a is not None:
            return a if tenant is None or a.tenant == tenant else None
        try:
            t = self.ledger.transfer_by_key(key, tenant)
        except NotFound:
            return None
        return Unscored(transfer_key=t.key, public_id=t.id, tenant=t.tenant)

    def rescore(self, transfer_key: UUID) -> Rescored:
        """Recomputes the assessment of the transfer stored at `transfer_key` (see `find`)."""
        a: Assessment = self.app.assessment(transfer_key)
        # The thresholds of the recorded level are today's settings; the score needs only the model.
        d = self.scorer(a.model_version).score(a.features)
        return Rescored(
            transfer_key=a.transfer_key, public_id=a.public_id, tenant=a.tenant, model_version=a.model_version,
            recorded_score=a.score, recomputed_score=d.score,
            recorded_level=a.level, recomputed_level=d.level, recorded_reasons=tuple(a.reasons),
            recomputed_reasons=d.reasons, rules_version_matches=a.rules_version == RULES_VERSION,
        )

    def close(self) -> None:
        self.app.close()
