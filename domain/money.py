"""Money primitives: amounts are `int` minor units, currencies ISO 4217 codes. Never floats."""
from __future__ import annotations

import re

from domain.currencies import ISO_4217_MINOR_UNITS
from domain.errors import InvalidAmount, InvalidCurrency

AMOUNT_MAX_MINOR = 2**63 - 1
# Balances are stored as signed 64-bit integers by every read model; keep them in range.
BALANCE_MIN_MINOR = -(2**63)
BALANCE_MAX_MINOR = 2**63 - 1

_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def check_amount(amount_minor: object) -> int:
    # bool is an int subclass; True is not one cent.
    if type(amount_minor) is not int:
        raise InvalidAmount("amount must be an integer number of minor units", amount=str(amount_minor))
    if amount_minor <= 0:
        raise InvalidAmount("amount must be positive", amount=amount_minor)
    if amount_minor > AMOUNT_MAX_MINOR:
        raise InvalidAmount(f"amount must be at most {AMOUNT_MAX_MINOR}", amount=amount_minor)
    return amount_minor


def check_currency(currency: object) -> str:
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise InvalidCurrency("currency must be a three-letter upper-case ISO 4217 code", currency=str(currency)[:16])
    if currency not in ISO_4217_MINOR_UNITS:
        raise InvalidCurrency(f"{currency} is not an ISO 4217 currency code", currency=currency)
    return currency
