"""Every error the API returns, as RFC 9457 `application/problem+json` with a stable `code`.

One table (`STATUS_BY_CODE`) maps each DomainError code to an HTTP status. The rule:
- 404 `not_found` — also for another tenant's objects, so their existence is never hinted;
- 409 when the resource named by the request is in a state that conflicts with the operation
  (`exists_with_different_fields`, `transfer_not_pending`, `transfer_expired`,
  `transfer_not_posted`, `already_reversed`, `idempotency_key_in_flight`);
- 422 when the request is well-formed but breaks a rule of the money movement or is invalid
  (`validation_error`, `invalid_amount`, `invalid_currency`, `insufficient_funds`,
  `account_frozen`, `account_closed`, `account_not_empty`, `currency_mismatch`,
  `same_account`, `exceeds_held_amount`, `settlement_account_restricted`,
  `balance_overflow`, `idempotency_key_reused`);
- 503 with `Retry-After` when the service could not do it now (`concurrency_conflict` after
  the bounded retries, `overloaded`, `shutting_down`, `unavailable` — also when the database
  cannot be reached) — safe to retry with the same Idempotency-Key; `not_migrated` when the
  database answers but `keel migrate` has not made its tables;
- 401 `unauthorized`, 403 `forbidden`, 413 `payload_too_large`, 429 `rate_limited`,
  500 `internal_error` (a bug: logged, never detailed).

This module must never put a stack trace, SQL, a token or stored event text in a response.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException, ValidationException

from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from eventsourcing.persistence import DatabaseError as StoreDatabaseError
from eventsourcing.persistence import InternalError as StoreInternalError
from eventsourcing.persistence import PersistenceError as StorePersistenceError

from application.group_commit import Overloaded, WriterStopped
from domain.errors import DomainError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 1
DETAIL_MAX_CHARS = 500

STATUS_BY_CODE: dict[str, int] = {
    "not_found": 404,
    "exists_with_different_fields": 409,
    "transfer_not_pending": 409,
    "transfer_expired": 409,
    "transfer_not_posted": 409,
    "already_reversed": 409,
    "idempotency_key_in_flight": 409,
    "alert_already_reviewed": 409,
    "validation_error": 422,
    "invalid_amount": 422,
    "invalid_currency": 422,
    "insufficient_funds": 422,
    "account_frozen": 422,
    "account_closed": 422,
    "account_not_empty": 422,
    "currency_mismatch": 422,
    "same_account": 422,
    "exceeds_held_amount": 422,
    "settlement_account_restricted": 422,
    "balance_overflow": 422,
    "event_time_out_of_range": 422,
    "idempotency_key_reused": 422,
    "concurrency_conflict": 503,
    "overloaded": 503,
    "shutting_down": 503,
    "unavailable": 503,
    "not_migrated": 503,
    "unauthorized": 401,
    "forbidden": 403,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "rate_limited": 429,
    "internal_error": 500,
}

TITLES: dict[str, str] = {
    "not_found": "Not found",
    "validation_error": "Validation error",
    "insufficient_funds": "Insufficient funds",
    "unauthorized": "Missing or invalid API key",
    "forbidden": "This API key's role may not use this route",
    "payload_too_large": "Request body too large",
    "rate_limited": "Too many requests",
    "internal_error": "Internal error",
    "idempotency_key_reused": "Idempotency-Key reused with a different request",
    "idempotency_key_in_flight": "A request with this Idempotency-Key is still running",
}

_RETRYABLE = {"concurrency_conflict", "overloaded", "shutting_down", "unavailable"}


class ApiError(Exception):
    """An API-level problem that is not a domain rule (idempotency, limits, auth)."""

    def __init__(self, code: str, detail: str, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        assert code in STATUS_BY_CODE, code
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.details = details
        self.headers = headers or {}


# ---- one shape for every validation problem: `errors: [{field, message}]` ----------------------
# `field` is the JSON path of the field as the client sent it (`amount`, `transfers[3].amount`,
# `holder.name`), a query or path parameter's name, or "" for the body as a whole.
ERRORS_MAX = 20
ERROR_MESSAGE_MAX_CHARS = 200
_AT_PATH = re.compile(r"^(?P<message>.*?) - at `\$(?P<path>[^`]*)`$", re.S)
_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")
_FRIENDLIER = {
    "Expected `int`, got `float`": "must be an integer (minor units), not a float such as 2500.0",
    "Expected `int | null`, got `float`": "must be an integer (minor units), not a float such as 2500.0",
    "Expected `int`, got `str`": "must be a JSON integer, not a string",
}


def field_error(message: str, key: str | None = None) -> dict[str, str]:
    """{field, message} from a msgspec or Litestar message (`... - at `$.a.b``) and its key."""
    path = "" if key in (None, "", "data", "$", "body") else str(key)
    at = _AT_PATH.match(message)
    if at:
        message, path = at["message"], at["path"].lstrip(".")
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
        message = "is required" if "missing" in message else "is not a field of this request"
    elif path.rsplit(".", 1)[-1] == "currency" and message.startswith("Invalid enum value"):
        message = f"{message[len('Invalid enum value '):]} is not an ISO 4217 currency code"
    elif "matching regex '^[0-9a-fA-F]{8}-" in message:
        message = "must be a UUID"
    message = _FRIENDLIER.get(message, message)
    return {"field": path, "message": message[:ERROR_MESSAGE_MAX_CHARS]}


def validation_errors(detail: str, details: dict[str, Any]) -> list[dict[str, str]]:
    given = details.get("errors")
    if isinstance(given, list) and given:
        return [
            field_error(str(e.get("message", "")), e.get("field", e.get("key")))
            for e in given[:ERRORS_MAX]
            if isinstance(e, dict)
        ]
    if details.get("field") is not None:
        return [{"field": str(details["field"]), "message": detail[:ERROR_MESSAGE_MAX_CHARS]}]
    return [field_error(detail)]


def _validation_detail(detail: str, errors: list[dict[str, str]]) -> str:
    if _AT_PATH.match(detail) or detail.startswith("Validation failed for") or not detail:
        return "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    return detail


def problem_body(code: str, detail: str, details: dict[str, Any] | None = None) -> tuple[int, bytes]:
    status = STATUS_BY_CODE.get(code, 422)
    body: dict[str, Any] = {}
    for k, v in (details or {}).items():
        if k not in ("type", "title", "status", "detail", "code", "errors"):
            body[k] = v if isinstance(v, (int, str, bool, type(None))) else str(v)
    if code == "validation_error":
        body["errors"] = validation_errors(detail, details or {})
        detail = _validation_detail(detail, body["errors"])
    body.update(
        {
            "type": f"urn:keel:problem:{code}",
            "title": TITLES.get(code, code.replace("_", " ").capitalize()),
            "status": status,
            "detail": detail[:DETAIL_MAX_CHARS],
            "code": code,
        }
    )
    return status, msgspec.json.encode(body)


def problem_parts(
    code: str, detail: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of a problem (Retry-After on the retryable ones)."""
    status, body = problem_body(code, detail, details)
    all_headers = dict(headers or {})
    if code in _RETRYABLE:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return status, body, all_headers


def problem_response(code: str, detail: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Response[bytes]:
    status, body, all_headers = problem_parts(code, detail, details, headers)
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=all_headers)


def write_problem(exc: BaseException) -> tuple[int, bytes, dict[str, str]] | None:
    """The problem for an exception a write raises (api.idempotency.execute_write); None for
    anything else, which is a bug. Both the Litestar handlers and api.fastpath answer with it."""
    if isinstance(exc, DomainError):
        return problem_parts(exc.code, exc.message, exc.details)
    if isinstance(exc, ApiError):
        return problem_parts(exc.code, exc.detail, exc.details, exc.headers)
    if isinstance(exc, Overloaded):
        return problem_parts("overloaded", "the service is busy; retry shortly")
    if isinstance(exc, WriterStopped):
        return problem_parts("shutting_down", "the service is restarting; retry shortly")
    if isinstance(exc, StorePersistenceError) and schema_missing(exc):
        # Reachable, but `keel migrate` has not made (all) the tables: an operator's task, never a 500.
        log.error("the store's schema is not migrated (run `keel migrate`): %s", type(exc).__name__)
        return problem_parts("not_migrated", NOT_MIGRATED_DETAIL)
    if type(exc) in _TRANSIENT_STORE_ERRORS:
        # The driver's catch-all classes (a server crashing or restarting mid-request can end in
        # them, not only in OperationalError): retryable, but logged loudly in case it is not.
        log.error("event store error, answered 503: %s: %s", type(exc).__name__, str(exc)[:200])
        return problem_parts("unavailable", "the event store is unavailable; retry shortly")
    if isinstance(exc, (StoreOperationalError, StoreInterfaceError)):
        # The database is down, restarting or out of connections (eventsourcing wraps psycopg's
        # and sqlite3's connection errors in these). Nothing was written by this request: retryable.
        log.warning("event store unreachable: %s", type(exc).__name__)
        return problem_parts("unavailable", "the event store is unavailable; retry shortly")
    return None


_TRANSIENT_STORE_ERRORS = (StorePersistenceError, StoreDatabaseError, StoreInternalError)

NOT_MIGRATED_DETAIL = "the service's database is not migrated (an operator must run `keel migrate`)"
_MISSING_TABLE = re.compile(r'no such table|relation "[^"]+" does not exist')


def schema_missing(exc: BaseException) -> bool:
    """A store error that says a table is missing (SQLite's and PostgreSQL's wording)."""
    return bool(_MISSING_TABLE.search(str(exc)))


def domain_problem(error: DomainError) -> tuple[int, bytes]:
    return problem_body(error.code, error.message, error.details)


# ---- Litestar exception handlers ---------------------------------------------------------------


def _on_problem(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    problem = write_problem(exc)
    if problem is None:
        return _internal(exc)
    status, body, headers = problem
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    # Litestar's message names the field and the expected type (from msgspec); never the body.
    detail = str(exc.detail) if exc.detail else "invalid request"
    errors = exc.extra if isinstance(exc.extra, list) else []
    return problem_response("validation_error", detail, {"errors": [e for e in errors if isinstance(e, dict)]})


def _on_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotAuthorizedException):
        return problem_response(
            "unauthorized", str(exc.detail) or "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, PermissionDeniedException):
        return problem_response("forbidden", str(exc.detail) or "this key's role may not use this route")
    code = {
        400: "validation_error",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        429: "rate_limited",
    }.get(exc.status_code)
    if code is None:
        if exc.status_code >= 500:
            return _internal(exc)
        status, body = exc.status_code, msgspec.json.encode(
            {
                "type": "about:blank",
                "title": "Request failed",
                "status": exc.status_code,
                "detail": str(exc.detail)[:DETAIL_MAX_CHARS],
                "code": "http_error",
            }
        )
        return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)
    detail = {
        404: "no such route",
        413: "request body is larger than the limit",
        405: "method not allowed on this route",
    }.get(exc.status_code, str(exc.detail))
    return problem_response(code, detail)


def _on_undecodable(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # Raised by the JSON decoder on a body it cannot read (Litestar wraps only msgspec's
    # DecodeError): invalid UTF-8 inside a string, or nesting deeper than the decoder's stack.
    detail = (
        "the request body is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "the request body is nested too deeply"
    )
    return problem_response("validation_error", detail)


def _internal(exc: BaseException) -> Response[bytes]:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return problem_response("internal_error", "an unexpected error occurred; it has been logged")


def _on_any(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _internal(exc)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    DomainError: _on_problem,
    ApiError: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Overloaded: _on_problem,
    WriterStopped: _on_problem,
    UnicodeDecodeError: _on_undecodable,
    RecursionError: _on_undecodable,
    StoreOperationalError: _on_problem,
    StoreInterfaceError: _on_problem,
    StorePersistenceError: _on_problem,  # e.g. a missing table: 503 not_migrated (else 500)
    Exception: _on_any,
}
