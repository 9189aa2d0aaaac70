"""Fraud routes (SPEC §5): assessments for analysts and for the banking tenant that owns the
transfer, alerts and their review for analysts.

Identity (domain/identity.py): a banking key names a transfer by its public id, always resolved
inside its own tenant, so another tenant's transfer answers exactly like a missing one. An
analyst key is cross-tenant: it names a transfer by public id and `tenant=`, by its storage key
(the `aggregate_id` of `/v1/audit/events`), or by a public id that only one tenant uses. Bodies
show the transfer's public id and tenant (and, to analysts, its storage key `key`).

A transfer the ledger holds but the fraud consumer has not scored yet answers 202 with
`{"status": "pending", ...}` and `Retry-After`; an assessment answers 200 with `"status": "scored"`.

Reads and reviews run the fraud application's queries in a worker thread. Nothing here scores:
the consumer (worker "fraud") does, from the ledger's log.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from litestar.di import NamedDependency
from litestar import Request, Response, Router, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, PathParameter, QueryParameter

from fraud.service import FraudService
from api.auth import principal_of, require_roles
from api.errors import PROBLEM_MEDIA_TYPE, ApiError
from api.schemas import UUID_PATTERN, AlertIdParam, ProblemOut, strict_body
from domain.errors import NotFound, ValidationFailed
from domain.limits import TENANT_MAX_CHARS, TENANT_PATTERN, check_tenant
from fraud.app import ALERT_CURSOR_MAX, ALERT_PAGE_MAX, NOTE_MAX_CHARS, AlertView, Assessment
from fraud.features import FEATURE_NAMES

ALERTS_LIMIT_DEFAULT = 100
PENDING_RETRY_AFTER_S = 1

# As api.schemas.TransferIdParam (a str, so a malformed id is a 422 problem), described for this route.
TransferIdPath = Annotated[
    str,
    PathParameter(
        description="The transfer's public id (the id its tenant uses), or, for an analyst key, its storage key "
        "(the `aggregate_id` in `/v1/audit/events`)",
        pattern=UUID_PATTERN,
    ),
]
TenantParam = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=TENANT_MAX_CHARS,
        pattern=TENANT_PATTERN,
        description="Analyst keys: the tenant whose transfer `transfer_id` names (then a public id). Without it, "
        "`transfer_id` is the transfer's storage key or a public id that exactly one tenant uses (several: 422 "
        "`validation_error` asking for `tenant`). A banking key's ids are always resolved inside its own tenant; "
        "for it, another tenant's name finds nothing (404).",
    ),
]
CursorParam = Annotated[
    str | None,
    QueryParameter(description="`next_cursor` of the previous page", pattern=r"^[0-9]{0,19}$", max_length=19),
]
LimitParam = Annotated[int, QueryParameter(ge=1, le=ALERT_PAGE_MAX, description=f"Page size, 1..{ALERT_PAGE_MAX}")]


class AssessmentOut(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["scored"]
    transfer_id: UUID  # the public id, within `tenant`
    tenant: str
    score: float
    level: str
    reasons: list[str]
    model_version: str
    rules_version: str
    rules: list[str]
    features: dict[str, float]
    assessed_at: str
    key: UUID | None = None  # the storage key: analysts only


class PendingOut(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["pending"]
    transfer_id: UUID
    tenant: str
    detail: str
    key: UUID | None = None  # analysts only


class AlertOut(msgspec.Struct, frozen=True):
    id: UUID
    transfer_id: UUID  # the public id, within `tenant`
    tenant: str
    key: UUID  # the transfer's storage key
    score: float
    reasons: list[str]
    model_version: str
    status: str
    label: str | None
    note: str | None
    opened_at: str


class AlertPage(msgspec.Struct, frozen=True):
    items: list[AlertOut]
    next_cursor: str | None


class ReviewIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    label: Literal["fraud", "legit"]
    note: Annotated[str, msgspec.Meta(max_length=NOTE_MAX_CHARS)] = ""


def _problem(status: int, code: str, detail: str, **extra: Any) -> Example:
    return Example(summary=code, value={"type": f"urn:keel:problem:{code}", "title": code.replace("_", " ").capitalize(),
                                        "status": status, "detail": detail, "code": code, **extra})  # fmt: skip


def _problems(*examples: Example) -> dict[int, ResponseSpec]:
    by_status: dict[int, list[Example]] = {}
    for e in examples:
        by_status.setdefault(e.value["status"], []).append(e)  # type: ignore[index]
    return {
        status: ResponseSpec(data_container=ProblemOut, description="RFC 9457 problem", examples=ex, media_type=PROBLEM_MEDIA_TYPE)
        for status, ex in by_status.items()
    }


_EXAMPLE_ID = "6f0e6c1e-1b7a-4c57-9f39-0c7d0e6e7a11"
ASSESSMENT_RESPONSES: dict[int, ResponseSpec] = {
    202: ResponseSpec(
        data_container=PendingOut,
        description="The transfer exists but is not scored yet (usually < 1 s): retry after `Retry-After` seconds.",
        examples=[Example(summary="pending", value={"status": "pending", "transfer_id": _EXAMPLE_ID, "tenant": "acme",
                                                    "detail": "the transfer is not scored yet; retry shortly"})],
    ),
    **_problems(
        _problem(404, "not_found", "transfer not found", transfer_id=_EXAMPLE_ID),
        _problem(422, "validation_error", "transfer_id must be a UUID", field="transfer_id"),
        _problem(422, "validation_error", "several tenants have a transfer with this id: give the tenant too",
                 field="tenant", transfer_id=_EXAMPLE_ID, tenants=2),
    ),
}
ALERTS_RESPONSES = _problems(
    _problem(422, "validation_error", "cursor must be a next_cursor value from a previous page", field="cursor"),
)



def _uuid(value: str, name: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ApiError("validation_error", f"{name} must be a UUID", field=name) from None


def _tenant(value: str) -> str:
    try:
        return check_tenant(value)
    except ValidationFailed as e:
        raise ApiError("validation_error", e.message, field="tenant") from None


def _assessment_out(a: Assessment, *, analyst: bool) -> AssessmentOut:
    return AssessmentOut(
        status="scored", transfer_id=a.public_id, tenant=a.tenant, score=a.score, level=a.level, reasons=list(a.reasons),
        model_version=a.model_version, rules_version=a.rules_version, rules=list(a.rules),
        features=dict(zip(FEATURE_NAMES, a.features, strict=True)), assessed_at=a.created_on.isoformat(),
        key=a.transfer_key if analyst else None,
    )


def _alert_out(v: AlertView) -> AlertOut:
    return AlertOut(id=v.id, transfer_id=v.public_id, tenant=v.tenant, key=v.transfer_key, score=v.score,
                    reasons=list(v.reasons), model_version=v.model_version, status=v.status, label=v.label, note=v.note,
                    opened_at=v.opened_at)


@get(
    "/assessments/{transfer_id:str}",
    summary="The fraud assessment of a transfer",
    description="Score in [0, 1], level (low|elevated|high), reasons in plain words, the model version and the "
    "feature vector it was computed from, for the transfer `transfer_id` of tenant `tenant`.\n\n"
    "A **banking** key sees its own tenant's transfers only: `transfer_id` is a public id resolved inside its "
    "tenant, and another tenant's transfer answers 404 exactly like one that does not exist.\n\n"
    "An **analyst** key sees every tenant. With `tenant=T`, `transfer_id` is the public id of T's transfer. "
    "Without it, `transfer_id` is the transfer's storage key (`aggregate_id` in `/v1/audit/events`, `key` in "
    "this body) or a public id that exactly one tenant's scored transfer uses; if several tenants use it, 422 "
    "`validation_error` asks for `tenant`. (A transfer not scored yet is found by public id only with `tenant`.)\n\n"
    "**202** `{\"status\": \"pending\"}` with `Retry-After`: the transfer exists but is not scored yet (usually "
    "< 1 s). **404** `not_found`: there is no such transfer (for a banking key: in its tenant).",
    guards=[require_roles("analyst", "banking")],
    responses=ASSESSMENT_RESPONSES,
)
async def get_assessment(request: Request, fraud: NamedDependency[FraudService], transfer_id: TransferIdPath, tenant: TenantParam = None) -> AssessmentOut:
    principal = principal_of(request)
    tid = _uuid(transfer_id, "transfer_id")
    analyst = principal.role == "analyst"
    if tenant is not None:
        tenant = _tenant(tenant)
    if not analyst:
        # A banking key's ids are resolved inside its own tenant, whatever else it sends.
        if not principal.tenant:
            raise PermissionDeniedException("this route needs a banking key with a tenant")
        if tenant is not None and tenant != principal.tenant:
            # Another tenant's transfers do not exist for this key: the answer of a missing id.
            raise NotFound("transfer not found")
        tenant = principal.tenant
    found = await anyio.to_thread.run_sync(fraud.find, tid, tenant)
    if isinstance(found, Assessment):
        return _assessment_out(found, analyst=analyst)
    pending = PendingOut(status="pending", transfer_id=found.public_id, tenant=found.tenant,
                         detail="the transfer is not scored yet; retry shortly", key=found.transfer_key if analyst else None)
    return Response(content=pending, status_code=202, headers={"Retry-After": str(PENDING_RETRY_AFTER_S)})  # type: ignore[return-value]


def _cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    # str.isdigit() accepts "¹" and other non-ASCII digits; int() would then raise or misread.
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > ALERT_CURSOR_MAX:
        raise ApiError("validation_error", "cursor must be a next_cursor value from a previous page", field="cursor")
    return int(cursor)


@get(
    "/alerts",
    summary="Fraud alerts (high scores), oldest first",
    description="`status=open|reviewed` filters; omit it for both. `limit` is 1.."
    f"{ALERT_PAGE_MAX} (default {ALERTS_LIMIT_DEFAULT}). Pass `next_cursor` as `cursor` for the next page; it is "
    "null at the end. Each alert names its transfer by public id and tenant, and by storage key (`key`).",
    guards=[require_roles("analyst")],
    responses=ALERTS_RESPONSES,
)
async def list_alerts(
    request: Request, fraud: NamedDependency[FraudService],
    status: Annotated[Literal["open", "reviewed"] | None, QueryParameter(description="open or reviewed")] = None,
    cursor: CursorParam = None,
    limit: LimitParam = ALERTS_LIMIT_DEFAULT,
) -> AlertPage:
    after = _cursor(cursor)
    page = await anyio.to_thread.run_sync(lambda: fraud.app.alerts(status, limit, after))
    return AlertPage(items=[_alert_out(v) for v in page.items],
                     next_cursor=None if page.next_after is None else str(page.next_after))


@post(
    "/alerts/{alert_id:str}/review",
    summary="Review an alert: fraud or legit",
    description="Records a Reviewed event (the label feeds the next `keel fraud train`). An alert is reviewed "
    "once; a second review is 409 `alert_already_reviewed`.",
    guards=[require_roles("analyst")],
    status_code=200,
)
async def review_alert(
    request: Request, fraud: NamedDependency[FraudService], alert_id: AlertIdParam,
    data: Annotated[ReviewIn, Body(description="The analyst's verdict: `label` fraud or legit, and an optional note",
                                   examples=[Example(summary="confirmed fraud", value={"label": "fraud",
                                                     "note": "customer confirmed the card was stolen"})])],
) -> AlertOut:  # `data` documents the body; it is decoded strictly below (strict_body)
    principal = principal_of(request)
    if principal.role != "analyst":
        raise PermissionDeniedException("this route needs the role analyst")
    aid = _uuid(alert_id, "alert_id")
    body = await strict_body(request, ReviewIn)
    svc = fraud

    def review() -> AlertView:
        alert = svc.app.review(aid, body.label, body.note, principal.key_id)
        return AlertView(id=alert.id, transfer_key=alert.transfer_key, public_id=alert.public_id, tenant=alert.tenant,
                         score=alert.score, reasons=list(alert.reasons), model_version=alert.model_version,
                         status=alert.status, label=alert.label, note=alert.note, opened_at=alert.created_on.isoformat())

    return _alert_out(await anyio.to_thread.run_sync(review))


router = Router(path="/v1/fraud", tags=["fraud"], route_handlers=[get_assessment, list_alerts, review_alert])
