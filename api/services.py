"""What the HTTP API runs on, as the API sees it: the services the composition root
(keel/bootstrap.py) builds whole and hands to `api.app.create_app`. A Protocol, so the API
never imports the composition root; route handlers receive these through Litestar's `Provide`
dependencies (api/app.py), never from `request.app.state`.
"""
from __future__ import annotations

from typing import Any, Protocol

from application.audit import Audit
from application.group_commit import CommitHooks, GroupCommitWriter
from application.ledger import Ledger
from fraud.service import FraudService
from infrastructure.readside import ReadSide
from infrastructure.settings import Settings


class Services(Protocol):
    settings: Settings
    ledger: Ledger
    writer: GroupCommitWriter
    commit_hooks: CommitHooks
    idempotency: Any  # application.ports.IdempotencyStore
    claims: Any  # cross-process Idempotency-Key claims
    keys: Any  # API key store: get(key_id) -> ApiKey | None
    audit: Audit
    read_side: ReadSide
    fraud: FraudService
