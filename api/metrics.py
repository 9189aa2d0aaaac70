"""Prometheus metrics of one API process (each uvicorn worker exposes its own /metrics).

A registry per app, not the global one, so several apps can live in one test process.
Labels are bounded: the route template (never the raw path), the method and the status class.
"""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from litestar.types import Scope

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_latency = Histogram(
            "keel_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.transfers_committed = Counter(
            "keel_transfers_committed",
            "Transfers (incl. deposits, withdrawals, reversals, batch items) that writes of this process "
            "answered as done; a repeated transfer id counts again, a replayed Idempotency-Key does not",
            registry=self.registry,
        )
        self.commands_committed = Counter(
            "keel_group_commit_commands",
            "Commands committed by the group-commit writer (a batch counts its transfers)",
            registry=self.registry,
        )
        self.commit_batch_size = Histogram(
            "keel_group_commit_batch_commands",
            "Commands per group commit",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "keel_group_commit_duration_seconds",
            "Time to apply and commit one group commit",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def on_commit(self, commands: int, weight: int, seconds: float) -> None:
        """The writer's hook: called on its thread after every successful commit."""
        self.commands_committed.inc(weight)
        self.commit_batch_size.observe(commands)
        self.commit_seconds.observe(seconds)


def observe_latency(scope: Scope, status: int, seconds: float) -> None:
    metrics: Metrics | None = scope["app"].state.get("metrics")
    if metrics is not None:
        route: Any = scope.get("path_template") or "unmatched"
        metrics.request_latency.labels(scope.get("method", "?"), route, f"{status // 100}xx").observe(seconds)


class LedgerAndFraudCollector:
    """Read at scrape time: this process's optimistic-concurrency re-runs, and how far the fraud
    consumer (maybe another process) has scored the log, from its tracking position."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        retries = CounterMetricFamily(
            "keel_ledger_conflict_retries", "Group commits re-run after an optimistic-concurrency conflict (this process)"
        )
        retries.add_metric([], self.services.ledger.conflict_retries)
        yield retries
        try:
            position = self.services.fraud.app.position()
            head = self.services.ledger.recorder.max_notification_id() or 0
        except Exception:  # noqa: BLE001 - a scrape must not fail while the database restarts
            return
        pos = GaugeMetricFamily("keel_fraud_position", "Last ledger log position scored by the fraud consumer")
        pos.add_metric([], position)
        lag = GaugeMetricFamily("keel_fraud_lag_events", "Ledger events not yet seen by the fraud consumer")
        lag.add_metric([], max(0, head - position))
        yield pos
        yield lag


class ProjectionLagCollector:
    """Projection position and lag read from the database at scrape time. The worker may be
    another process (PostgreSQL), so the API reports what the views hold."""

    def __init__(self, read_side: Any) -> None:
        self.read_side = read_side

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        try:
            status = self.read_side.projections()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is restarting
            log.warning("projection status unavailable for /metrics", exc_info=True)
            return
        families = {
            "position": GaugeMetricFamily("keel_projection_position", "Last log position applied to the views", labels=["projection"]),
            "lag_events": GaugeMetricFamily("keel_projection_lag_events", "Log events not yet in the views", labels=["projection"]),
            "lag_ms": GaugeMetricFamily("keel_projection_lag_ms", "Age of the oldest event not yet in the views", labels=["projection"]),
        }
        for p in status["projections"]:
            for key, family in families.items():
                family.add_metric([p["name"]], p[key])
        head = GaugeMetricFamily("keel_event_log_head", "Highest notification position in the ledger's log")
        head.add_metric([], status["head"])
        yield from families.values()
        yield head


class FraudScoringMetrics:
    """In-process scoring latency (per transfer) when the fraud consumer runs in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scoring_seconds = Histogram(
            "keel_fraud_scoring_seconds",
            "Scoring time per transfer (features, rules and model), averaged over each scored page",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
            registry=registry,
        )

    def on_scored(self, count: int, seconds: float) -> None:
        per = seconds / max(count, 1)
        for _ in range(min(count, 1000)):
            self.scoring_seconds.observe(per)
