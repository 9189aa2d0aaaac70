"""Training a fraud model: the time split, fitting, calibration, the levels by policy, the figure
a new model must beat to be promoted, and the default model (`ensure_model`).

`fit_period` splits labelled activity by time, never at random: the earliest 70 % of the period
trains a `HistGradientBoostingClassifier` with monotonic constraints where the direction of risk
is known (fraud/features.py MONOTONE; every rule +1); the next 15 % calibrates its output
(`CalibratedClassifierCV` on the frozen model) and chooses the levels by policy (`LevelPolicy`:
`high` for a target precision, `elevated` for a target recall, both within an alert budget); the
most recent 15 % is held out to decide whether a new model beats the current one. Levels travel
with the model version. It never scores live transfers: fraud/model.py's `Scorer` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.identity import transfer_key
from fraud import rules as rules_mod
from fraud.dataset import SIM_TENANT, Record, labels, ledger_events
from fraud.features import FEATURE_NAMES, FEATURE_SET, MONOTONE, NO_DATA, NULLABLE, FeatureExtractor, Observed
from fraud.model import (
    ELEVATED,
    HIGH,
    Artifact,
    Calibration,
    Forest,
    ModelError,
    ModelStore,
    Scorer,
    model_input,
    one_thread,
    shipped_model,
)
from fraud.simulate import DEFAULT_TRAIN_SEED, SimConfig, simulate

# Reviewed alerts count this many times a simulated example: they are real analyst decisions.
REVIEW_WEIGHT = 5.0
FRAUD_WEIGHT = 3.0
# The default training period is larger than an evaluation period: more fraud to learn from and
# ~200 frauds in the validation slice that calibrates and sets the levels.
DEFAULT_TRAIN_CUSTOMERS = 1000
DEFAULT_TRAIN_DAYS = 56
DEFAULT_MAX_ITER = 200
# Time split of a labelled period: train | validation (calibration, levels) | most recent (promotion).
VALIDATION_FROM = 0.70
RECENT_FROM = 0.85
VALIDATION_FRAUD_MIN = 5
CALIBRATION = "sigmoid"
# The booster's shape. Depth is capped because scoring walks every tree level by level in numpy
# (Forest.raw_small): the cost of a transfer's reasons grows with the deepest tree.
BOOSTING: dict[str, Any] = {"learning_rate": 0.08, "max_leaf_nodes": 31, "max_depth": 6, "min_samples_leaf": 20,
                            "l2_regularization": 1.0}
MONOTONIC_CST: tuple[int, ...] = tuple(MONOTONE.get(n, 0) for n in FEATURE_NAMES) + (1,) * len(rules_mod.RULES)


@dataclass(frozen=True)
class LevelPolicy:
    """How the levels are chosen on the validation period. `high` (opens an alert): the lowest
    score whose alerts reach `high_precision`, alerting at most `high_budget` of all transfers.
    `elevated`: the highest score that still catches `elevated_recall` of the fraud, flagging at
    most `elevated_budget` of all transfers. A target that cannot be met within its budget falls
    back to the budget, and the stored levels say so (`met`)."""

    high_precision: float = 0.9
    high_budget: float = 0.02
    elevated_recall: float = 0.97
    elevated_budget: float = 0.05


def observe_records(records: Sequence[Record], tenant: str = SIM_TENANT, currency: str = "EUR") -> list[Observed]:
    ex = FeatureExtractor()
    out = []
    for event in ledger_events(records, tenant=tenant, currency=currency):
        o = ex.observe(event)
        if o is not None:
            out.append(o)
    return out


def training_set(records: Sequence[Record], tenant: str = SIM_TENANT) -> tuple[np.ndarray, np.ndarray, list[str], list[Observed]]:
    """Features from the events of `records` as the ledger of `tenant` records them, joined with
    the simulator's labels. Labels are keyed by public transfer id (what a client sends); the
    features by storage key (what the log keys a transfer by): the join maps one to the other."""
    observed = observe_records(records, tenant=tenant)
    by_key = {transfer_key(tenant, public_id): v for public_id, v in labels(records).items()}
    x = np.array([o.features for o in observed], dtype=np.float64).reshape(len(observed), len(FEATURE_NAMES))
    y = np.array([by_key[o.transfer_key][0] for o in observed], dtype=np.int64)
    patterns = [by_key[o.transfer_key][1] for o in observed]
    return x, y, patterns, observed


@dataclass
class Holdout:
    """The most recent labelled period, seen by no model trained on this data."""

    x: np.ndarray
    y: np.ndarray
    description: str


def _one_class(y: np.ndarray) -> bool:
    return len(np.unique(y)) < 2


def choose_levels(scores: np.ndarray, y: np.ndarray, policy: LevelPolicy) -> dict[str, Any]:
    """`high` and `elevated` from calibrated validation scores, by `policy`; with what each level
    achieved on the validation period."""
    n, fraud = len(y), int(y.sum())
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], y[order]
    tp = np.cumsum(hits)
    # Only thresholds between distinct scores are real choices ("flag everything >= t").
    last = np.r_[s[1:] != s[:-1], True]
    cand_t, cand_tp, cand_n = s[last], tp[last], np.nonzero(last)[0] + 1
    precision, recall, rate = cand_tp / cand_n, cand_tp / max(1, fraud), cand_n / n
    ok = (precision >= policy.high_precision) & (rate <= policy.high_budget)
    high_met = bool(ok.any())
    # The lowest threshold meeting the target (the most recall at that precision); else the budget.
    hi = int(np.nonzero(ok)[0].max()) if high_met else max(0, int(np.searchsorted(rate, policy.high_budget, side="right")) - 1)
    ok = (recall >= policy.elevated_recall) & (rate <= policy.elevated_budget)
    elevated_met = bool(ok.any())
    el = int(np.nonzero(ok)[0].min()) if elevated_met else max(0, int(np.searchsorted(rate, policy.elevated_budget, side="right")) - 1)
    el = max(el, hi)  # elevated never above high
    # A level is a probability above 0: "flag everything" is never a level.
    high = max(float(cand_t[hi]), float(np.nextafter(0.0, 1.0)))
    elevated = max(float(cand_t[el]), float(np.nextafter(0.0, 1.0)))
    return {
        "high": high, "elevated": min(elevated, high),
        "policy": {"high_precision": policy.high_precision, "high_budget": policy.high_budget,
                   "elevated_recall": policy.elevated_recall, "elevated_budget": policy.elevated_budget},
        "validation": {
            HIGH: {"met": high_met, "precision": float(precision[hi]), "recall": float(recall[hi]), "share_flagged": float(rate[hi])},
            ELEVATED: {"met": elevated_met, "precision": float(precision[el]), "recall": float(recall[el]),
                       "share_flagged": float(rate[el])},
        },
    }


def fit(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, seed: int,
    sample_weight: np.ndarray | None = None, max_iter: int = DEFAULT_MAX_ITER, policy: LevelPolicy = LevelPolicy(),
) -> Artifact:
    """Fits on (x, y); calibrates and chooses the levels on the later (x_val, y_val)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.frozen import FrozenEstimator

    if _one_class(y) or int(y_val.sum()) < VALIDATION_FRAUD_MIN or _one_class(y_val):
        raise ModelError(f"too little fraud to train: {int(y.sum())} in training, {int(y_val.sum())} in validation "
                         f"(at least {VALIDATION_FRAUD_MIN}); simulate more customers or days")
    clf = HistGradientBoostingClassifier(
        max_iter=max_iter, **BOOSTING, early_stopping=False, random_state=seed, monotonic_cst=list(MONOTONIC_CST),
    )
    w = np.where(y == 1, FRAUD_WEIGHT, 1.0) if sample_weight is None else sample_weight
    xv = model_input(x_val)
    # One thread: OpenMP threads spin on a busy 2-core machine (30 s instead of 4 s here), and
    # a fixed thread count keeps the float sums, and so the model's bytes, the same everywhere.
    with one_thread():
        clf.fit(model_input(x), y, sample_weight=w)
        calibrated = CalibratedClassifierCV(FrozenEstimator(clf), method=CALIBRATION).fit(xv, y_val)
    calibrate = Calibration(calibrated)
    forest = Forest(clf)
    p_val = np.array([calibrate(r) for r in forest.raw(xv)])
    levels = choose_levels(p_val, y_val, policy)
    legit = x[y == 0] if (y == 0).any() else x
    baseline = []
    for j, name in enumerate(FEATURE_NAMES):
        column = legit[:, j]
        if name in NULLABLE:
            column = column[column != NO_DATA]
        baseline.append(float(np.median(column)) if len(column) else NO_DATA)
    return Artifact(
        classifier=clf, calibrated=calibrated, feature_names=FEATURE_NAMES, feature_set=FEATURE_SET,
        rules_version=rules_mod.RULES_VERSION, baseline=tuple(baseline),
        levels={HIGH: levels["high"], ELEVATED: levels["elevated"]},
        meta={"seed": seed, "examples": int(len(y)), "fraud_examples": int(y.sum()), "validation_examples": int(len(y_val)),
              "validation_fraud": int(y_val.sum()), "calibration": CALIBRATION, "levels": levels,
              "feature_set": FEATURE_SET, "rules_version": rules_mod.RULES_VERSION},
    )


def split_by_time(at_s: np.ndarray, config: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of training | validation | most recent, by event time (never at random): the
    period's first VALIDATION_FROM (warm-up included), up to RECENT_FROM, the rest."""
    start, span = config.start.timestamp(), config.days * 86400
    val_from, recent_from = start + VALIDATION_FROM * span, start + RECENT_FROM * span
    return at_s < val_from, (at_s >= val_from) & (at_s < recent_from), at_s >= recent_from


def fit_period(
    records: Sequence[Record], config: SimConfig, *, reviewed: Sequence[tuple[Sequence[float], int]] = (),
    max_iter: int = DEFAULT_MAX_ITER, policy: LevelPolicy = LevelPolicy(),
) -> tuple[Artifact, Holdout]:
    """Trains on a simulated period plus analysts' reviews (oldest first), split by time:
    training | validation | the most recent labelled period (held out, returned for comparing
    models). Reviews are real decisions on alerts only, a biased sample: they join training
    (weighted) and the most recent period, never the calibration."""
    x, y, _, observed = training_set(records, tenant=config.tenant)
    train_m, val_m, recent_m = split_by_time(np.array([o.at_s for o in observed]), config)
    rx = np.array([list(v) for v, _ in reviewed], dtype=np.float64).reshape(len(reviewed), len(FEATURE_NAMES))
    ry = np.array([label for _, label in reviewed], dtype=np.int64)
    # The newest reviews (as many as the most recent period's share of the time) are held out.
    cut = len(reviewed) - int(len(reviewed) * (1 - RECENT_FROM)) if len(reviewed) >= 2 else len(reviewed)
    xt = np.vstack([x[train_m], rx[:cut]])
    yt = np.concatenate([y[train_m], ry[:cut]])
    wt = np.concatenate([np.where(y[train_m] == 1, FRAUD_WEIGHT, 1.0), np.full(cut, REVIEW_WEIGHT)])
    art = fit(xt, yt, x[val_m], y[val_m], seed=config.seed, sample_weight=wt, max_iter=max_iter, policy=policy)
    art.meta.update({"customers": config.customers, "days": config.days, "reviewed_examples": len(reviewed),
                     "reviews_in_training": int(cut)})
    holdout = Holdout(
        x=np.vstack([x[recent_m], rx[cut:]]), y=np.concatenate([y[recent_m], ry[cut:]]),
        description=(f"the last {(1 - RECENT_FROM) * config.days:.1f} days of seed {config.seed} "
                     f"({int(recent_m.sum())} transfers) + the newest {len(reviewed) - cut} reviews"),
    )
    return art, holdout


def train(
    *, seed: int = DEFAULT_TRAIN_SEED, customers: int = DEFAULT_TRAIN_CUSTOMERS, days: int = DEFAULT_TRAIN_DAYS,
    reviewed: Sequence[tuple[Sequence[float], int]] = (), max_iter: int = DEFAULT_MAX_ITER, config: SimConfig | None = None,
) -> Artifact:
    """Simulates a period with `seed` (or `config`), adds analysts' reviewed decisions, and fits."""
    config = config or SimConfig(seed=seed, customers=customers, days=days)
    return fit_period(simulate(config), config, reviewed=reviewed, max_iter=max_iter)[0]


def average_precision(scorer: Scorer, x: np.ndarray, y: np.ndarray) -> float | None:
    """The figure models are compared on for promotion."""
    from sklearn.metrics import average_precision_score

    if _one_class(y):
        return None
    return float(average_precision_score(y, [d.score for d in scorer.score_many(x.tolist())]))


def ensure_model(store: ModelStore) -> str:
    """The current version when this code can score with it; otherwise the shipped default
    (signed into the local store verbatim) or, with another scikit-learn, the same seeded default
    trained here (~15 s), made current. A current model of an older feature set stays in the
    store (its assessments name it) but is no longer current."""
    version = store.current()
    if version is None or not store.compatible(version):
        shipped = shipped_model()
        if shipped is not None:
            # Verbatim: re-pickling an unpickled object need not give the same bytes.
            version = store.save_blob(*shipped)
        else:
            version = store.save(train())
    return version
