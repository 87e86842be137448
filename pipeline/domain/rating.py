"""The domain's entry to rating: rate decks and the billing arithmetic (rules in tariff/rates.py).

They live in the shared pure package ``tariff`` because the B2BUA prices a prepaid call's limit at
setup with the same arithmetic the pipeline bills with; the domain keeps importing them from here.
"""

from __future__ import annotations

from tariff.credit import affordable_ms, cost_of
from tariff.rates import (
    BILL_FULL,
    BILL_MODES,
    BILL_VERIFIED,
    CSV_COLUMNS,
    NO_CURRENCY,
    Rate,
    RateDeck,
    billed_seconds,
    charge,
    money_str,
    quantize_money,
)

__all__ = ["BILL_FULL", "BILL_MODES", "BILL_VERIFIED", "CSV_COLUMNS", "NO_CURRENCY", "Rate", "RateDeck",
           "affordable_ms", "billed_seconds", "charge", "cost_of", "money_str", "quantize_money"]
