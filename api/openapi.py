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


class FieldError(msgspec.Struct, frozen=True):
    field: str  # the JSON path of the field as sent (`amount`, `transfers[3].amount`), a parameter's name, or ""
    message: str


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details; some codes add fields (e.g. `available`, `index`). Every
    `validation_error` carries `errors`, one `{field, message}` per invalid field."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


# ---- the page at /schema: Swagger UI from the installed swagger-ui-bundle package, no CDN -------
DOCS_ASSETS_PATH = "/schema/assets"


def docs_render_plugin() -> Any:
    from litestar.openapi.plugins import SwaggerRenderPlugin

    return SwaggerRenderPlugin(
        js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS_PATH}/favicon-32x32.png'>",
        path=["/", "/swagger"],
    )


def docs_assets_router() -> Any:
    from litestar.static_files import create_static_files_router
    from swagger_ui_bundle import swagger_ui_path

    return create_static_files_router(
        path=DOCS_ASSETS_PATH, directories=[swagger_ui_path], include_in_schema=False, name="docs-assets"
    )


# ---- what Litestar adds to the document that the API never does --------------------------------
LITESTAR_400 = "Bad request syntax or unsupported method"


def finish_document(app: Any) -> None:
    """Builds the document now (Litestar caches it until a route is added) and drops Litestar's
    own 400 response from it: api.errors answers every validation failure 422 problem+json. Call
    it after the last route is registered (tests/api/test_openapi_complete.py checks the result)."""
    document = app.openapi_schema
    for item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            responses = getattr(getattr(item, method, None), "responses", None) or {}
            if "400" in responses and getattr(responses["400"], "description", "") == LITESTAR_400:
                del responses["400"]


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
