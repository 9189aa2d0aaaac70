"""What the OpenAPI document says beyond Litestar's defaults, so that it matches what is served.

- Every route documents the problem+json responses it can answer (Litestar documents only
  the success response, and a 400 that api.errors turns into 422).
- Request Structs with `forbid_unknown_fields=True` are documented with
  `additionalProperties: false`, since the server rejects unknown fields.
This module only describes; it must never change how a request is handled.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.routes import HTTPRoute

from api.errors import PROBLEM_MEDIA_TYPE, STATUS_BY_CODE

PROBLEM_STATUSES_AUTHENTICATED = (401, 403, 404, 409, 413, 422, 429, 503)
PROBLEM_STATUSES_PUBLIC = (503,)


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details; some codes add fields (e.g. `available`, `errors`, `index`)."""

    type: str
    title: str
    status: int
    detail: str
    code: str


def _codes(status: int) -> str:
    return ", ".join(f"`{c}`" for c, s in STATUS_BY_CODE.items() if s == status)


def document_problems(app: Any, is_public: Callable[[str], bool]) -> None:
    """Adds the problem responses to every route of `app`, including routes added later."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        statuses = PROBLEM_STATUSES_PUBLIC if is_public(route.path) else PROBLEM_STATUSES_AUTHENTICATED
        for handler in route.route_handlers:
            documented = {
                status: ResponseSpec(
                    data_container=Problem,
                    media_type=PROBLEM_MEDIA_TYPE,
                    description=f"Problem: {_codes(status)}",
                    generate_examples=False,
                )
                for status in statuses
            }
            documented.update(handler.responses or {})
            handler.responses = documented


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's Struct schemas, plus what they leave out or round.

    - `additionalProperties: false` where unknown fields fail (`forbid_unknown_fields=True`);
    - integer bounds as exact integers: Litestar writes them as floats, so 2**63-1 became
      9.223372036854776e18 (= 2**63), a bound one above what the server takes.
    """

    def to_openapi_schema(self, field_definition: Any, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if getattr(info, "forbid_unknown_fields", False):
            schema.additional_properties = False
        for field in getattr(info, "fields", ()):
            bounds = _int_bounds(field.type)
            prop = (schema.properties or {}).get(field.encode_name)
            if bounds is not None and prop is not None:
                _set_int_bounds(prop, *bounds)
        return schema


def _int_bounds(t: Any) -> tuple[int | None, int | None] | None:
    types = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
    for member in types:
        while isinstance(member, msgspec.inspect.Metadata):  # Annotated[int, Meta(...)]
            member = member.type
        if isinstance(member, msgspec.inspect.IntType):
            low = member.ge if member.ge is not None else (None if member.gt is None else member.gt + 1)
            high = member.le if member.le is not None else (None if member.lt is None else member.lt - 1)
            return low, high
    return None


def _set_int_bounds(schema: Any, low: int | None, high: int | None) -> None:
    for s in [schema, *(getattr(schema, "one_of", None) or []), *(getattr(schema, "any_of", None) or [])]:
        if getattr(s, "type", None) is not None and "integer" in str(s.type).lower():
            s.minimum = low
            s.maximum = high
            s.exclusive_minimum = None
            s.exclusive_maximum = None
