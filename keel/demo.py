"""`keel demo`: a short, real session against the configured store."""
from __future__ import annotations

from application.commands import Deposit, MakeTransfer, OpenAccount, Withdraw
from domain.errors import DomainError
from infrastructure.settings import Settings
from keel.bootstrap import build, migrate


def run_demo(settings: Settings) -> int:
    migrate(settings)
    c = build(settings)
    try:
        w = c.writer
        alice = w.execute(OpenAccount(tenant="demo", currency="EUR", metadata={"name": "alice"}))
        bob = w.execute(OpenAccount(tenant="demo", currency="EUR", metadata={"name": "bob"}))
        w.execute(Deposit(tenant="demo", account_id=alice.id, amount_minor=10_000, currency="EUR", reference="salary"))
        t = w.execute(MakeTransfer(tenant="demo", debit_account_id=alice.id, credit_account_id=bob.id, amount_minor=2_550, currency="EUR"))
        print(f"transfer {t.id} {t.status}: 25.50 EUR alice -> bob")
        hold = w.execute(MakeTransfer(tenant="demo", debit_account_id=bob.id, credit_account_id=alice.id, amount_minor=1_000, currency="EUR", pending=True))
        print(f"hold {hold.id} {hold.status}: 10.00 EUR bob -> alice")
        w.execute(Withdraw(tenant="demo", account_id=alice.id, amount_minor=500, currency="EUR"))
        try:
            w.execute(MakeTransfer(tenant="demo", debit_account_id=bob.id, credit_account_id=alice.id, amount_minor=1_000_000, currency="EUR"))
        except DomainError as e:
            print(f"rejected as expected: {e.code} (available {e.details.get('available')})")
        for name, acct in (("alice", alice), ("bob", bob)):
            s = c.ledger.get_account(acct.id)
            print(f"{name:5} posted={s.posted_minor:>6} pending_debits={s.pending_debits_minor:>5} available={s.available_minor:>6}")
    finally:
        c.close()
    return 0
