"""Tenant-scoped identity (domain/identity.py): pure functions, each rule a test that fails without it."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import errors
from domain.identity import (
    account_key,
    check_client_id,
    derived_id,
    is_system_id,
    reversal_public_id,
    settlement_currency,
    settlement_key,
    settlement_public_id,
    transfer_key,
)

tenants = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)


@given(tenants, tenants, st.uuids())
def test_the_same_public_id_in_two_tenants_names_two_objects(a: str, b: str, public_id: uuid.UUID) -> None:
    if a != b:
        assert account_key(a, public_id) != account_key(b, public_id)
        assert transfer_key(a, public_id) != transfer_key(b, public_id)
    # an account and a transfer never share a storage key
    assert account_key(a, public_id) != transfer_key(a, public_id)


@given(tenants, currencies, st.uuids())
def test_no_client_id_reaches_a_settlement_key(tenant: str, currency: str, public_id: uuid.UUID) -> None:
    assert account_key(tenant, public_id) != settlement_key(tenant, currency)
    assert transfer_key(tenant, public_id) != settlement_key(tenant, currency)


@given(tenants, currencies)
def test_the_settlement_public_id_resolves_to_the_tenants_settlement_key(tenant: str, currency: str) -> None:
    public = settlement_public_id(currency)
    assert settlement_currency(public) == currency
    assert account_key(tenant, public) == settlement_key(tenant, currency)
    assert is_system_id(public)


def test_settlement_public_ids_are_readable() -> None:
    assert str(settlement_public_id("EUR")) == "6b65656c-5e77-8000-8000-000000455552"


@given(st.uuids())
def test_client_uuids_are_never_system_ids(u: uuid.UUID) -> None:
    # uuid4 / uuid5 / uuid1 / uuid7 are never version 8: no client id is ever refused by accident
    if u.version != 8:
        assert check_client_id(u) == u
        assert settlement_currency(u) is None


@pytest.mark.parametrize("system", [settlement_public_id("USD"), reversal_public_id(uuid.uuid4()), derived_id("x", "y")])
def test_system_ids_cannot_be_chosen_by_a_client(system: uuid.UUID) -> None:
    with pytest.raises(errors.ValidationFailed):
        check_client_id(system)


def test_derived_ids_are_repeatable_and_distinct() -> None:
    t = uuid.uuid4()
    assert reversal_public_id(t) == reversal_public_id(t) != reversal_public_id(uuid.uuid4())
    assert derived_id("a", "b") != derived_id("b", "a")


def test_a_version_8_uuid_that_merely_starts_keel_with_another_tag_is_not_a_settlement() -> None:
    u = uuid.UUID("6b65656c-0001-8000-8000-000000455552")
    assert settlement_currency(u) is None
