"""Background workers: long-running loops that follow the log or keep time.

Each entry of `WORKERS` builds a Worker for a Container. On PostgreSQL each runs as its own
process (`keel worker NAME`); in the embedded SQLite default `keel serve` runs all of them in
its own process. A Worker must survive SIGKILL at any point: whatever it writes carries its
tracking position in the same transaction, so a restart resumes without loss or repetition.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from application.expiry import HoldExpiry
from application.polling import PollingWorker, Worker
from keel.bootstrap import Container

log = logging.getLogger(__name__)


HOLD_EXPIRY_INTERVAL_S = 1.0
# KEEL_PG_POOL_SIZE caps it: a worker process needs few connections (README, settings).
WORKER_PG_POOL_SIZE = 2


def hold_expiry_worker(c: Container) -> Worker:
    expiry = HoldExpiry(c.ledger, c.writer.submit)
    return PollingWorker("expiry", expiry.expire_due, HOLD_EXPIRY_INTERVAL_S)


def projection_worker(c: Container) -> Worker:
    """Read models (infrastructure/projection_worker.py): follows the log into the views,
    tracking in the same commit."""
    from infrastructure.projection_worker import ProjectionWorker

    return ProjectionWorker(c.ledger, c.store.read_models, c.store.open_log_waiter)


def checkpoints_worker(c: Container) -> Worker:
    """Signs the chain head every KEEL_AUDIT_CHECKPOINT_INTERVAL_S, when it has moved."""
    audit = c.audit
    if audit.signer is None:
        log.warning("no audit signing key (keel keys audit-init): the checkpoints worker will not sign")

    def tick() -> None:
        if audit.signer is not None:
            audit.checkpoint(only_if_advanced=True)

    return PollingWorker("checkpoints", tick, c.settings.audit_checkpoint_interval_s)


def fraud_worker(c: Container) -> Worker:
    return PollingWorker("fraud", c.fraud.consumer.tick, c.settings.fraud_poll_interval_ms / 1000)


def feed_worker(c: Container) -> Worker:
    """The event feed (infrastructure/feed.py): follows the ledger's and the fraud module's logs
    into keel_feed, tracking in the same commit."""
    from infrastructure.feed import feed_worker as make

    fraud_app = c.fraud.app
    return make(c.store.sql, c.ledger, fraud_app, c.store.sql_over(fraud_app.recorder.datastore), c.store.open_log_waiter)


def webhooks_worker(c: Container) -> Worker:
    """Webhook deliveries (infrastructure/webhook_delivery.py), tracking per webhook."""
    from infrastructure.webhook_delivery import WebhookDelivery, WebhookWorker

    delivery = WebhookDelivery(c.webhooks, c.feed, c.url_guard, concurrency=c.settings.webhook_concurrency)
    return WebhookWorker(delivery)


# name -> factory. Other modules add their workers here (projections, fraud, checkpoints, ...).
WORKERS: dict[str, Callable[[Container], Worker]] = {
    "expiry": hold_expiry_worker,
    "projections": projection_worker,
    "checkpoints": checkpoints_worker,
    "fraud": fraud_worker,
    "feed": feed_worker,
    "webhooks": webhooks_worker,
}


IDEMPOTENCY_CLEANUP_INTERVAL_S = 60.0
IDEMPOTENCY_KEEP_S = 24 * 3600  # SPEC §5: stored responses are kept at least 24 hours
IDEMPOTENCY_CLAIM_MAX_S = 3600  # claims of killed processes (live ones last seconds)


def idempotency_cleanup_worker(c: Container) -> Worker:
    import time

    claims = c.claims

    def tick() -> None:
        claims.delete_older_than(int((time.time() - IDEMPOTENCY_CLAIM_MAX_S) * 1000))
        deleted = c.idempotency.delete_older_than(int((time.time() - IDEMPOTENCY_KEEP_S) * 1000))
        if deleted:
            log.info("deleted %d idempotency records older than %d s", deleted, IDEMPOTENCY_KEEP_S)

    return PollingWorker("idempotency_cleanup", tick, IDEMPOTENCY_CLEANUP_INTERVAL_S)


WORKERS["idempotency_cleanup"] = idempotency_cleanup_worker
