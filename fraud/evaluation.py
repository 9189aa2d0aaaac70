"""Evaluating a fraud model: replaying labelled activity through the live consumer's path
(`replay`, `keel fraud evaluate [--dataset]`), the quality report (ranking, each level's
precision / recall / false-positive rate, a reliability table), scoring latency, and the
precision-recall curve as SVG. It only reads a scorer; it never trains or stores a model.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import numpy as np

from domain.identity import transfer_key
from fraud.dataset import SIM_TENANT, Record, labels, ledger_events
from fraud.features import FeatureExtractor, Observed
from fraud.model import ELEVATED, HIGH, Decision, Scorer
from fraud.simulate import (
    DEFAULT_CUSTOMERS,
    DEFAULT_DAYS,
    DEFAULT_EVAL_SEED,
    DEFAULT_START,
    PATTERNS,
    SimConfig,
    simulate,
)

# The held-out evaluation period starts this long after the training period.
EVAL_OFFSET_DAYS = 91
PAGE_EVENTS = 500  # events per scoring call in a replay, as the consumer's pages (fraud/app.py READ_LIMIT)
RELIABILITY_BINS = 10
PR_CURVE_POINTS_MAX = 200


def replay(events: Iterable[Any], scorer: Scorer, page_events: int = PAGE_EVENTS) -> list[tuple[Observed, Decision]]:
    """Scores a stream of ledger events exactly as the live consumer does (fraud/app.py
    FraudConsumer._step): one FeatureExtractor in log order, each page's transfers scored in one
    `score_many` call (a score does not depend on its page anyway)."""
    ex = FeatureExtractor()
    out: list[tuple[Observed, Decision]] = []
    page: list[Observed] = []
    seen = 0

    def flush() -> None:
        out.extend(zip(page, scorer.score_many([o.features for o in page]), strict=True))
        page.clear()

    for event in events:
        o = ex.observe(event)
        if o is not None:
            page.append(o)
        seen += 1
        if seen % page_events == 0:
            flush()
    flush()
    return out


def _pr_curve(y: np.ndarray, s: np.ndarray) -> list[tuple[float, float, float]]:
    """(recall, precision, threshold) at each distinct score, thinned to PR_CURVE_POINTS_MAX."""
    order = np.argsort(-s, kind="stable")
    ss, hits = s[order], y[order]
    tp = np.cumsum(hits)
    last = np.r_[ss[1:] != ss[:-1], True]
    n = np.nonzero(last)[0] + 1
    recall, precision = tp[last] / max(1, int(y.sum())), tp[last] / n
    keep = np.unique(np.linspace(0, len(n) - 1, min(len(n), PR_CURVE_POINTS_MAX)).astype(int))
    return [(float(recall[k]), float(precision[k]), float(ss[last][k])) for k in keep]


def reliability(y: np.ndarray, s: np.ndarray, bins: int = RELIABILITY_BINS) -> tuple[list[dict[str, float]], float]:
    """A reliability table over equal-width score bins, and the expected calibration error
    (the count-weighted mean of |mean score - fraud rate| over the bins)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        if not n:
            continue
        mean, rate = float(s[m].mean()), float(y[m].mean())
        ece += n / len(y) * abs(mean - rate)
        table.append({"from": float(edges[b]), "to": float(edges[b + 1]), "transfers": n, "mean_score": mean, "fraud_rate": rate})
    return table, float(ece)


def quality(y: np.ndarray, s: np.ndarray, levels: dict[str, float], patterns: Sequence[str] | None = None) -> dict[str, Any]:
    """Ranking, each level's precision / recall / false-positive rate, calibration."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    two = len(np.unique(y)) >= 2
    out: dict[str, Any] = {
        "transfers": int(len(y)), "fraud": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, s)) if two else None,
        "average_precision": float(average_precision_score(y, s)) if two else None,
        "levels": {},
    }
    legit = y == 0
    for name in (HIGH, ELEVATED):
        flagged = s >= levels[name]
        tp = int((flagged & (y == 1)).sum())
        out["levels"][name] = {
            "threshold": levels[name], "flagged": int(flagged.sum()),
            "precision": tp / int(flagged.sum()) if flagged.any() else None,
            "recall": tp / int(y.sum()) if y.any() else None,
            "false_positive_rate": float((flagged & legit).sum() / max(1, int(legit.sum()))),
        }
        if patterns is not None:
            per = {}
            for pattern in PATTERNS:
                m = np.array([p == pattern for p in patterns])
                per[pattern] = {"transfers": int(m.sum()), "recall": float((flagged & m).sum() / m.sum()) if m.any() else None}
            out["levels"][name]["per_pattern"] = per
    out["reliability"], out["expected_calibration_error"] = reliability(y, s)
    # The plain ECE is dominated by the lowest bin, where nearly every transfer is; this one is
    # over the transfers anyone looks at (score >= 0.1).
    upper = [b for b in out["reliability"] if b["from"] >= 1 / RELIABILITY_BINS - 1e-12]
    n_upper = sum(b["transfers"] for b in upper)
    out["expected_calibration_error_from_0_1"] = (
        sum(b["transfers"] * abs(b["mean_score"] - b["fraud_rate"]) for b in upper) / n_upper if n_upper else None)
    out["pr_curve"] = _pr_curve(y, s) if two else []
    return out


def evaluate_records(scorer: Scorer, records: Sequence[Record], *, tenant: str = SIM_TENANT,
                     latency_samples: int = 2000) -> dict[str, Any]:
    """Replays labelled records through the consumer's path and measures quality and latency."""
    lab = {transfer_key(tenant, public_id): v for public_id, v in labels(records).items()}
    scored = replay(ledger_events(records, tenant=tenant), scorer)
    y = np.array([lab[o.transfer_key][0] for o, _ in scored], dtype=np.int64)
    s = np.array([d.score for _, d in scored], dtype=np.float64)
    patterns = [lab[o.transfer_key][1] for o, _ in scored]
    out: dict[str, Any] = {"model_version": scorer.version, "levels_overridden": scorer.levels_overridden}
    out.update(quality(y, s, {HIGH: scorer.high, ELEVATED: scorer.elevated}, patterns))
    out["latency_ms"] = scoring_latency(records, scorer, latency_samples, tenant=tenant)
    return out


def heldout_config(seed: int = DEFAULT_EVAL_SEED, customers: int = DEFAULT_CUSTOMERS, days: int = DEFAULT_DAYS) -> SimConfig:
    """A period no default training saw: another seed, starting EVAL_OFFSET_DAYS later."""
    return SimConfig(seed=seed, customers=customers, days=days, start=DEFAULT_START + timedelta(days=EVAL_OFFSET_DAYS))


def evaluate(scorer: Scorer, *, seed: int = DEFAULT_EVAL_SEED, customers: int = DEFAULT_CUSTOMERS, days: int = DEFAULT_DAYS,
             latency_samples: int = 2000) -> dict[str, Any]:
    """Quality on a held-out simulated period (another seed, a later start) and scoring latency."""
    config = heldout_config(seed, customers, days)
    out = evaluate_records(scorer, simulate(config), latency_samples=latency_samples)
    out["dataset"] = f"simulated: seed {seed}, {customers} customers, {days} days"
    return out


def scoring_latency(records: Sequence[Record], scorer: Scorer, samples: int, *, tenant: str = SIM_TENANT) -> dict[str, float]:
    """Per transfer, one at a time: feature extraction plus scoring (with explanation when due),
    on the last `samples` transfers of the stream (the first ones have no history)."""
    return event_scoring_latency(list(ledger_events(records, tenant=tenant)), scorer, samples)


def event_scoring_latency(events: Sequence[Any], scorer: Scorer, samples: int) -> dict[str, float]:
    """`scoring_latency` over ledger events as the log holds them."""
    transfers = [i for i, e in enumerate(events) if hasattr(e, "debit_account_id")]
    begin = transfers[-samples] if len(transfers) > samples else 0
    ex = FeatureExtractor()
    for event in events[:begin]:
        ex.observe(event)
    times: list[float] = []
    cpu: list[float] = []
    for event in events[begin:]:
        t0, c0 = time.perf_counter(), time.thread_time()
        o = ex.observe(event)
        if o is not None:
            scorer.score(o.features)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    if not times:
        return {"samples": 0}
    arr = np.array(times) * 1000
    # Wall time includes being descheduled on a busy machine; thread CPU time is the work itself.
    cpu_ms = np.array(cpu) * 1000
    return {"samples": len(times), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()), "cpu_p50": float(np.percentile(cpu_ms, 50)), "cpu_p99": float(np.percentile(cpu_ms, 99))}


def evaluate_recorded(scorer: Scorer, ledger: Any, app: Any, labelled: dict[UUID, tuple[int, str]], tenant: str, *,
                      latency_samples: int = 2000) -> dict[str, Any]:
    """Quality of `scorer` on history already in `ledger` (an imported, labelled file: `keel fraud
    evaluate --dataset`), scored by the live consumer itself (FraudConsumer, page by page, with
    the refusals the ledger recorded) into `app`, then joined to the labels by transfer id.
    `labelled`: (label, pattern) by public transfer id. Rows the ledger refused were never scored:
    they are counted apart (`refused`, `refused_fraud`)."""
    from fraud.app import LEDGER_TOPICS, FraudConsumer

    consumer = FraudConsumer(ledger, app, lambda: scorer)
    consumer.tick()
    y, s, patterns = [], [], []
    refused = refused_fraud = 0
    for public_id, (label, pattern) in labelled.items():
        found = app.find_assessment(transfer_key(tenant, public_id))
        if found is None:
            refused += 1
            refused_fraud += label
            continue
        y.append(label)
        s.append(found.score)
        patterns.append(pattern)
    out: dict[str, Any] = {"model_version": scorer.version, "levels_overridden": scorer.levels_overridden,
                           "labelled": len(labelled), "refused": refused, "refused_fraud": refused_fraud}
    known = [p for p in patterns if p] and all(not p or p in PATTERNS for p in patterns)
    out.update(quality(np.array(y, dtype=np.int64), np.array(s, dtype=np.float64),
                       {HIGH: scorer.high, ELEVATED: scorer.elevated}, patterns if known else None))
    events: list[Any] = []
    position = 0
    while True:
        notes = ledger.recorder.select_notifications(start=position, limit=PAGE_EVENTS * 10, topics=LEDGER_TOPICS,
                                                     inclusive_of_start=False)  # fmt: skip
        if not notes:
            break
        events.extend(ledger.mapper.to_domain_event(n) for n in notes)
        position = notes[-1].id
    out["latency_ms"] = event_scoring_latency(events, scorer, latency_samples)
    return out


# ---- the precision-recall curve as a small SVG --------------------------------------------


def pr_curve_svg(report: dict[str, Any], title: str) -> str:
    """The precision-recall curve of a `quality` report with each level marked, as SVG text."""
    width, height, pad = 480, 360, 48
    plot_w, plot_h = width - 2 * pad, height - 2 * pad

    def px(recall: float, precision: float) -> tuple[float, float]:
        return pad + recall * plot_w, pad + (1 - precision) * plot_h

    def esc(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{esc(title)}</text>']
    for k in range(6):
        f = k / 5
        x, y = px(f, f)
        parts.append(f'<line x1="{pad}" y1="{y:.1f}" x2="{pad + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{pad + plot_h}" stroke="#ddd"/>')
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{f:.1f}</text>')
        parts.append(f'<text x="{x:.1f}" y="{pad + plot_h + 16}" text-anchor="middle">{f:.1f}</text>')
    parts.append(f'<rect x="{pad}" y="{pad}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">recall</text>')
    parts.append(f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">precision</text>')
    points = " ".join("{:.1f},{:.1f}".format(*px(r, p)) for r, p, _ in report["pr_curve"])
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fbf" stroke-width="2"/>')
    for name, colour in ((HIGH, "#c0392b"), (ELEVATED, "#e67e22")):
        lv = report["levels"][name]
        if lv["precision"] is None or lv["recall"] is None:
            continue
        x, y = px(lv["recall"], lv["precision"])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" fill="{colour}">{name} &#8805; {lv["threshold"]:.3f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
