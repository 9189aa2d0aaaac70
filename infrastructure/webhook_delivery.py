"""`keel worker webhooks`: delivers each webhook's events from the feed (infrastructure/feed.py),
in feed order, one `POST` per event, signed (application/webhooks.py).

Tracking: a webhook's `after_id` (keel_webhooks) is the last feed id delivered; it moves only after
the receiver answered 2xx, by a conditional UPDATE (`WHERE after_id = <what we read>`), at least every
PROGRESS_EVERY_S and at the end of each run. A SIGKILL therefore loses nothing and repeats at most
the deliveries since the last move (at-least-once, as receivers are told: dedupe on
`Keel-Event-Id`). One thread delivers to one webhook at a time (order); up to `concurrency`
webhooks are served at once.

HTTP: the standard library's client, connecting to the address the SSRF guard checked
(infrastructure/webhooks.py) with the URL's host in `Host` and TLS SNI and certificate check,
redirects never followed (a 3xx is a failure), at most RESPONSE_READ_MAX bytes of a response read,
and every delivery cut off DELIVERY_TIMEOUT_S after it started (a watchdog closes the socket: a
receiver trickling bytes cannot hold a thread). One kept-alive connection per webhook run.
"""
from __future__ import annotations

import http.client
import logging
import random
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import msgspec

from application.webhooks import (
    ACTIVE,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    after_failure,
    sign,
)
from infrastructure.feed import FeedStore
from infrastructure.webhooks import AddressRefused, SqlWebhookStore, UrlGuard, Webhook

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 5.0
RESPONSE_READ_MAX = 4096
EVENTS_PER_RUN_MAX = 500  # one webhook's deliveries before its thread goes back to the pool
PROGRESS_EVERY_S = 0.05  # tracking moves at least this often during a run (bounds the repeats after a kill)
POLL_S = 0.05
DUE_MAX = 256
ERROR_BACKOFF_S = 1.0
STOP_JOIN_S = 15.0
USER_AGENT = "Keel-Webhooks/1"


class _Event(msgspec.Struct):
    id: str


_event_id = msgspec.json.Decoder(_Event)


class DeliveryError(Exception):
    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to a checked address, for the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class Watchdog:
    """Cuts off deliveries past their deadline by shutting their sockets down."""

    def __init__(self, tick_s: float = 0.1) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._tick_s = tick_s
        threading.Thread(target=self._run, name="keel-webhook-watchdog", daemon=True).start()

    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        with self._lock:
            self._watched[id(conn)] = (deadline, conn)

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._watched.pop(id(conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                late = [c for d, c in self._watched.values() if d < now]
            for conn in late:
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


class HttpSender:
    """One webhook's connection for one run: `post()` each event, then `close()`."""

    def __init__(self, guard: UrlGuard, watchdog: Watchdog, url: str, timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        self.guard = guard
        self.watchdog = watchdog
        self.timeout_s = timeout_s
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = (parts.hostname or "").lower()
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            address = self.guard.addresses(self.host, self.port)[0]  # AddressRefused: the caller's failure
            if self.scheme == "https":
                self._conn = _PinnedTLS(self.host, self.port, address, self.timeout_s, ssl.create_default_context())
            else:
                self._conn = _Pinned(self.host, self.port, address, self.timeout_s)
        return self._conn

    def post(self, body: bytes, headers: dict[str, str]) -> None:
        """Delivers, or raises DeliveryError (gone=True on 410)."""
        try:
            conn = self._connection()
        except AddressRefused as e:
            raise DeliveryError(str(e)) from None
        deadline = time.monotonic() + self.timeout_s
        self.watchdog.watch(conn, deadline)
        try:
            conn.request("POST", self.target, body=body, headers=headers)
            response = conn.getresponse()
            response.read(RESPONSE_READ_MAX)
            status = response.status
            if not response.isclosed():  # more than we read, or the server keeps it open oddly
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            late = time.monotonic() >= deadline
            raise DeliveryError(f"timed out after {self.timeout_s:g} s" if late else f"{type(e).__name__}: {e}"[:200]) from None
        finally:
            self.watchdog.release(conn)
        if response.will_close:
            self.close()
        if 200 <= status < 300:
            return
        if status == 410:
            raise DeliveryError("receiver answered 410 Gone: webhook disabled", gone=True)
        raise DeliveryError(f"receiver answered {status}" + (" (redirects are not followed)" if 300 <= status < 400 else ""))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WebhookDelivery:
    """One pass over the due webhooks: `deliver_due()`; `run_one()` serves one webhook."""

    def __init__(self, webhooks: SqlWebhookStore, feed: FeedStore, guard: UrlGuard, *, concurrency: int = 8,
                 timeout_s: float = DELIVERY_TIMEOUT_S) -> None:  # fmt: skip
        self.webhooks = webhooks
        self.feed = feed
        self.guard = guard
        self.timeout_s = timeout_s
        self.watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="keel-webhook")
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._random = random.Random()
        self.delivered = 0  # deliveries since start (bench, metrics)

    def deliver_due(self) -> int:
        """Hands every due webhook not already being served to the pool; returns how many."""
        head = self.feed.head()
        now_ms = int(time.time() * 1000)
        started = 0
        for webhook, secret in self.webhooks.due(head, now_ms, DUE_MAX):
            with self._lock:
                if webhook.id in self._busy:
                    continue
                self._busy.add(webhook.id)
            self._pool.submit(self._serve, webhook, secret, head)
            started += 1
        return started

    def busy(self) -> int:
        with self._lock:
            return len(self._busy)

    def _serve(self, webhook: Webhook, secret: str, head: int) -> None:
        try:
            # A full run means more is waiting: go on at once instead of waiting for the next poll.
            while self.run_one(webhook, secret, head) >= EVENTS_PER_RUN_MAX:
                webhook = self.webhooks.get(webhook.tenant, webhook.id)
                if webhook.status == "disabled":
                    break
                head = self.feed.head()
        except Exception:
            log.exception("webhook %s: delivery run failed", webhook.id)
        finally:
            with self._lock:
                self._busy.discard(webhook.id)

    def run_one(self, webhook: Webhook, secret: str, head: int) -> int:
        """Delivers this webhook's next events (up to the feed's `head`), moving its tracking as
        it goes; returns how many were delivered."""
        types = None if webhook.types is None else frozenset(webhook.types)
        page = self.feed.page(webhook.tenant, webhook.after_id, types, EVENTS_PER_RUN_MAX, upto=head)
        if not page.bodies:
            self.webhooks.progress(webhook.id, webhook.after_id, page.last_id, 0, _now_ms())
            return 0
        sender = HttpSender(self.guard, self.watchdog, webhook.url, self.timeout_s)
        committed, done, count, total = webhook.after_id, webhook.after_id, 0, 0
        last_commit = time.monotonic()
        try:
            for feed_id, body in zip(page.ids, page.bodies):
                t = int(time.time())
                headers = {
                    "Content-Type": "application/json", "User-Agent": USER_AGENT,
                    WEBHOOK_ID_HEADER: webhook.id, EVENT_ID_HEADER: _event_id.decode(body).id,
                    SIGNATURE_HEADER: sign(secret, t, body),
                }  # fmt: skip
                try:
                    sender.post(body, headers)
                except DeliveryError as e:
                    if done != committed and not self.webhooks.progress(webhook.id, committed, done, count, _now_ms()):
                        return total
                    first = done == webhook.after_id  # nothing delivered this run: the failures go on
                    failure = after_failure(webhook.status if first else ACTIVE, webhook.attempts if first else 0,
                                            webhook.failing_since_ms if first else None,
                                            _now_ms(), self._random.random(), gone=e.gone)  # fmt: skip
                    self.webhooks.failed(webhook.id, done, failure, str(e), _now_ms())
                    log.info("webhook %s: delivery failed (%s); attempt %d, status %s", webhook.id, e, failure.attempts,
                             failure.status)  # fmt: skip
                    return 0  # the failed one waits for its retry
                done, count, total = feed_id, count + 1, total + 1
                self.delivered += 1
                if time.monotonic() - last_commit >= PROGRESS_EVERY_S:
                    if not self.webhooks.progress(webhook.id, committed, done, count, _now_ms()):
                        return 0  # deleted, or moved by another worker
                    committed, count, last_commit = done, 0, time.monotonic()
            # Everything read was delivered: also pass over the rows of other types after it.
            if not self.webhooks.progress(webhook.id, committed, max(done, page.last_id), count, _now_ms()):
                return 0
            return total
        finally:
            sender.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


class WebhookWorker:
    """`keel worker webhooks`: `deliver_due()` every POLL_S on a daemon thread until stopped."""

    name = "webhooks"

    def __init__(self, delivery: WebhookDelivery, poll_s: float = POLL_S) -> None:
        self.delivery = delivery
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keel-webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.delivery.deliver_due()
            except Exception:
                log.exception("webhook worker: reading due webhooks failed; retrying")
                self._stop.wait(ERROR_BACKOFF_S)
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
        self.delivery.close()


__all__ = ["DeliveryError", "HttpSender", "WebhookDelivery", "WebhookWorker"]
