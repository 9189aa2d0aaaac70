"""The fraud model: the artifact, a signed store of versioned models, and the scorer with its reasons.

Training lives in fraud/training.py, evaluation in fraud/evaluation.py; this module never fits a
model. The pickled `Artifact` is referenced by this module's path: it must stay here, or the
shipped default model (pinned by its SHA-256 below) no longer loads.

A model version is the SHA-256 of its pickled bytes ("m-" + 16 hex digits). Models are pickles,
and unpickling runs code, so the store only ever unpickles a file it wrote itself: next to each
`<version>.pkl` it writes `<version>.json` holding an HMAC-SHA256 of the bytes under a local
secret key (`KEEL_FRAUD_MODEL_KEY`, or `model.key` created with mode 0600 beside the models).
Loading recomputes both the hash (must equal the version) and the HMAC (must equal the manifest)
before `pickle.loads`. A file dropped in by anyone without the key is refused.

Scoring never touches the store or the clock: `Scorer.score_many` is a pure function of the
feature vectors and the model (rules included), so a recorded decision can be recomputed exactly.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from fraud import rules as rules_mod
from fraud.features import FEATURE_NAMES, FEATURE_SET, INDEX, NO_DATA, NULLABLE

ELEVATED = "elevated"
HIGH = "high"
LOW = "low"
REASONS_MAX = 4
# A reason must move the model's log-odds by at least this much (0.2: odds x1.22).
REASON_MIN_LOGIT = 0.2
MODEL_FILE_MAX_BYTES = 64 * 1024 * 1024

MODEL_INPUTS: tuple[str, ...] = FEATURE_NAMES + tuple(f"rule:{name}" for name in rules_mod.RULE_NAMES)
_NULLABLE_COLUMNS = np.array(sorted(INDEX[n] for n in NULLABLE), dtype=np.int64)


class ModelError(Exception):
    """A model file is missing, altered, not ours, or made for other features."""


@dataclass
class Artifact:
    classifier: Any  # HistGradientBoostingClassifier over MODEL_INPUTS
    calibrated: Any  # CalibratedClassifierCV(FrozenEstimator(classifier)), fitted on the validation period
    feature_names: tuple[str, ...]
    feature_set: str
    rules_version: str
    baseline: tuple[float, ...]  # the typical legitimate value of each feature (for reasons); NO_DATA if none
    levels: dict[str, float]  # {"elevated": ..., "high": ...}: probabilities chosen by `LevelPolicy`
    meta: dict[str, Any] = field(default_factory=dict)


def model_input(vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Recorded feature vectors -> the model's input: NO_DATA becomes NaN (HistGradientBoosting
    routes missing values on its own, outside the monotonic order), and each rule is a 0/1 column."""
    x = np.array(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"feature vectors must have {len(FEATURE_NAMES)} values ({FEATURE_SET})")
    hits = np.array([rules_mod.indicators(v) for v in x.tolist()], dtype=np.float64).reshape(len(x), len(rules_mod.RULES))
    sub = x[:, _NULLABLE_COLUMNS]
    sub[sub == NO_DATA] = np.nan
    x[:, _NULLABLE_COLUMNS] = sub
    return np.hstack([x, hits])


def calibration_of(calibrated: Any) -> tuple[str, list[float], list[float]]:
    """The fitted calibrator as plain numbers: ("isotonic", xs, ys) or ("sigmoid", [a], [b])."""
    from sklearn.isotonic import IsotonicRegression

    cal = calibrated.calibrated_classifiers_[0].calibrators[0]
    if isinstance(cal, IsotonicRegression):
        return "isotonic", [float(v) for v in cal.X_thresholds_], [float(v) for v in cal.y_thresholds_]
    return "sigmoid", [float(cal.a_)], [float(cal.b_)]


class Calibration:
    """The calibrator applied to one raw score at a time, the same arithmetic whatever the batch
    (sklearn's IsotonicRegression.predict is np.interp, and _SigmoidCalibration is expit(-(a f + b)))."""

    def __init__(self, calibrated: Any) -> None:
        self.method, self.xs, self.ys = calibration_of(calibrated)
        if self.method == "sigmoid" and self.xs[0] > 0:
            raise ModelError("the calibration decreases with the model's output; refusing a non-monotone score")

    def __call__(self, raw: float) -> float:
        if self.method == "sigmoid":
            z = -(self.xs[0] * raw + self.ys[0])
            return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        xs, ys = self.xs, self.ys
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1]:
            return ys[-1]
        j = bisect.bisect_right(xs, raw) - 1
        if xs[j + 1] == xs[j]:
            return ys[j + 1]
        return (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) * (raw - xs[j]) + ys[j]


# ---- the signed store ---------------------------------------------------------------------


class ModelStore:
    def __init__(self, directory: str | os.PathLike[str], key_b64: str | None = None) -> None:
        self.dir = Path(directory)
        self.models = self.dir / "models"
        self._key_b64 = key_b64
        self._key: bytes | None = None

    def _secret(self) -> bytes:
        if self._key is None:
            if self._key_b64:
                self._key = base64.b64decode(self._key_b64, validate=True)
            else:
                path = self.dir / "model.key"
                if not path.exists():
                    self.dir.mkdir(parents=True, exist_ok=True)
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    except FileExistsError:
                        pass  # another process made it first
                    else:
                        with os.fdopen(fd, "wb") as f:
                            f.write(base64.b64encode(os.urandom(32)))
                self._key = base64.b64decode(path.read_bytes().strip(), validate=True)
            if len(self._key) < 16:
                raise ModelError("the model signing key must be at least 16 bytes")
        return self._key

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def save(self, artifact: Artifact, *, make_current: bool = True) -> str:
        return self.save_blob(pickle.dumps(artifact, protocol=5), artifact, make_current=make_current)

    def save_blob(self, blob: bytes, artifact: Artifact, *, make_current: bool = True) -> str:
        """Stores `blob` (the pickle of `artifact`, byte for byte) signed with the local key.
        Versions are never deleted: every recorded assessment can be rescored with its model."""
        digest = hashlib.sha256(blob).hexdigest()
        version = f"m-{digest[:16]}"
        self.models.mkdir(parents=True, exist_ok=True)
        manifest = {
            "version": version,
            "sha256": digest,
            "hmac_sha256": hmac.new(self._secret(), blob, hashlib.sha256).hexdigest(),
            "created_at": datetime.now(tz=timezone.utc).isoformat(),
            "feature_set": artifact.feature_set,
            "rules_version": artifact.rules_version,
            "feature_names": list(artifact.feature_names),
            "levels": artifact.levels,
            "meta": artifact.meta,
        }
        self._write(self.models / f"{version}.pkl", blob)
        self._write(self.models / f"{version}.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        if make_current:
            self.make_current(version)
        return version

    def make_current(self, version: str) -> None:
        self.manifest(version)  # exists
        self._write(self.dir / "current", version.encode())

    def current(self) -> str | None:
        path = self.dir / "current"
        return path.read_text().strip() if path.exists() else None

    def manifest(self, version: str) -> dict[str, Any]:
        if not version.startswith("m-") or not version[2:].isalnum() or len(version) != 18:
            raise ModelError(f"not a model version: {version!r}")
        path = self.models / f"{version}.json"
        if not path.exists():
            raise ModelError(f"model {version} is not in {self.models}")
        return json.loads(path.read_text())

    def compatible(self, version: str) -> bool:
        """Whether this code can score with `version` (same feature set and rules), by its manifest."""
        m = self.manifest(version)
        return m.get("feature_set") == FEATURE_SET and m.get("rules_version") == rules_mod.RULES_VERSION

    def load(self, version: str) -> Artifact:
        manifest = self.manifest(version)
        path = self.models / f"{version}.pkl"
        if path.stat().st_size > MODEL_FILE_MAX_BYTES:
            raise ModelError(f"model file {path} is larger than {MODEL_FILE_MAX_BYTES} bytes")
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if f"m-{digest[:16]}" != version or digest != manifest.get("sha256"):
            raise ModelError(f"model {version}: content hash does not match its version")
        expected = hmac.new(self._secret(), blob, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(manifest.get("hmac_sha256", ""))):
            raise ModelError(f"model {version}: signature does not match; refusing to unpickle a file we did not write")
        if not self.compatible(version):
            raise ModelError(f"model {version} was trained on feature set {manifest.get('feature_set', 'f1')!r} and rules "
                             f"{manifest.get('rules_version')!r}; this code computes {FEATURE_SET!r} and {rules_mod.RULES_VERSION!r}")
        art = pickle.loads(blob)  # noqa: S301 - hash and HMAC verified above
        if not isinstance(art, Artifact) or tuple(art.feature_names) != FEATURE_NAMES:
            raise ModelError(f"model {version} was trained on other features")
        return art


# The default model ships with the code (`keel fraud train` with the defaults, seed 7). Its bytes
# are trusted because their SHA-256 is written here, in reviewed source; the file alone is not.
# It is used only with the scikit-learn it was pickled by; otherwise the default is retrained.
SHIPPED_MODEL = Path(__file__).parent / "default_model.pkl"
SHIPPED_MODEL_SHA256 = "9d0171084c7e31d3b69abb369ac0b1019c9b1d98421135c2039effa12634b0f6"
SHIPPED_MODEL_SKLEARN = "1.9.1"


def shipped_model() -> tuple[bytes, Artifact] | None:
    """The shipped default model's bytes and object, or None with another scikit-learn."""
    import sklearn

    if sklearn.__version__ != SHIPPED_MODEL_SKLEARN or not SHIPPED_MODEL.exists():
        return None
    blob = SHIPPED_MODEL.read_bytes()
    if hashlib.sha256(blob).hexdigest() != SHIPPED_MODEL_SHA256:
        raise ModelError(f"{SHIPPED_MODEL} does not match the hash in fraud/model.py; refusing to unpickle it")
    art = pickle.loads(blob)  # noqa: S301 - the hash above is pinned in our own source
    ok = isinstance(art, Artifact) and tuple(art.feature_names) == FEATURE_NAMES and art.feature_set == FEATURE_SET
    return (blob, art) if ok else None


# ---- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """One reason of a decision: a rule that fired or a single feature, the features it speaks
    for, and how much it moved the model's log-odds (raw minus raw with it set to typical)."""

    source: str  # "rule" | "feature"
    name: str
    features: tuple[str, ...]
    logit: float
    text: str


@dataclass(frozen=True)
class Decision:
    score: float
    level: str
    reasons: tuple[str, ...]
    model_probability: float
    rules: tuple[str, ...]
    explained: tuple[Reason, ...] = ()


class Forest:
    """The model's raw score, computed two ways that give the same float bit for bit.

    sklearn's predict costs ~2-3 ms per call in input checks and thread start-up, over the 5 ms
    budget at p99 on a busy machine. So small batches (one transfer and its explanation rows)
    walk the fitted trees as flat numpy arrays (~0.1 ms); large batches use sklearn's compiled
    `decision_function`. Both add the leaf values to the baseline one tree at a time in tree
    order, so the raw sums are identical, and one calibration turns them into probabilities:
    a score never depends on the batch it was computed in.
    """

    SMALL_BATCH_MAX = 64

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        nodes = [p[0].nodes for p in classifier._predictors]  # noqa: SLF001 - read-only use of fitted trees
        if any(n["is_categorical"].any() for n in nodes):
            raise ModelError("categorical splits are not supported")
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        flat = np.concatenate(nodes)
        shift = np.repeat(offsets, [len(n) for n in nodes])
        self.roots = offsets.astype(np.int64)
        self.leaf = flat["is_leaf"].astype(bool)
        self.feature = flat["feature_idx"].astype(np.int64)
        self.threshold = flat["num_threshold"].astype(np.float64)
        self.missing_left = flat["missing_go_to_left"].astype(bool)
        # A leaf's children are itself: walking one level too many stays on the leaf.
        itself = np.arange(len(flat), dtype=np.int64)
        self.left = np.where(self.leaf, itself, flat["left"].astype(np.int64) + shift)
        self.right = np.where(self.leaf, itself, flat["right"].astype(np.int64) + shift)
        self.value = flat["value"].astype(np.float64)
        self.base = float(classifier._baseline_prediction.ravel()[0])  # noqa: SLF001
        self.depth = int(flat["depth"].max()) + 1
        self.used = frozenset(int(j) for j in np.unique(self.feature[~self.leaf]))  # input columns any split reads

    def raw_small(self, x: np.ndarray) -> list[float]:
        n, trees = x.shape[0], len(self.roots)
        node = np.tile(self.roots, n)  # (row, tree) at row * trees + tree
        at = np.repeat(np.arange(n, dtype=np.int64) * x.shape[1], trees)
        flat = np.ascontiguousarray(x).ravel()
        for _ in range(self.depth - 1):
            xv = flat[at + self.feature[node]]
            go_left = xv <= self.threshold[node]
            missing = np.isnan(xv)
            if missing.any():
                go_left = np.where(missing, self.missing_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        node = node.reshape(n, trees)
        # The baseline, then each tree's leaf value in tree order, one addition at a time: exactly
        # sklearn's sum (it adds one tree's predictions at a time). cumsum is that sequential sum.
        values = np.empty((x.shape[0], len(self.roots) + 1))
        values[:, 0] = self.base
        values[:, 1:] = self.value[node]
        return np.cumsum(values, axis=1)[:, -1].tolist()

    def raw_large(self, x: np.ndarray) -> list[float]:
        with one_thread():
            return [float(r) for r in self.classifier.decision_function(x)]

    def raw(self, x: np.ndarray) -> list[float]:
        return self.raw_small(x) if x.shape[0] <= self.SMALL_BATCH_MAX else self.raw_large(x)


_controller: ThreadpoolController | None = None


def one_thread() -> Any:
    """Native thread pools (OpenMP, BLAS) limited to one thread: a scoring call is small, and
    the cores belong to the service. The controller is built once: finding the libraries costs
    more than a page of scoring (threadpool_limits() looks for them on every call)."""
    global _controller  # noqa: PLW0603 - one per process, built on first use
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1)


class Scorer:
    """Scores recorded feature vectors with one model version. The levels are the model's own
    (chosen by policy when it was trained) unless `elevated` / `high` override them."""

    def __init__(self, artifact: Artifact, version: str, *, elevated: float | None = None, high: float | None = None) -> None:
        if artifact.feature_set != FEATURE_SET or artifact.rules_version != rules_mod.RULES_VERSION:
            raise ModelError(f"model {version} was made for {artifact.feature_set}/{artifact.rules_version}")
        self.artifact = artifact
        self.version = version
        self.elevated = artifact.levels[ELEVATED] if elevated is None else elevated
        self.high = artifact.levels[HIGH] if high is None else high
        self.levels_overridden = elevated is not None or high is not None
        if not 0.0 < self.elevated <= self.high <= 1.0:
            raise ValueError(f"levels must satisfy 0 < elevated <= high <= 1 (elevated {self.elevated}, high {self.high}); "
                             "check KEEL_FRAUD_ELEVATED_THRESHOLD / KEEL_FRAUD_HIGH_THRESHOLD against the model's levels")
        self._baseline = artifact.baseline
        self._forest = Forest(artifact.classifier)
        self._calibrate = Calibration(artifact.calibrated)
        # Features the model reads, directly or through a rule; setting any other to typical changes nothing.
        self._rules_reading = [[k for k, r in enumerate(rules_mod.RULES) if name in r.uses] for name in FEATURE_NAMES]
        self._read = frozenset(j for j in range(len(FEATURE_NAMES)) if j in self._forest.used or self._rules_reading[j])

    def level(self, score: float) -> str:
        return HIGH if score >= self.high else ELEVATED if score >= self.elevated else LOW

    def raw_many(self, vectors: Sequence[Sequence[float]]) -> list[float]:
        """The model's log-odds before calibration."""
        return self._forest.raw(model_input(vectors))

    def probability(self, raw: float) -> float:
        return self._calibrate(raw)

    def score_many(self, vectors: Sequence[Sequence[float]]) -> list[Decision]:
        if not len(vectors):
            return []
        rows = [list(v) for v in vectors]
        x = model_input(rows)
        raws = self._forest.raw(x)
        probs = [self._calibrate(r) for r in raws]
        explained = self._explain([i for i, p in enumerate(probs) if p >= self.elevated], rows, x, raws)
        out = []
        for i, v in enumerate(rows):
            reasons = explained.get(i, ())
            out.append(Decision(score=probs[i], level=self.level(probs[i]), reasons=tuple(r.text for r in reasons),
                                model_probability=probs[i], rules=tuple(r.name for r in rules_mod.fired(v)), explained=reasons))
        return out

    def score(self, vector: Sequence[float]) -> Decision:
        return self.score_many([vector])[0]

    def _typical(self, v: Sequence[float], names: Iterable[str]) -> list[float]:
        """`v` with the features `names` set to their typical legitimate value (where known)."""
        w = list(v)
        for name in names:
            j = INDEX[name]
            if self._baseline[j] != NO_DATA:
                w[j] = self._baseline[j]
        return w

    def _explain(self, which: list[int], rows: list[list[float]], x: np.ndarray, raws: list[float]) -> dict[int, tuple[Reason, ...]]:
        """Reasons for what someone will read (elevated and high): each candidate is a feature
        with data that is away from its typical legitimate value, or a rule that fired; its weight
        is how far the model's log-odds fall when that feature (all of the rule's features) is set
        to typical, rules recomputed. Only candidates that pushed the score up by REASON_MIN_LOGIT
        are given, largest first, each feature spoken for once."""
        if not which:
            return {}
        occluded: list[np.ndarray] = []
        candidates: list[tuple[int, str, str]] = []  # (row, source, name)
        n_features = len(FEATURE_NAMES)
        for i in which:
            v = rows[i]
            for j, name in enumerate(FEATURE_NAMES):
                typical = self._baseline[j]
                if v[j] == typical or not rules_mod.has(v, name) or typical == NO_DATA or j not in self._read:
                    continue
                # As model_input([v with feature j typical]) computes it, rebuilding only what changes:
                # column j, and the rules that read feature j.
                row = x[i].copy()
                row[j] = typical
                if self._rules_reading[j]:
                    w = list(v)
                    w[j] = typical
                    for k in self._rules_reading[j]:
                        row[n_features + k] = 1.0 if rules_mod.RULES[k].test(w) else 0.0
                occluded.append(row[None, :])
                candidates.append((i, "feature", name))
            changed = [self._typical(v, rule.uses) for k, rule in enumerate(rules_mod.RULES) if x[i, n_features + k] == 1.0]
            candidates += [(i, "rule", rule.name) for k, rule in enumerate(rules_mod.RULES) if x[i, n_features + k] == 1.0]
            if changed:
                occluded.append(model_input(changed))  # all rules recomputed on the changed vectors
        drops = self._forest.raw(np.vstack(occluded)) if occluded else []
        by_row: dict[int, list[tuple[float, str, str]]] = {i: [] for i in which}
        for (i, source, name), dropped in zip(candidates, drops, strict=True):
            by_row[i].append((raws[i] - dropped, source, name))
        rules_by_name = {r.name: r for r in rules_mod.RULES}
        out: dict[int, tuple[Reason, ...]] = {}
        for i, cands in by_row.items():
            v = rows[i]
            spoken: set[str] = set()
            reasons: list[Reason] = []
            for logit, source, name in sorted(cands, key=lambda c: (-c[0], c[1], c[2])):
                if len(reasons) >= REASONS_MAX or logit < REASON_MIN_LOGIT:
                    break
                if source == "rule":
                    rule = rules_by_name[name]
                    if set(rule.uses) <= spoken:
                        continue
                    reasons.append(Reason("rule", name, rule.uses, logit, rule.reason(v)))
                    spoken.update(rule.uses)
                elif name not in spoken:
                    reasons.append(Reason("feature", name, (name,), logit, rules_mod.describe(name, v)))
                    spoken.add(name)
            out[i] = tuple(reasons)
        return out
