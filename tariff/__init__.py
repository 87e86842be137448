"""Rating shared by the B2BUA and the pipeline: rate decks, the billing arithmetic, and what a prepaid
balance affords. Pure (no I/O beyond reading a deck file, no clock) and importing nothing of the
project, so both sides may use it without importing each other (tests/test_layering.py)."""

from .credit import affordable_ms, cost_of
from .rates import (
    BILL_FULL,
    BILL_MODES,
    BILL_VERIFIED,
    NO_CURRENCY,
    Rate,
    RateDeck,
    billed_seconds,
    charge,
    money_str,
    quantize_money,
)

__all__ = ["BILL_FULL", "BILL_MODES", "BILL_VERIFIED", "NO_CURRENCY", "Rate", "RateDeck", "affordable_ms",
           "billed_seconds", "charge", "cost_of", "money_str", "quantize_money"]
