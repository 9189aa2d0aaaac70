"""What every HTTP request leaves behind: its latency in the metrics, and — for a write or an
audit read — an access-log entry (api.access_log). One ASGI middleware, outermost, so it also
sees the requests authentication refused (401/403); api.fastpath calls `observe` itself.
"""
from __future__ import annotations

import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.access_log import logs_access, record_access
from api.metrics import observe_latency


def observe(scope: Scope, status: int, seconds: float) -> None:
    observe_latency(scope, status, seconds)
    if logs_access(scope["method"], scope["path"]):
        record_access(scope, status)


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as e:
            # Raised past us (e.g. authentication refused); the app's handler turns it into
            # its HTTP status further out.
            status[0] = status[0] or getattr(e, "status_code", 500)
            raise
        finally:
            observe(scope, status[0] or 500, time.perf_counter() - started)
