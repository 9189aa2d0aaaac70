"""The model's promises, checked on the model the service uses (the shipped default, or the
small seeded one with another scikit-learn): a larger amount never scores lower; every reason is
true of its feature vector; levels come from a policy and travel with the model; calibration and
the time split; `keel fraud evaluate --dataset` replays a file as the live consumer would."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.transfer import DEPOSIT, TRANSFER, WITHDRAWAL
from fraud import rules as rules_mod
from fraud.dataset import SimTransfer, ledger_events, write_dataset
from fraud.evaluation import reliability, replay
from fraud.features import FEATURE_NAMES, INDEX, NO_DATA, THRESHOLD_BAND_LOW_MINOR, THRESHOLD_MINOR, FeatureExtractor
from fraud.model import (
    ELEVATED,
    HIGH,
    REASON_MIN_LOGIT,
    Artifact,
    Calibration,
    ModelStore,
    Scorer,
    model_input,
    shipped_model,
)
from fraud.simulate import SimConfig, simulate
from fraud.training import LevelPolicy, choose_levels, ensure_model, split_by_time, training_set
from infrastructure.settings import load_settings
from tests.fraud.conftest import RICH
from tests.fraud.test_features import history, initiated, ops


@pytest.fixture(scope="module")
def scorer(small_model_dir: Path) -> Scorer:
    store = ModelStore(small_model_dir)
    version = store.current()
    assert version is not None
    return Scorer(store.load(version), version)


# ---- a larger amount never scores lower ----------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops, st.lists(st.integers(0, 1000), min_size=5, max_size=5), st.sampled_from([TRANSFER, TRANSFER, WITHDRAWAL, DEPOSIT]),
       st.integers(0, 4), st.integers(1, 4), st.integers(1, 5_000_000), st.integers(0, 5_000_000),
       st.sampled_from([1, 60, 3_000, 50_000, 400_000]))
def test_a_larger_amount_never_scores_lower(scorer: Scorer, draw_ops: list, overdrafts: list[int], kind: str, x: int,
                                            step: int, amount: int, more: int, gap_s: int) -> None:
    """The same transfer, other things equal (same history, same time, same accounts), with a
    larger amount: the model's output and the score never go down. The one exception by design:
    a deposit that rises out of the structuring band, from just under the reporting threshold to
    at or above it."""
    events = history(draw_ops, overdrafts)
    accounts = [e.originator_id for e in events[1:6]]
    settlement = events[0].originator_id
    ex = FeatureExtractor()
    for e in events:
        ex.observe(e)
    at = events[-1].timestamp + timedelta(seconds=gap_s)
    debit, credit = accounts[x], accounts[(x + step) % 5]
    if kind == DEPOSIT:
        debit, credit = settlement, accounts[x]
    elif kind == WITHDRAWAL:
        credit = settlement
    small, large = amount, amount + more
    if kind == DEPOSIT and THRESHOLD_BAND_LOW_MINOR <= small < THRESHOLD_MINOR <= large:
        large = small  # leaving the band upward is the documented exception
    vectors = [ex.peek(initiated(uuid4(), at, kind, debit, credit, a, False)).features for a in (small, large)]
    raw_small, raw_large = scorer.raw_many(vectors)
    assert raw_large >= raw_small, (kind, small, large, raw_small, raw_large)
    d_small, d_large = scorer.score_many(vectors)
    assert d_large.score >= d_small.score


# ---- reasons are true -------------------------------------------------------------------------


def _check_reasons(scorer: Scorer, vector: list[float], decision) -> int:  # noqa: ANN001
    """Every reason of `decision` against `vector`: its features have data, its words are those
    of the rule or feature with the vector's own numbers, and setting it to typical (for a rule,
    all of the rule's features) lowers the model's log-odds by what the reason claims, at least
    REASON_MIN_LOGIT."""
    if decision.score < scorer.elevated:
        assert decision.reasons == () and decision.explained == ()
        return 0
    assert 0 < len(decision.reasons) <= 4 or all(r.logit < REASON_MIN_LOGIT for r in decision.explained)
    assert decision.reasons == tuple(r.text for r in decision.explained)
    raw = scorer.raw_many([vector])[0]
    rules = {r.name: r for r in rules_mod.RULES}
    for r in decision.explained:
        assert all(rules_mod.has(vector, f) for f in r.features), (r, vector)
        if r.source == "rule":
            rule = rules[r.name]
            assert rule.test(vector) and r.name in decision.rules and r.text == rule.reason(vector) and r.features == rule.uses
            changed = list(vector)  # every feature the rule reads, set to typical
            for f in rule.uses:
                if scorer.artifact.baseline[INDEX[f]] != NO_DATA:
                    changed[INDEX[f]] = scorer.artifact.baseline[INDEX[f]]
            without = scorer.raw_many([changed])[0]
        else:
            assert r.features == (r.name,) and r.text == rules_mod.describe(r.name, vector)
            j = INDEX[r.name]
            typical = scorer.artifact.baseline[j]
            assert typical != NO_DATA and vector[j] != typical
            changed = list(vector)
            changed[j] = typical
            without = scorer.raw_many([changed])[0]
        assert math.isclose(raw - without, r.logit, rel_tol=1e-9, abs_tol=1e-12) and r.logit >= REASON_MIN_LOGIT, r
    return len(decision.explained)


def test_every_reason_is_true_of_its_feature_vector(scorer: Scorer) -> None:
    records = simulate(SimConfig(seed=21, customers=80, days=5, **RICH))
    checked = flagged = 0
    for o, d in replay(ledger_events(records), scorer):
        checked += _check_reasons(scorer, list(o.features), d)
        flagged += d.level != "low"
    assert flagged > 20 and checked > 2 * flagged // 2, (flagged, checked)


def test_an_account_with_no_history_gets_no_reason_from_history() -> None:
    """The complaint of issue #15: "amount is 0.0x this account's average" for an account with no
    average. A feature with no data can never be described, so it can never be a reason."""
    v = [0.0] * len(FEATURE_NAMES)
    v[INDEX["amount_to_mean"]] = NO_DATA
    with pytest.raises(ValueError, match="no data"):
        rules_mod.describe("amount_to_mean", v)
    assert not any(rules_mod.has(v, f) for r in rules_mod.RULES for f in r.uses if v[INDEX[f]] == NO_DATA and r.test(v))


# ---- levels by policy ---------------------------------------------------------------------------


def test_levels_are_stored_with_the_model_and_used_unless_overridden(small_model_dir: Path, scorer: Scorer) -> None:
    store = ModelStore(small_model_dir)
    manifest = store.manifest(scorer.version)
    levels = manifest["levels"]
    assert levels == scorer.artifact.levels and (scorer.elevated, scorer.high) == (levels[ELEVATED], levels[HIGH])
    assert 0 < levels[ELEVATED] <= levels[HIGH] < 1 and not scorer.levels_overridden
    assert set(manifest["meta"]["levels"]["validation"]) == {HIGH, ELEVATED}
    # Unset settings (None, the default) leave the model's levels; a set one overrides.
    defaults = load_settings({})
    assert defaults.fraud_high_threshold is None and defaults.fraud_elevated_threshold is None
    over = Scorer(scorer.artifact, scorer.version, high=0.97)
    assert over.high == 0.97 and over.elevated == levels[ELEVATED] and over.levels_overridden
    with pytest.raises(ValueError, match="elevated <= high"):
        Scorer(scorer.artifact, scorer.version, elevated=0.99, high=0.98)


def test_choose_levels_meets_the_targets_within_the_budget() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(20_000) < 0.02).astype(np.int64)
    s = np.clip(np.where(y == 1, rng.beta(6, 1.5, len(y)), rng.beta(1, 30, len(y))), 0, 1)
    policy = LevelPolicy(high_precision=0.9, high_budget=0.05, elevated_recall=0.95, elevated_budget=0.2)
    got = choose_levels(s, y, policy)
    for name, threshold in ((HIGH, got["high"]), (ELEVATED, got["elevated"])):
        flagged = s >= threshold
        v = got["validation"][name]
        assert v["met"]
        assert math.isclose(v["precision"], (flagged & (y == 1)).sum() / flagged.sum())
        assert math.isclose(v["recall"], (flagged & (y == 1)).sum() / y.sum())
    assert got["validation"][HIGH]["precision"] >= 0.9 and got["validation"][ELEVATED]["recall"] >= 0.95
    # The lowest threshold that keeps the precision: one step lower would not.
    lower = s[s < got["high"]].max()
    flagged = s >= lower
    assert (flagged & (y == 1)).sum() / flagged.sum() < 0.9 or flagged.mean() > policy.high_budget
    assert got["elevated"] <= got["high"]
    # A target out of reach falls back to the budget and says so.
    tight = choose_levels(s, y, LevelPolicy(high_precision=1.01, high_budget=0.01, elevated_recall=1.01, elevated_budget=0.02))
    assert not tight["validation"][HIGH]["met"] and tight["validation"][HIGH]["share_flagged"] <= 0.01
    assert not tight["validation"][ELEVATED]["met"] and tight["validation"][ELEVATED]["share_flagged"] <= 0.02


# ---- calibration and the time split ---------------------------------------------------------


def test_the_fast_calibration_is_sklearns(scorer: Scorer) -> None:
    x, _, _, _ = training_set(simulate(SimConfig(seed=22, customers=60, days=3, **RICH)))
    ours = [scorer.probability(r) for r in scorer.raw_many(x.tolist())]
    theirs = scorer.artifact.calibrated.predict_proba(model_input(x))[:, 1]
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12)
    assert Calibration(scorer.artifact.calibrated)(-50.0) <= Calibration(scorer.artifact.calibrated)(50.0)


def test_training_validation_and_the_recent_period_are_split_by_time() -> None:
    config = SimConfig(seed=23, customers=50, days=10, **RICH)
    _, _, _, observed = training_set(simulate(config))
    at = np.array([o.at_s for o in observed])
    train, val, recent = split_by_time(at, config)
    assert train.any() and val.any() and recent.any() and (train ^ val ^ recent).all()
    assert at[train].max() < at[val].min() <= at[val].max() < at[recent].min()


def test_a_current_model_of_an_older_feature_set_is_replaced_but_kept(tmp_path: Path) -> None:
    shipped = shipped_model()
    if shipped is None:
        pytest.skip("another scikit-learn: the shipped model is not used")
    store = ModelStore(tmp_path)
    blob, art = shipped
    old = Artifact(**{**art.__dict__, "feature_set": "f1"})
    old_version = store.save(old)
    assert not store.compatible(old_version)
    version = ensure_model(store)
    assert version != old_version and store.current() == version and store.compatible(version)
    assert store.manifest(old_version)["feature_set"] == "f1"  # still there, for the assessments that name it


# ---- keel fraud evaluate --dataset ----------------------------------------------------------


def test_keel_fraud_evaluate_imports_a_labelled_file_and_scores_it_as_the_consumer_would(
    model_dir: Path, tmp_path: Path, capsys, scorer: Scorer  # noqa: ANN001
) -> None:
    """`keel simulate --out` writes the generic import shape; `keel fraud evaluate --dataset`
    imports it through the ledger into a scratch store and scores it with the live consumer: the
    scores equal a direct replay of the simulator's events (the same features, the same model)."""
    from application.importing import imported_id
    from infrastructure.settings import load_settings
    from keel.cli import build_parser
    from keel.fraud_cli import run, simulate_cmd
    from keel.import_cli import read_rows

    settings = load_settings({}, fraud_model_dir=str(model_dir), database_url=f"sqlite:///{tmp_path}/k.db")
    plain = tmp_path / "plain.csv"
    assert simulate_cmd(build_parser().parse_args(["simulate", "--seed", "5", "--customers", "20", "--days", "2",
                                                   "--out", str(plain)]), settings) == 0
    simulated = [r for r in simulate(SimConfig(seed=5, customers=20, days=2)) if isinstance(r, SimTransfer)]
    rows = {imported_id("transfer", r.id): r for r in read_rows(str(plain)) if r.type != "open"}
    assert {t.transfer_id: (t.amount_minor, t.label, t.at) for t in simulated} == {
        k: (r.amount, r.label, r.occurred_at) for k, r in rows.items()}
    assert not (tmp_path / "k.db").exists()  # evaluating never touches the configured store
    records = simulate(SimConfig(seed=24, customers=80, days=4, **RICH))
    dataset, svg = tmp_path / "held-out.jsonl", tmp_path / "pr.svg"
    write_dataset(records, str(dataset))
    capsys.readouterr()
    argv = ["fraud", "evaluate", "--dataset", str(dataset), "--json", "--plot", str(svg), "--latency-samples", "50"]
    assert run(build_parser().parse_args(argv), settings) == 0
    report = json.loads(capsys.readouterr().out)
    scored = replay(ledger_events(records), scorer)
    y = np.array([r.label for r in records if hasattr(r, "label")])
    assert report["transfers"] == len(scored) == len(y) and report["fraud"] == int(y.sum())
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = [d.score for _, d in scored]
    assert report["roc_auc"] == roc_auc_score(y, s) and report["average_precision"] == average_precision_score(y, s)
    for name in (HIGH, ELEVATED):
        level = report["levels"][name]
        assert level["threshold"] == scorer.artifact.levels[name]
        assert level["flagged"] == sum(v >= level["threshold"] for v in s)
    assert not report["levels_overridden"] and 0 <= report["expected_calibration_error"] <= 1
    assert sum(b["transfers"] for b in report["reliability"]) == len(s) and report["latency_ms"]["samples"] == 50
    root = ET.parse(svg).getroot()
    names = {el.tag.split("}")[-1] for el in root.iter()}
    assert {"svg", "polyline", "circle", "text"} <= names and svg.stat().st_size < 40_000
    # The text report names the levels' source and every figure.
    assert run(build_parser().parse_args(["fraud", "evaluate", "--dataset", str(dataset), "--latency-samples", "10"]), settings) == 0
    text = capsys.readouterr().out
    for words in ("ROC-AUC", "average precision", "expected calibration error", "stored with the model", "high", "elevated",
                  "false-positive rate", "reliability", "p99"):
        assert words in text, words
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "transfer", "nonsense": 1}\n')
    assert run(build_parser().parse_args(["fraud", "evaluate", "--dataset", str(bad)]), settings) == 2
    assert "line 1" in capsys.readouterr().err
    assert not (tmp_path / "k.db").exists()


def test_reliability_table_and_expected_calibration_error() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    s = np.array([0.05, 0.05, 0.05, 0.05, 0.95, 0.95, 0.95, 0.95])
    table, ece = reliability(y, s)
    assert [(b["transfers"], b["fraud_rate"]) for b in table] == [(4, 0.25), (4, 0.75)]
    assert math.isclose(ece, 0.5 * 0.2 + 0.5 * 0.2)
