"""The Litestar application: `create_app(container)` mounts every router of `ROUTERS`.

To add a route family, write `api/routes_<name>.py` exporting `router` (a Litestar Router with
its guards, e.g. `guards=[require_roles("auditor")]` from api.auth) and add one import and one
entry to ROUTERS below. Authentication, rate limiting, error mapping (api.errors), metrics and
the 64 KiB body limit apply to every router. The app never builds Applications itself: it is
handed a Container by the composition root (keel.bootstrap / keel.serve).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api import routes_banking, routes_ops
from api.auth import KeyAuthMiddleware, KeyCache, RateLimitMiddleware, TokenBucket, is_public_path
from api.errors import EXCEPTION_HANDLERS
from api.metrics import LatencyMiddleware, Metrics
from api.openapi import StrictStructSchemaPlugin, document_problems
from keel.bootstrap import Container, key_store

log = logging.getLogger(__name__)

REQUEST_BODY_MAX_BYTES = 64 * 1024
RATE_LIMIT_BURST_S = 2.0  # a key may burst this many seconds' worth of requests

ROUTERS = [
    routes_ops.router,
    routes_banking.router,
]


def create_app(
    container: Container,
    *,
    on_startup: Sequence[Callable[[], Any]] = (),
    on_shutdown: Sequence[Callable[[], Any]] = (),
    debug: bool = False,
) -> Litestar:
    metrics = Metrics()
    # The writer reports each commit; chain any hook that was already installed.
    previous_hook = container.writer._on_commit  # noqa: SLF001

    def on_commit(commands: int, weight: int, seconds: float) -> None:
        metrics.on_commit(commands, weight, seconds)
        if previous_hook is not None:
            previous_hook(commands, weight, seconds)

    container.writer._on_commit = on_commit  # noqa: SLF001

    rate = container.settings.rate_limit_per_s
    state = State(
        {
            "container": container,
            "api_keys": KeyCache(key_store(container).get),
            "rate_limiter": TokenBucket(rate, max(1.0, rate * RATE_LIMIT_BURST_S)) if rate > 0 else None,
            "idempotency_in_flight": set(),
            "metrics": metrics,
        }
    )
    app = Litestar(
        route_handlers=list(ROUTERS),
        state=state,
        middleware=[
            LatencyMiddleware,
            DefineMiddleware(KeyAuthMiddleware),
            RateLimitMiddleware,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=REQUEST_BODY_MAX_BYTES,
        plugins=[StrictStructSchemaPlugin()],
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=OpenAPIConfig(
            title="Keel",
            version="1.0.0",
            description="Event-sourced transaction backend. Amounts are integers in minor units. "
            "Errors are RFC 9457 problem+json with a stable `code`. Authenticate with "
            "`Authorization: Bearer <token>` (`keel keys create`).",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
            security=[{"bearer": []}],
            path="/schema",
        ),
        debug=debug,
    )
    document_problems(app, is_public_path)
    return app


__all__ = ["ROUTERS", "create_app"]
