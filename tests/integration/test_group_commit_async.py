"""`GroupCommitWriter.submit_async`: commands from an event loop, answered per batch in one hop
onto the loop (issue #16). Every command gets its own answer; one cancelled before the writer
took it is never run."""
from __future__ import annotations

import asyncio

from application.commands import Deposit, OpenAccount
from domain.errors import DomainError
from infrastructure.settings import Settings
from keel.bootstrap import build

T = "async"


def test_every_command_gets_its_own_answer(settings: Settings) -> None:
    c = build(settings)
    try:
        a = c.writer.execute(OpenAccount(tenant=T, currency="USD")).id

        async def run() -> list[object]:
            futures = [c.writer.submit_async(Deposit(tenant=T, account_id=a, amount_minor=k, currency="USD"))
                       for k in range(1, 201)]  # fmt: skip
            futures.append(c.writer.submit_async(Deposit(tenant=T, account_id=a, amount_minor=5, currency="EUR")))
            return await asyncio.gather(*futures)

        outcomes = asyncio.run(run())
        assert all(not isinstance(o, DomainError) for o in outcomes[:-1])
        assert isinstance(outcomes[-1], DomainError)  # a currency mismatch: its own refusal, alone
        assert c.ledger.get_account(a, T).posted_minor == sum(range(1, 201))
    finally:
        c.close()


def test_a_command_cancelled_before_the_writer_took_it_is_not_run(settings: Settings) -> None:
    c = build(settings, start_writer=False)
    try:
        a = c.ledger.execute(OpenAccount(tenant=T, currency="USD")).id

        async def run() -> object:
            cancelled = c.writer.submit_async(Deposit(tenant=T, account_id=a, amount_minor=1_000, currency="USD"))
            cancelled.cancel()  # the caller's timeout, before the writer runs
            kept = c.writer.submit_async(Deposit(tenant=T, account_id=a, amount_minor=7, currency="USD"))
            c.writer.start()
            return await asyncio.wait_for(kept, 30)

        outcome = asyncio.run(run())
        assert not isinstance(outcome, DomainError)
        assert c.ledger.get_account(a, T).posted_minor == 7
    finally:
        c.close()


def test_answers_for_a_closed_loop_are_dropped_not_raised(settings: Settings) -> None:
    c = build(settings)
    try:
        a = c.writer.execute(OpenAccount(tenant=T, currency="USD")).id
        loop = asyncio.new_event_loop()

        async def submit() -> None:
            c.writer.submit_async(Deposit(tenant=T, account_id=a, amount_minor=3, currency="USD"))

        loop.run_until_complete(submit())
        loop.close()  # nobody will read the answer
        # The writer goes on serving everyone else.
        c.writer.execute(Deposit(tenant=T, account_id=a, amount_minor=4, currency="USD"))
        assert c.ledger.get_account(a, T).posted_minor == 7
    finally:
        c.close()
