"""Operations routes: liveness, readiness and Prometheus metrics. No authentication."""
from __future__ import annotations

import logging
from typing import Any

from litestar.di import NamedDependency
from litestar import Response, Router, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.errors import problem_response, schema_missing
from api.metrics import Metrics
from api.services import Services

log = logging.getLogger(__name__)

READINESS_PROBE_KEY_ID = "0" * 16  # never issued: key ids are random
READY_TIMEOUT_S = 5


@get("/healthz", sync_to_thread=False, summary="Liveness: the process is up", description="No key needed.")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _not_ready_because(services: NamedDependency[Services]) -> str | None:
    # One read of the event store, then the schema's version: a reachable but unmigrated (or
    # partly migrated) database is not ready either, and says so.
    services.ledger.recorder.max_notification_id()  # type: ignore[attr-defined]
    services.keys.get(READINESS_PROBE_KEY_ID)  # a table `keel migrate` makes (a dropped one is caught too)
    return services.store.schema_status().problem


@get(
    "/readyz",
    summary="Readiness: the event store answers and is migrated",
    description="200 `{\"status\": \"ready\"}` when a query of the event store succeeds within 5 s and its schema is "
    "at this version. Otherwise 503 problem: `unavailable` (not reachable) or `not_migrated` (reachable, but "
    "`keel migrate` has not run: the detail says which version it is at). No key needed.",
)
async def readyz(services: NamedDependency[Any]) -> Response:  # api.services.Services (a Protocol: not checkable)
    import anyio

    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            # Abandon the thread on timeout: a store that hangs must not hang the probe too.
            problem = await anyio.to_thread.run_sync(_not_ready_because, services, abandon_on_cancel=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness check failed: %s", type(e).__name__)
        if schema_missing(e):
            return problem_response("not_migrated", "not migrated: the store has no Keel schema: run `keel migrate`")
        return problem_response("unavailable", "the event store is not reachable")
    if problem:
        return problem_response("not_migrated", f"not migrated: {problem}")
    return Response({"status": "ready"})


@get(
    "/metrics",
    summary="Prometheus metrics of this process",
    description="Request latency by route, transfers committed, group-commit batch sizes. No key needed.",
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# `[{}]` overrides the app-wide bearer requirement in the OpenAPI document: these routes are
# public (api.auth.PUBLIC_PATHS); an empty list would be dropped and inherit the global one.
PUBLIC = [{}]

router = Router(path="/", route_handlers=[healthz, readyz, metrics], tags=["operations"], security=PUBLIC)
