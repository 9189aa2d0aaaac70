"""Webhooks for `banking` keys: register (`POST /v1/webhooks`, the signing secret shown once), list,
show (with the delivery state: status, attempts, last error) and delete — all within the caller's
tenant: another tenant's webhook id answers exactly like one that does not exist (404).

The URL is checked before anything is stored (application/webhooks.py: https, no credentials;
infrastructure/webhooks.py: the host's addresses must be public unless KEEL_WEBHOOK_ALLOW_HOSTS
lists it): a refused URL is 422 `validation_error` with `field: url`. Deliveries start with the
first event recorded after the registration. The secret is never shown again (nor logged).
"""
from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, PathParameter
from msgspec import Meta

from api.auth import banking_tenant, require_roles
from api.routes_banking import READ_PROBLEMS, WRITE_PROBLEMS
from api.schemas import UUID_PATTERN, strict_body
from api.services import Services
from application.feed import EVENT_TYPES, TYPES_MAX
from application.webhooks import DESCRIPTION_CHARS_MAX, URL_CHARS_MAX, check_registration
from domain.errors import ValidationFailed
from infrastructure.webhooks import Webhook

EventTypeName = Literal[("*", *EVENT_TYPES)]  # type: ignore[valid-type] - the public types, or `*`
WEBHOOK_EXAMPLE = {"url": "https://hooks.example.com/keel", "types": ["transfer.posted"], "description": "ledger sync"}
WebhookIdParam = Annotated[str, PathParameter(description="The webhook's id (a UUID).", pattern=UUID_PATTERN)]


class WebhookCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=URL_CHARS_MAX, pattern="^https?://[^/?#@\\s]+", description="Where to POST each event: https "
                             "(http only for hosts in KEEL_WEBHOOK_ALLOW_HOSTS), resolving to public addresses.")]
    types: Annotated[list[EventTypeName], Meta(
        max_length=TYPES_MAX, description="Event types to deliver (as in GET /v1/events); omitted or `[\"*\"]`: all.",
    )] | None = None  # fmt: skip
    description: Annotated[str, Meta(max_length=DESCRIPTION_CHARS_MAX)] | None = None


class WebhookOut(msgspec.Struct, frozen=True):
    id: UUID
    url: str
    types: list[str]  # ["*"]: every type
    description: str | None
    status: str  # active | failing (retrying for over 24 h, still retried hourly) | disabled (receiver said 410)
    created_at: str
    delivered: int  # events delivered so far
    attempts: int  # failed tries in a row of the event now due (0 when all is well)
    next_attempt_at: str | None  # when the next try is due after a failure
    last_error: str | None
    last_attempt_at: str | None  # of the last failed try
    last_delivered_at: str | None


class WebhookCreated(msgspec.Struct, frozen=True):
    id: UUID
    url: str
    types: list[str]
    description: str | None
    status: str
    created_at: str
    secret: str  # whsec_…: verify each delivery's Keel-Signature with it; shown only now


class WebhookList(msgspec.Struct, frozen=True):
    items: list[WebhookOut]


def _iso_ms(ms: int) -> str | None:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds") if ms > 0 else None


def _out(w: Webhook) -> WebhookOut:
    return WebhookOut(
        id=UUID(w.id), url=w.url, types=w.types if w.types is not None else ["*"], description=w.description,
        status=w.status, created_at=w.created_at, delivered=w.delivered, attempts=w.attempts,
        next_attempt_at=_iso_ms(w.next_attempt_at_ms) if w.attempts else None, last_error=w.last_error,
        last_attempt_at=w.last_attempt_at, last_delivered_at=w.last_delivered_at,
    )  # fmt: skip


def _webhook_id(raw: str) -> str:
    try:
        return str(UUID(raw))
    except ValueError:
        raise ValidationFailed("webhook_id must be a UUID", field="webhook_id") from None


def _create(services: Services, tenant: str, body: WebhookCreate) -> tuple[Webhook, str]:
    spec = check_registration(body.url, body.types, body.description,
                              insecure_hosts=services.settings.webhook_allowed_hosts)  # fmt: skip
    services.url_guard.check_registration(spec)  # resolves the host: in this worker thread
    return services.webhooks.create(tenant, spec, after_id=services.feed.head())


@post(
    "/webhooks",
    summary="Register a webhook (its signing secret is shown only in this answer)",
    description="Keel POSTs each of the tenant's events recorded from now on (the body as in GET /v1/events) to "
    "`url`, in order, at least once, with headers `Keel-Webhook-Id`, `Keel-Event-Id` and `Keel-Signature: "
    "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\" keyed with the secret>`. Answer 2xx within 5 s; "
    "anything else is retried with exponential backoff for at least 24 h (then the webhook shows `failing` and is "
    "retried hourly); 410 disables it. URLs resolving to loopback, private, link-local or metadata addresses are "
    "refused (422) unless allowed by the operator.",
    status_code=201,
    responses=WRITE_PROBLEMS,
)
async def create_webhook(
    request: Request,
    services: NamedDependency[Any],
    data: Annotated[WebhookCreate, Body(description="The webhook to register", examples=[Example(value=WEBHOOK_EXAMPLE)])],
) -> Response[WebhookCreated]:
    tenant = banking_tenant(request)
    body = await strict_body(request, WebhookCreate)
    webhook, secret = await anyio.to_thread.run_sync(_create, services, tenant, body)
    out = WebhookCreated(
        id=UUID(webhook.id), url=webhook.url, types=webhook.types if webhook.types is not None else ["*"],
        description=webhook.description, status=webhook.status, created_at=webhook.created_at, secret=secret,
    )  # fmt: skip
    return Response(out, status_code=201, headers={"Cache-Control": "no-store"})


@get("/webhooks", summary="The tenant's webhooks", responses=READ_PROBLEMS)
async def list_webhooks(request: Request, services: NamedDependency[Any]) -> WebhookList:
    tenant = banking_tenant(request)
    found = await anyio.to_thread.run_sync(services.webhooks.list, tenant)
    return WebhookList(items=[_out(w) for w in found])


@get(
    "/webhooks/{webhook_id:str}",
    summary="One webhook with its delivery state",
    description="`status`, `delivered`, and after failures `attempts`, `next_attempt_at`, `last_error`.",
    responses=READ_PROBLEMS,
)
async def get_webhook(request: Request, services: NamedDependency[Any], webhook_id: WebhookIdParam) -> WebhookOut:
    tenant = banking_tenant(request)
    wid = _webhook_id(webhook_id)
    return _out(await anyio.to_thread.run_sync(services.webhooks.get, tenant, wid))


@delete("/webhooks/{webhook_id:str}", summary="Delete a webhook (no more deliveries)", status_code=204,
        responses=READ_PROBLEMS)  # fmt: skip
async def delete_webhook(request: Request, services: NamedDependency[Any], webhook_id: WebhookIdParam) -> None:
    tenant = banking_tenant(request)
    wid = _webhook_id(webhook_id)
    await anyio.to_thread.run_sync(services.webhooks.delete, tenant, wid)


router = Router(
    path="/v1", guards=[require_roles("banking")], tags=["webhooks"],
    route_handlers=[create_webhook, list_webhooks, get_webhook, delete_webhook],
)  # fmt: skip
