"""Fixtures of the real-time tests: a local webhook receiver, and a follower that brings the feed up
to date in-process (the feed worker's own step, tracking and all)."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from infrastructure.feed import FeedFollower, feed_worker


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers from `script` (statuses, used
    in order; then `default`)."""

    server: http.server.ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.received]


def start_receiver() -> Receiver:
    holder: dict[str, Receiver] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as written (no 40 ms delayed-ACK stalls)

        def do_POST(self) -> None:
            expected = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(expected)
            if len(body) < expected:  # the sender died mid-request (a SIGKILL test): nothing arrived
                self.close_connection = True
                return
            r = holder["r"]
            with r.lock:
                status = r.script.pop(0) if r.script else r.default
                if 200 <= status < 300:
                    r.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["r"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def follower(container: object) -> FeedFollower:
    c = container
    fraud_app = c.fraud.app  # type: ignore[attr-defined]
    w = feed_worker(c.store.sql, c.ledger, fraud_app, c.store.sql_over(fraud_app.recorder.datastore),  # type: ignore[attr-defined]
                    c.store.open_log_waiter)  # type: ignore[attr-defined]  # fmt: skip
    return FeedFollower(w.store, w.ledger, w.fraud)


def catch_up(f: FeedFollower) -> int:
    total = 0
    while True:
        n, _ = f.step()
        if n == 0:
            return total
        total += n
