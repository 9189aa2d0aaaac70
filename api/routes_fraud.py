"""Fraud routes (SPEC §5): assessments for analysts and for the banking tenant that owns the
transfer, alerts and their review for analysts.

Reads and reviews run the fraud application's queries in a worker thread. A transfer of another
tenant, or one not yet scored, answers 404 exactly like a missing one. Nothing here scores: the
consumer (worker "fraud") does, from the ledger's log.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from litestar import Request, Router, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, QueryParameter

from api.schemas import AlertIdParam, TransferIdParam
from api.auth import principal_of, require_roles
from api.errors import ApiError
from api.routes_banking import strict_body
from domain.errors import NotFound
from fraud.app import ALERT_PAGE_MAX, NOTE_MAX_CHARS, AlertView, Assessment
from fraud.features import FEATURE_NAMES

ALERTS_LIMIT_DEFAULT = 100


class AssessmentOut(msgspec.Struct, frozen=True):
    transfer_id: UUID
    score: float
    level: str
    reasons: list[str]
    model_version: str
    rules_version: str
    rules: list[str]
    features: dict[str, float]
    assessed_at: str


class AlertOut(msgspec.Struct, frozen=True):
    id: UUID
    transfer_id: UUID
    tenant: str
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


def _service(request: Request) -> Any:
    from keel.bootstrap import fraud_service

    return fraud_service(request.app.state.container)


def _uuid(value: str, name: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ApiError("validation_error", f"{name} must be a UUID", field=name) from None


def _assessment_out(a: Assessment) -> AssessmentOut:
    return AssessmentOut(
        transfer_id=a.transfer_id, score=a.score, level=a.level, reasons=list(a.reasons), model_version=a.model_version,
        rules_version=a.rules_version, rules=list(a.rules), features=dict(zip(FEATURE_NAMES, a.features, strict=True)),
        assessed_at=a.created_on.isoformat(),
    )


def _alert_out(v: AlertView) -> AlertOut:
    return AlertOut(id=v.id, transfer_id=v.transfer_id, tenant=v.tenant, score=v.score, reasons=list(v.reasons),
                    model_version=v.model_version, status=v.status, label=v.label, note=v.note, opened_at=v.opened_at)


@get(
    "/assessments/{transfer_id:str}",
    summary="The fraud assessment of a transfer",
    description="Score in [0, 1], level (low|elevated|high), reasons in plain words, the model version and the "
    "feature vector it was computed from. Analysts see every tenant; a banking key sees its own tenant's "
    "transfers only (404 otherwise). 404 also while the transfer is not yet scored (usually < 1 s).",
    guards=[require_roles("analyst", "banking")],
)
async def get_assessment(request: Request, transfer_id: TransferIdParam) -> AssessmentOut:
    principal = principal_of(request)
    tid = _uuid(transfer_id, "transfer_id")
    a = await anyio.to_thread.run_sync(_service(request).app.assessment, tid)
    if principal.role == "banking" and a.tenant != principal.tenant:
        raise NotFound("no assessment for this transfer (yet)", transfer_id=str(tid))
    return _assessment_out(a)


@get(
    "/alerts",
    summary="Fraud alerts (high scores), oldest first",
    description="`status=open|reviewed` filters; omit it for both. Pass `next_cursor` as `cursor` for the next page.",
    guards=[require_roles("analyst")],
)
async def list_alerts(
    request: Request,
    status: Annotated[Literal["open", "reviewed"] | None, QueryParameter(description="open or reviewed")] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=12)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=ALERT_PAGE_MAX)] = ALERTS_LIMIT_DEFAULT,
) -> AlertPage:
    if cursor and not (cursor.isascii() and cursor.isdigit()):
        raise ApiError("validation_error", "cursor must be a next_cursor value from a previous page", field="cursor")
    after = int(cursor) if cursor else 0
    views = await anyio.to_thread.run_sync(lambda: _service(request).app.alerts(status, limit + 1, after))
    items = [_alert_out(v) for v in views[:limit]]
    return AlertPage(items=items, next_cursor=str(after + limit) if len(views) > limit else None)


@post(
    "/alerts/{alert_id:str}/review",
    summary="Review an alert: fraud or legit",
    description="Records a Reviewed event (the label feeds the next `keel fraud train`). An alert is reviewed "
    "once; a second review is 409 `alert_already_reviewed`.",
    guards=[require_roles("analyst")],
    status_code=200,
)
async def review_alert(request: Request, alert_id: AlertIdParam) -> AlertOut:
    principal = principal_of(request)
    if principal.role != "analyst":
        raise PermissionDeniedException("this route needs the role analyst")
    aid = _uuid(alert_id, "alert_id")
    body = await strict_body(request, ReviewIn)
    svc = _service(request)

    def review() -> AlertView:
        alert = svc.app.review(aid, body.label, body.note, principal.key_id)
        return AlertView(id=alert.id, transfer_id=alert.transfer_id, tenant=alert.tenant, score=alert.score,
                         reasons=list(alert.reasons), model_version=alert.model_version, status=alert.status,
                         label=alert.label, note=alert.note, opened_at=alert.created_on.isoformat())

    return _alert_out(await anyio.to_thread.run_sync(review))


router = Router(path="/v1/fraud", tags=["fraud"], route_handlers=[get_assessment, list_alerts, review_alert])
