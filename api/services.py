"""What the HTTP API runs on, as the API sees it: the services the composition root
(keel/bootstrap.py) builds whole and hands to `api.app.create_app`. A Protocol, so the API
never imports the composition root; route handlers receive these through Litestar's `Provide`
dependencies (api/app.py), never from `request.app.state`.
"""
from __future__ import annotations

from typing import Any, Protocol

from application.aggregate_cache import AsyncLogHead
from application.audit import Audit
from application.group_commit import CommitHooks, GroupCommitWriter
from application.ledger import Ledger
from fraud.service import FraudService
from infrastructure.feed import FeedStore
from infrastructure.oauth import TokenService
from infrastructure.readside import ReadSide
from infrastructure.webhooks import SqlWebhookStore, UrlGuard
from infrastructure.settings import Settings
from infrastructure.store import Store


class Services(Protocol):
    settings: Settings
    ledger: Ledger
    writer: GroupCommitWriter
    commit_hooks: CommitHooks
    idempotency: Any  # application.ports.IdempotencyStore
    claims: Any  # cross-process Idempotency-Key claims
    keys: Any  # API key store: get(key_id) -> ApiKey | None
    store: Store  # schema_status() for /readyz (infrastructure/store.py)
    audit: Audit
    read_side: ReadSide
    fraud: FraudService
    feed: FeedStore  # the tenant-indexed event feed (GET /v1/events, the SSE hub)
    webhooks: SqlWebhookStore
    url_guard: UrlGuard  # the SSRF check of webhook URLs
    tokens: TokenService  # OAuth 2.0 client credentials and JWT access tokens

    def open_log_head(self) -> AsyncLogHead | None:
        """The ledger log's head, read on this event loop (None: the store has no async driver)."""
