"""Ids sent by cross-tenant roles (auditor, admin), resolved to storage keys.

A `banking` key's ids are always resolved inside its own tenant (domain/identity.py). Auditors
and admins see every tenant, so they name an account either by its tenant and public id
(`?tenant=T`), by its storage key (the `aggregate_id` of `/v1/audit/events`), or by a public id
alone when exactly one tenant has an account with it (found through the accounts view).
"""
from __future__ import annotations

from uuid import UUID

from api.errors import ApiError
from application.ledger import Ledger
from domain.account import Account
from domain.errors import NotFound, ValidationFailed
from domain.identity import account_key
from domain.limits import check_tenant

TENANT_DOC = (
    "Optional: the tenant whose account `account_id` names (a public id). Without it, `account_id` is the "
    "account's storage key (`aggregate_id` in `/v1/audit/events`) or a public id that exactly one tenant uses."
)


def account_key_for(ledger: Ledger, account_id: UUID, tenant: str | None) -> UUID:
    """The storage key of the account an auditor or admin names (blocking: call in a thread)."""
    if tenant is not None:
        try:
            check_tenant(tenant)
        except ValidationFailed as e:
            raise ApiError("validation_error", e.message, field="tenant") from None
        return account_key(tenant, account_id)
    keys = ledger.account_keys_named(account_id)
    # A client may choose a public id equal to another account's storage key: then it is ambiguous.
    if isinstance(ledger.load(account_id), Account) and account_id not in keys:
        keys.append(account_id)
    if len(keys) > 1:
        raise ApiError("validation_error", "several tenants have an account with this id: add ?tenant=", field="tenant")
    if not keys:
        raise NotFound("account not found")
    return keys[0]
