"""The Litestar application: `create_app(container)` mounts every router of `ROUTERS`.

To add a route family, write `api/routes_<name>.py` exporting `router` (a Litestar Router with
its guards, e.g. `guards=[require_roles("auditor")]` from api.auth) and add one import and one
entry to ROUTERS below. Authentication, rate limiting, error mapping (api.errors), metrics and
the 64 KiB body limit apply to every router. Conventions the routers share: path ids declared
`{account_id:str}` and parsed with `api.schemas.parse_uuid` (a bad UUID is 422, not 404);
bodies decoded with `api.schemas.strict_body` (Litestar's own decoding coerces "25" to 25);
database work in `anyio.to_thread.run_sync`; errors raised as DomainError or `api.errors.ApiError`.
The app never builds Applications itself: it is handed the services (api/services.py) the
composition root (keel.bootstrap) built whole, and hands them to route handlers as Litestar
dependencies by name (`ledger`, `writes`, `audit`, `read_side`, `fraud`, `writer`, `services`,
`metrics`).
`POST /v1/transfers` is first offered to api.fastpath (installed in front of Litestar's own
handler at the end of create_app), which answers ordinary requests with the same functions and
hands everything else to the Litestar route.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api import routes_analytics, routes_audit, routes_banking, routes_fraud, routes_history, routes_ops
from api import routes_events, routes_oauth, routes_webhooks
from api.event_stream import FeedHub
from api.jwt_auth import JwtAuthenticator
from api.access_log import close_access_log
from api.auth import KeyAuthMiddleware, KeyCache, RateLimitMiddleware, TokenBucket, is_public_path
from api.errors import EXCEPTION_HANDLERS
from api.fastpath import install as install_fast_path
from api.fastpath_reads import install as install_read_fast_path
from api.idempotency import WritePath
from api.metrics import FraudScoringMetrics, LedgerAndFraudCollector, Metrics, ProjectionLagCollector
from api.observe import ObserveMiddleware
from api.openapi import StrictStructSchemaPlugin, docs_assets_router, docs_render_plugin, document_problems, finish_document
from api.services import Services

log = logging.getLogger(__name__)

REQUEST_BODY_MAX_BYTES = 64 * 1024

ROUTERS = [
    routes_ops.router,
    routes_banking.router,
    routes_history.router,
    routes_analytics.router,
    routes_audit.router,
    routes_fraud.router,
    routes_events.router,
    routes_webhooks.router,
    routes_oauth.router,
]


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def create_app(
    services: Services,
    *,
    on_startup: Sequence[Callable[[], Any]] = (),
    on_shutdown: Sequence[Callable[[], Any]] = (),
    debug: bool = False,
) -> Litestar:
    metrics = Metrics()
    metrics.registry.register(ProjectionLagCollector(services.read_side))
    metrics.registry.register(LedgerAndFraudCollector(services))
    # Scoring latency, when the fraud consumer runs in this process (embedded SQLite default).
    services.fraud.consumer.on_scored = FraudScoringMetrics(metrics.registry).on_scored
    services.commit_hooks.add(metrics.on_commit)
    writes = WritePath(
        services.writer, services.idempotency, services.claims, services.ledger.holder_vault, metrics.transfers_committed
    )

    settings = services.settings
    rate = settings.rate_limit_per_s
    log_head = services.open_log_head()  # balance reads without a thread (api/fastpath_reads.py)
    # Middleware and the fast path (ASGI layers, not route handlers) read these from the app state.
    state = State(
        {
            "api_keys": KeyCache(services.keys.get),
            "rate_limiter": TokenBucket(rate, settings.effective_rate_limit_burst) if rate > 0 else None,
            "writes": writes,
            "audit": services.audit,
            "metrics": metrics,
            "ledger": services.ledger,  # the read fast path (api/fastpath_reads.py)
            "read_side": services.read_side,
            "log_head": log_head,
            "jwt": JwtAuthenticator(services.tokens),  # OAuth access tokens beside API keys (api/jwt_auth.py)
        }
    )
    feed_hub = FeedHub(services.feed, settings.sse_streams_per_key)  # SSE: one per process (api/event_stream.py)
    dependencies = {
        "services": _provide(services),
        "ledger": _provide(services.ledger),
        "writer": _provide(services.writer),
        "writes": _provide(writes),
        "audit": _provide(services.audit),
        "read_side": _provide(services.read_side),
        "fraud": _provide(services.fraud),
        "metrics": _provide(metrics),
        "feed": _provide(services.feed),
        "feed_hub": _provide(feed_hub),
    }
    app = Litestar(
        route_handlers=[*ROUTERS, docs_assets_router()],
        dependencies=dependencies,
        state=state,
        middleware=[
            ObserveMiddleware,  # outermost: latency of every request, access log of writes (also refused ones)
            DefineMiddleware(KeyAuthMiddleware),
            RateLimitMiddleware,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=REQUEST_BODY_MAX_BYTES,
        plugins=[StrictStructSchemaPlugin()],
        on_startup=list(on_startup),
        on_shutdown=[feed_hub.close, close_access_log, *([log_head.close] if log_head else []), *on_shutdown],  # hooks run in order: flush before the store closes
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
            # No generated filler: the examples are the ones written on the wire types and routes.
            create_examples=False,
            render_plugins=[docs_render_plugin()],  # /schema: Swagger UI served from the package, offline
        ),
        debug=debug,
        logging_config=None,  # the process's own logging (keel/logs.py): one format for every record
    )
    document_problems(app, is_public_path)
    install_read_fast_path(app)  # GET an account and its history without Litestar's overhead
    install_fast_path(app, REQUEST_BODY_MAX_BYTES)  # POST /v1/transfers, the same way (outermost)
    finish_document(app)  # after the last route: without Litestar's own 400, which the API never answers
    return app


__all__ = ["ROUTERS", "create_app"]
