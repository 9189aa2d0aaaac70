"""The wire type of a currency: one of domain/currencies.py's ISO 4217 codes (the OpenAPI
document lists them)."""
from __future__ import annotations

from typing import Literal

from domain.currencies import ISO_4217_MINOR_UNITS

CurrencyCode = Literal[tuple(ISO_4217_MINOR_UNITS)]  # type: ignore[valid-type]
