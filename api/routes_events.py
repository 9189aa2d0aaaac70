"""The event feed for `banking` keys: `GET /v1/events` (pages) and `GET /v1/events/stream` (SSE).

Both serve the caller's tenant's business events (application/feed.py) in feed order, as the feed
worker rendered them: public ids only, never holder data, never another tenant's event (the feed
is read by the key's tenant; no id from the client selects a tenant). The cursor is opaque and
resumable forever; a made-up one is 422 `validation_error` with `field`.
"""
from __future__ import annotations

from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, Response, Router, get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent

from api.auth import banking_tenant, principal_of, require_roles
from api.event_stream import HEARTBEAT_S, FeedHub
from api.routes_banking import READ_PROBLEMS
from application.feed import (
    CURSOR_CHARS_MAX,
    EVENT_TYPES,
    PAGE_DEFAULT,
    PAGE_MAX,
    FeedEnvelope,
    decode_cursor,
    encode_cursor,
    parse_types,
)
from infrastructure.feed import FeedStore

TYPES_PARAM_CHARS_MAX = 1024
_ONE_TYPE = "(?:\\*|" + "|".join(t.replace(".", "\\.") for t in EVENT_TYPES) + ")"
TYPES_PATTERN = f"^{_ONE_TYPE}(?:,{_ONE_TYPE})*$"
_TYPES_TABLE = "\n".join(f"- `{name}`: {meaning}" for name, meaning in EVENT_TYPES.items())
PAYLOADS = (
    "Every event is `{id, type, occurred_at, recorded_at, data, cursor}`: `id` is the event's stable UUID (the same "
    "on every read and delivery: deduplicate on it), `occurred_at` when it happened (the client's event time, or "
    "`recorded_at`), `recorded_at` when Keel recorded it, `cursor` the position to resume after it. `data` is the "
    "object as it stands after the event, with public ids only and never holder data:\n"
    "- `account.*`: `{id, currency, kind (customer|settlement), status (open|frozen|closed), overdraft_limit}`\n"
    "- `transfer.*`, `deposit.created`, `withdrawal.created`: `{id, kind (transfer|deposit|withdrawal|reversal), "
    "debit_account_id, credit_account_id, amount, currency, reference, pending, status (pending|posted|voided|"
    "expired), posted_amount, reverses_id, reversed_by_id}` (amounts are integers in minor units)\n"
    "- `fraud.*`: `{transfer_id, score, reasons, model_version, status (open|reviewed), label?}`\n\n"
    "Types:\n" + _TYPES_TABLE
)


# One event of the feed, as the feed renders it (the same struct webhook deliveries carry).
FeedEvent = FeedEnvelope


class EventsPage(msgspec.Struct, frozen=True):
    events: list[FeedEvent]
    next_cursor: str  # pass as `after` for the next page; also when `events` is empty (poll with it)
    has_more: bool


TypesParam = Annotated[
    str | None,
    QueryParameter(
        name="types", max_length=TYPES_PARAM_CHARS_MAX, pattern=TYPES_PATTERN,
        description="Comma-separated event types to include (default: all), e.g. `transfer.posted,account.frozen`.",
    ),
]  # fmt: skip
AfterParam = Annotated[
    str | None,
    QueryParameter(name="after", max_length=CURSOR_CHARS_MAX, description="A cursor from an earlier event or page: "
              "events after it. Omit to start at the first event."),
]  # fmt: skip


def _page_body(page: Any) -> bytes:
    return b"".join((
        b'{"events":[', b",".join(page.bodies), b'],"next_cursor":"', encode_cursor(page.last_id).encode(),
        b'","has_more":', b"true" if page.more else b"false", b"}",
    ))  # fmt: skip


@get(
    "/events",
    summary="The tenant's events, in order (cursor pagination)",
    description="Business events of the caller's tenant in the order they were recorded. Resume with "
    "`after=<next_cursor>` (or any event's `cursor`) at any later time: cursors never expire. "
    "Events appear here within a fraction of a second of their commit.\n\n" + PAYLOADS,
    responses=READ_PROBLEMS,
)
async def list_events(
    request: Request,
    feed: NamedDependency[FeedStore],
    after: AfterParam = None,
    types: TypesParam = None,
    limit: Annotated[int, QueryParameter(name="limit", ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> Response[EventsPage]:
    tenant = banking_tenant(request)
    start = decode_cursor(after)
    wanted = parse_types(types)
    page = await anyio.to_thread.run_sync(feed.page, tenant, start, wanted, limit)
    return Response(_page_body(page), media_type="application/json")  # type: ignore[arg-type] - pre-rendered EventsPage


@get(
    "/events/stream",
    summary="The tenant's events as Server-Sent Events",
    description="The same events as `GET /v1/events`, pushed as they are recorded (`text/event-stream`). Each "
    "message's `data` is one event (JSON) and its `id` the event's cursor: reconnecting with the standard "
    "`Last-Event-ID` header (browsers' EventSource does it by itself) resumes right after it, with nothing "
    f"missed or repeated. A comment line is sent every {HEARTBEAT_S:g} s. At most `KEEL_SSE_STREAMS_PER_KEY` "
    "(default 5) open streams per API key and process: 429 `rate_limited` beyond.\n\n" + PAYLOADS,
    media_type="text/event-stream",
    response_description="`text/event-stream`: `id: <cursor>` and `data: <event JSON>` per event; `: heartbeat` comments.",
    responses=READ_PROBLEMS,
)
async def stream_events(
    request: Request,
    feed_hub: NamedDependency[FeedHub],
    after: AfterParam = None,
    types: TypesParam = None,
    last_event_id: Annotated[
        str | None,
        HeaderParameter(name="Last-Event-ID", max_length=CURSOR_CHARS_MAX, description="Resume after this event (its `id:`)."),
    ] = None,
) -> ServerSentEvent:
    tenant = banking_tenant(request)
    start = decode_cursor(last_event_id, "Last-Event-ID") if last_event_id else decode_cursor(after)
    wanted = parse_types(types)
    reservation = feed_hub.reserve(principal_of(request).key_id)  # 429 here, before the stream starts
    return ServerSentEvent(
        feed_hub.stream(reservation, tenant, wanted, start),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


router = Router(
    path="/v1", guards=[require_roles("banking")], tags=["events"], route_handlers=[list_events, stream_events]
)
