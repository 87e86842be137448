"""Rate decks and the billing arithmetic, shared by the pipeline (rating CDRs) and the B2BUA (pricing a
prepaid call's limit at setup). Pure: it imports nothing of the project (tests/test_layering.py).

Rounding rules (the industry-standard "initial/subsequent increment" scheme, e.g. 60/60, 30/6, 6/6, 1/1):

1. A call with 0 ms of billable time (never answered, or nothing verified in ``verified`` mode) bills
   0 seconds and costs 0: no connection fee either.
2. Otherwise the exact duration in milliseconds is first rounded UP to whole seconds: ``d = ceil(ms/1000)``.
3. ``billed = initial`` if ``d <= initial``, else ``initial + ceil((d - initial) / subsequent) * subsequent``.
4. ``billed = max(billed, minimum_duration)``.

Money is :class:`~decimal.Decimal` end to end (never float): ``cost = connection_fee + rate_per_minute *
billed / 60``, quantized to 6 decimal places with ROUND_HALF_UP. Rates are per minute.

Rate lookup: for a party (account on the sell side, vendor on the buy side) the entry with the longest
prefix of the dialled number whose ``effective_from <= at`` (the answer time; setup time for unanswered
calls) wins; among entries of the same prefix the newest such ``effective_from``. If the longest prefix
only has entries that take effect in the future, shorter prefixes are tried (the number is still
routable on the older, broader entry). Numbers and prefixes are compared after stripping a leading "+".
"""

from __future__ import annotations

import bisect
import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Final

BILL_FULL: Final = "full"
BILL_VERIFIED: Final = "verified"
BILL_MODES: Final = frozenset({BILL_FULL, BILL_VERIFIED})
# ISO 4217 "no currency": used when no rate and no deck says what currency a zero amount is in.
NO_CURRENCY: Final = "XXX"
_QUANTUM: Final = Decimal("0.000001")
_SIXTY: Final = Decimal(60)

CSV_COLUMNS: Final = ("party", "prefix", "rate_per_minute", "initial_increment", "subsequent_increment",
                      "connection_fee", "minimum_duration", "currency", "effective_from")


_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)


def parse_date_or_ts(value: str) -> int:
    """An ISO date (``2026-01-01``, midnight UTC) or a date-time (naive means UTC) -> epoch ms.

    Used for rate-deck ``effective_from`` columns, which humans write, so it is lenient (event
    timestamps, which machines write, are parsed strictly by pipeline.domain.timeutil.parse_ts).
    """
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH_UTC) // timedelta(milliseconds=1)


def quantize_money(amount: Decimal) -> Decimal:
    """6 decimal places, ROUND_HALF_UP; negative zero is normalised to zero."""
    q = amount.quantize(_QUANTUM, rounding=ROUND_HALF_UP)
    return q if q else abs(q)


def money_str(amount: Decimal) -> str:
    """Plain decimal notation (never exponent form like ``1E-6``), as the money schema requires."""
    return format(amount, "f")


@dataclass(frozen=True, slots=True)
class Rate:
    party: str
    prefix: str
    rate_per_minute: Decimal
    initial_increment: int
    subsequent_increment: int
    connection_fee: Decimal
    minimum_duration: int
    currency: str
    effective_from_ms: int

    def __post_init__(self) -> None:
        if self.initial_increment < 0 or self.minimum_duration < 0:
            raise ValueError(f"negative increment/minimum in rate {self.party}/{self.prefix}")
        if self.subsequent_increment < 1:
            raise ValueError(f"subsequent_increment must be >= 1 in rate {self.party}/{self.prefix}")
        if self.rate_per_minute < 0 or self.connection_fee < 0:
            raise ValueError(f"negative money in rate {self.party}/{self.prefix}")
        if len(self.currency) != 3 or not self.currency.isupper() or not self.currency.isalpha():
            raise ValueError(f"currency must be a 3-letter ISO code, got {self.currency!r}")


def _norm_number(number: str) -> str:
    return number[1:] if number.startswith("+") else number


def billed_seconds(duration_ms: int, initial: int, subsequent: int, minimum: int) -> int:
    """Seconds to bill for ``duration_ms`` under initial/subsequent increments (module docstring rules)."""
    if duration_ms <= 0:
        return 0
    d = -(-duration_ms // 1000)  # ceil to whole seconds, integer-only
    billed = initial if d <= initial else initial + -(-(d - initial) // subsequent) * subsequent
    return max(billed, minimum)


def charge(rate: Rate, billable_ms: int) -> tuple[int, Decimal]:
    """(billed_seconds, cost) of ``billable_ms`` on ``rate``; 0 ms costs 0 (no connection fee)."""
    billed = billed_seconds(billable_ms, rate.initial_increment, rate.subsequent_increment,
                            rate.minimum_duration)
    if billed == 0:
        return 0, quantize_money(Decimal(0))
    return billed, quantize_money(rate.connection_fee + rate.rate_per_minute * billed / _SIXTY)


class RateDeck:
    """An immutable, versioned set of rates, indexed party -> prefix -> entries sorted by effective_from."""

    __slots__ = ("_index", "currency", "version")

    def __init__(self, rates: Iterable[Rate], version: str, currency: str | None = None) -> None:
        self.version = version
        grouped: dict[str, dict[str, list[Rate]]] = {}
        first_currency: str | None = None
        for r in rates:
            first_currency = first_currency or r.currency
            grouped.setdefault(r.party, {}).setdefault(_norm_number(r.prefix), []).append(r)
        self._index: dict[str, dict[str, tuple[list[int], list[Rate]]]] = {}
        for party, by_prefix in grouped.items():
            out: dict[str, tuple[list[int], list[Rate]]] = {}
            for prefix, entries in by_prefix.items():
                entries.sort(key=lambda e: e.effective_from_ms)
                starts = [e.effective_from_ms for e in entries]
                if len(set(starts)) != len(starts):
                    # Two rates for the same party, prefix and start: the deck is ambiguous, refuse it.
                    raise ValueError(f"duplicate rate for party {party!r} prefix {prefix!r}")
                out[prefix] = (starts, entries)
            self._index[party] = out
        # The deck's currency labels zero amounts when no rate matched (first row's currency by default).
        self.currency = currency or first_currency or NO_CURRENCY

    @classmethod
    def from_csv(cls, path_or_text: str | os.PathLike[str], version: str,
                 currency: str | None = None) -> RateDeck:
        """Load a deck from a CSV file path or from CSV text (a ``str`` containing a newline is text).

        Columns: party, prefix, rate_per_minute, initial_increment, subsequent_increment, connection_fee,
        minimum_duration, currency, effective_from (ISO date = midnight UTC, or a timestamp).
        """
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            text = path_or_text
        else:
            text = Path(path_or_text).read_text(encoding="utf-8")
        reader = csv.DictReader(io.StringIO(text))
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"rate deck {version!r} lacks columns {sorted(missing)}")
        rates = []
        for lineno, row in enumerate(reader, start=2):
            try:
                rates.append(Rate(
                    party=row["party"].strip(),
                    prefix=row["prefix"].strip(),
                    rate_per_minute=Decimal(row["rate_per_minute"].strip()),
                    initial_increment=int(row["initial_increment"]),
                    subsequent_increment=int(row["subsequent_increment"]),
                    connection_fee=Decimal((row["connection_fee"] or "0").strip()),
                    minimum_duration=int(row["minimum_duration"] or 0),
                    currency=row["currency"].strip(),
                    effective_from_ms=parse_date_or_ts(row["effective_from"]),
                ))
            except (ValueError, InvalidOperation, TypeError, AttributeError) as exc:
                raise ValueError(f"rate deck {version!r} line {lineno}: {exc}") from None
        return cls(rates, version, currency)

    def lookup(self, party: str, number: str, at_ms: int) -> Rate | None:
        """Longest-prefix match of ``number`` for ``party`` among entries effective at ``at_ms``."""
        by_prefix = self._index.get(party)
        if by_prefix is None:
            return None
        number = _norm_number(number)
        for end in range(len(number), -1, -1):
            hit = by_prefix.get(number[:end])
            if hit is None:
                continue
            starts, entries = hit
            i = bisect.bisect_right(starts, at_ms)
            if i:
                return entries[i - 1]
        return None

    def currency_of(self, party: str) -> str:
        """The currency of ``party``'s rates (its first entry's), else the deck's: what a prepaid account's
        balance is kept in."""
        for _, entries in self._index.get(party, {}).values():
            return entries[0].currency
        return self.currency

    def __len__(self) -> int:
        return sum(len(e) for p in self._index.values() for _, e in p.values())
