"""Two writers (as in two API processes) commit the same Idempotency-Key: one effect, one answer.

The second commit hits the idempotency primary key, the ledger re-runs its batch, the creation
id derived from the key finds the first transfer (no second effect), and the renderer marks
itself superseded so the API answers with the stored response.
"""
from __future__ import annotations

import msgspec

from api.idempotency import Renderer, derived_id, request_hash
from application.commands import Deposit, MakeTransfer, OpenAccount, TransferState
from application.ports import IdempotencyRecord
from infrastructure.settings import Settings
from keel.bootstrap import build


def _present(outcome: object) -> tuple[int, bytes]:
    assert isinstance(outcome, TransferState), outcome
    return 201, msgspec.json.encode({"id": str(outcome.id)})


def test_racing_commits_of_one_key_store_one_effect(settings: Settings) -> None:
    first, second = build(settings), build(settings)
    try:
        a = first.writer.execute(OpenAccount(tenant="t", currency="EUR"))
        b = first.writer.execute(OpenAccount(tenant="t", currency="EUR"))
        first.writer.execute(Deposit(tenant="t", account_id=a.id, amount_minor=1_000, currency="EUR"))
        second.ledger.get_account(a.id)  # the second process has seen the accounts before

        scope, key = "key-1", "pay-1"
        hash_ = request_hash("POST", "/v1/transfers", b'{"amount":10}')
        command = MakeTransfer(
            tenant="t", debit_account_id=a.id, credit_account_id=b.id, amount_minor=10, currency="EUR",
            transfer_id=derived_id(scope, key),
        )  # fmt: skip
        render_1 = Renderer(scope, key, hash_, _present, first.idempotency)
        out_1 = first.writer.submit(command, render_1).result(30)
        assert isinstance(out_1, TransferState) and not render_1.superseded

        render_2 = Renderer(scope, key, hash_, _present, second.idempotency)
        out_2 = second.writer.submit(command, render_2).result(30)
        assert render_2.superseded and render_2.attempts >= 2
        assert isinstance(out_2, TransferState) and out_2.id == out_1.id

        stored = second.idempotency.get(scope, key)
        assert isinstance(stored, IdempotencyRecord) and stored.body == render_1.record.body  # type: ignore[union-attr]
        assert first.ledger.get_account(a.id).posted_minor == 990
        assert first.ledger.get_account(b.id).posted_minor == 10
    finally:
        first.close()
        second.close()


def test_renderer_never_stores_a_retryable_conflict(settings: Settings) -> None:
    from domain.errors import ConcurrencyConflict

    container = build(settings, start_writer=False)
    try:
        r = Renderer("s", "k", "h", _present, container.idempotency)
        assert r(ConcurrencyConflict("retry")) is None and r.record is None
    finally:
        container.ledger.close()
