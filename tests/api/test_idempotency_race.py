"""Two writers (as in two API processes) commit the same Idempotency-Key: one effect, one answer.

The second commit hits the idempotency primary key, the ledger re-runs its batch, finds the key
answered (the renderer's `recorded()`) and skips the command (no second effect), and the renderer
marks itself superseded so the API answers with the stored response.
"""
from __future__ import annotations

import msgspec

from api.idempotency import Renderer, derived_id, request_hash
from application.commands import Deposit, MakeTransfer, OpenAccount, TransferState
from application.ports import IdempotencyRecord
from domain.errors import ConcurrencyConflict
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
        second.ledger.get_account(a.id, "t")  # the second process has seen the accounts before

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
        # The second commit conflicted (idempotency key and transfer id both taken), and on the
        # re-run the ledger found the key answered and skipped the command: no second effect.
        assert render_2.superseded and second.ledger.conflict_retries >= 1
        # The ledger's own outcome for a skipped command is a retryable conflict marker; the API
        # answers with the stored response instead (api.idempotency.run_write).
        assert isinstance(out_2, ConcurrencyConflict)

        stored = second.idempotency.get(scope, key)
        assert isinstance(stored, IdempotencyRecord) and stored.answer == render_1.record.answer  # type: ignore[union-attr]
        assert first.ledger.get_account(a.id, "t").posted_minor == 990
        assert first.ledger.get_account(b.id, "t").posted_minor == 10
    finally:
        first.close()
        second.close()


def test_renderer_never_stores_a_retryable_conflict(settings: Settings) -> None:
    from domain.errors import ConcurrencyConflict

    container = build(settings, start_writer=False)
    try:
        r = Renderer("s", "k", "h", _present, container.idempotency)
        assert r.render(ConcurrencyConflict("retry")) is None and r.record is None
        from application.unit_of_work import CommandFailed

        assert r.render(CommandFailed("a bug")) is None and r.record is None  # a 500 is never replayed
    finally:
        container.ledger.close()


def test_claims_exclude_a_second_holder_until_released_or_stale(settings: Settings) -> None:
    

    container = build(settings, start_writer=False)
    try:
        claims = container.claims
        assert claims.claim("s", "k", 1_000, 0)
        assert not claims.claim("s", "k", 2_000, 500)  # held, and not stale
        assert claims.claim("s", "other", 2_000, 500)  # another key is free
        assert claims.claim("t", "k", 2_000, 500)  # the same key under another API key is free
        assert claims.claim("s", "k", 3_000, 1_001)  # stale: taken over
        claims.release("s", "k")
        assert claims.claim("s", "k", 4_000, 0)
        assert claims.delete_older_than(3_000) == 2  # ("s","other") and ("t","k")
    finally:
        container.ledger.close()


def test_cleanup_worker_deletes_old_records_and_claims(settings: Settings) -> None:
    import time

    
    from keel.workers import WORKERS

    container = build(settings)
    try:
        now_ms = int(time.time() * 1000)

        class render_at:  # noqa: N801 - an OutcomeRecorder that stores a record of a given age
            def __init__(self, created_at_ms: int, key: str) -> None:
                self.record = IdempotencyRecord(
                    scope="s", key=key, request_hash="h", answer=b"\x00\xc9{}", created_at_ms=created_at_ms
                )

            def recorded(self) -> bool:
                return False

            def render(self, _outcome: object) -> IdempotencyRecord:
                return self.record

        for key, created in (("old", now_ms - 25 * 3600 * 1000), ("young", now_ms - 23 * 3600 * 1000)):
            container.writer.submit(OpenAccount(tenant="t", currency="EUR"), render_at(created, key)).result(30)
        claims = container.claims
        assert claims.claim("s", "dead", 0, 0)
        assert claims.claim("s", "live", now_ms, 0)

        worker = WORKERS["idempotency_cleanup"](container)
        worker.start()  # ticks once at once
        for _ in range(100):
            if container.idempotency.get("s", "old") is None:
                break
            time.sleep(0.05)
        worker.stop()
        assert container.idempotency.get("s", "old") is None
        assert container.idempotency.get("s", "young") is not None  # kept: younger than 24 h
        assert claims.claim("s", "dead", now_ms, 0)  # free again: its stale claim was deleted
        assert not claims.claim("s", "live", now_ms, 0)
    finally:
        container.close()
