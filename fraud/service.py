"""The fraud module as the rest of Keel sees it: the consumer, the current scorer, queries,
reviews, training from reviews, and exact re-scoring of a recorded assessment.

`find` names a transfer the way a caller can (domain/identity.py): a public id inside a tenant,
or, for the cross-tenant roles, a storage key or a public id that exactly one tenant uses. It
tells a transfer that exists but is not scored yet from one that does not exist.

Levels: a scorer uses the levels stored with its model version (chosen by policy when it was
trained) unless KEEL_FRAUD_ELEVATED_THRESHOLD / KEEL_FRAUD_HIGH_THRESHOLD override them.

Built by the composition root (keel/bootstrap.py); it never constructs an Application or reads
settings from the environment itself.
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
from fraud.features import FEATURE_NAMES
from fraud.model import ModelError, ModelStore, Scorer
from fraud.rules import RULES_VERSION
from fraud.simulate import DEFAULT_TRAIN_SEED, SimConfig, simulate
from fraud.training import DEFAULT_TRAIN_CUSTOMERS, DEFAULT_TRAIN_DAYS, average_precision, ensure_model, fit_period

@dataclass(frozen=True)
class Unscored:
    """A transfer the ledger holds that the consumer has not scored yet (usually < 1 s)."""

    transfer_key: UUID
    public_id: UUID
    tenant: str


@dataclass(frozen=True)
class Trained:
    """A training run: the new version, and whether it beat the current one on the most recent
    labelled period (average precision of each; None where it could not be measured)."""

    version: str
    promoted: bool
    current_version: str | None
    new_figure: float | None
    current_figure: float | None
    holdout: str
    why: str
    reviewed_used: int
    reviewed_skipped: int


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
    def __init__(self, *, ledger: Any, app: FraudApp, store: ModelStore, elevated: float | None = None,
                 high: float | None = None) -> None:
        self.ledger = ledger
        self.app = app
        self.store = store
        # Overrides of the model's stored levels (KEEL_FRAUD_*_THRESHOLD); None: the model's own.
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

    def train(self, *, seed: int = DEFAULT_TRAIN_SEED, customers: int = DEFAULT_TRAIN_CUSTOMERS,
              days: int = DEFAULT_TRAIN_DAYS, use_reviews: bool = True, config: SimConfig | None = None,
              max_iter: int | None = None) -> Trained:
        """Simulates a period, adds the analysts' reviews, fits a new version and keeps it; makes it
        current only if it beats the current model on the most recent labelled period (the newest
        slice of the period and the newest reviews, which neither model trained on). The old
        version stays in the store: its assessments can still be rescored with it."""
        reviewed = self.app.reviewed_examples() if use_reviews else []
        usable = [(v, label) for v, label in reviewed if len(v) == len(FEATURE_NAMES)]  # older feature sets cannot join
        config = config or SimConfig(seed=seed, customers=customers, days=days)
        kw = {} if max_iter is None else {"max_iter": max_iter}
        artifact, holdout = fit_period(simulate(config), config, reviewed=usable, **kw)
        version = self.store.save(artifact, make_current=False)
        new_figure = average_precision(Scorer(artifact, version), holdout.x, holdout.y)
        current = self.store.current()
        current_figure = None
        if current is None:
            promoted, why = True, "there was no current model"
        elif current == version:
            promoted, why, current_figure = True, "the same model as the current one (same bytes)", new_figure
        elif not self.store.compatible(current):
            promoted, why = True, f"the current model {current} is of an older feature set and cannot score today's features"
        else:
            current_figure = average_precision(Scorer(self.store.load(current), current), holdout.x, holdout.y)
            if new_figure is None or current_figure is None:
                promoted, why = False, "the most recent labelled period has no fraud (or nothing else) to compare on"
            else:
                promoted = new_figure > current_figure
                why = "it beats the current model" if promoted else "it does not beat the current model"
        if promoted:
            self.store.make_current(version)
        return Trained(version=version, promoted=promoted, current_version=current, new_figure=new_figure,
                       current_figure=current_figure, holdout=holdout.description, why=why,
                       reviewed_used=len(usable), reviewed_skipped=len(reviewed) - len(usable))

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
        # The level needs the thresholds: the model's own unless overridden by today's settings.
        try:
            scorer = self.scorer(a.model_version)
        except ModelError as e:
            raise ModelError(f"cannot rescore with {a.model_version}: {e}") from None
        d = scorer.score(a.features)
        return Rescored(
            transfer_key=a.transfer_key, public_id=a.public_id, tenant=a.tenant, model_version=a.model_version,
            recorded_score=a.score, recomputed_score=d.score,
            recorded_level=a.level, recomputed_level=d.level, recorded_reasons=tuple(a.reasons),
            recomputed_reasons=d.reasons, rules_version_matches=a.rules_version == RULES_VERSION,
        )

    def close(self) -> None:
        self.app.close()
