"""Contract text -> exact integers: ISO timestamps to epoch milliseconds, money to integer units.

One value at a time (``ts_to_ms``, ``money_to_units``) or a whole column at a time
(``ts_column_to_ms``, ``money_column_to_units``). The column functions read the contract's fixed
shapes (``YYYY-MM-DDTHH:MM:SS.mmmZ``; ``-digits.dddddd``) with numpy over the column's ASCII bytes,
a few array operations instead of a Python call per value; any value without that shape goes
through the one-value function, so both answer alike for every input. Integers all the way: a
float never carries money or time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

MONEY_SCALE = 6  # the contract's money has 6 decimals; the tables' Decimal(18, 6) too

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_HALF_MS = timedelta(microseconds=500)
_INT64_MAX = 2**63 - 1


def ts_to_ms(ts: str | None) -> int | None:
    """ISO 8601 -> epoch ms (UTC), rounded half up below the millisecond; naive means local time."""
    if ts is None:
        return None
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:
        dt = dt.astimezone(UTC)  # what datetime.timestamp() assumes for a naive value
    return (dt - _EPOCH + _HALF_MS) // _ONE_MS


def money_to_units(value: str | Decimal | int, scale: int = MONEY_SCALE) -> int:
    """A money amount as an integer count of 10**-scale (micro-units at scale 6), exactly.

    Refuses floats, and amounts with more decimals than ``scale`` that are not zeros: storing
    them would round money.
    """
    if isinstance(value, bool | float) or not isinstance(value, str | Decimal | int):
        raise TypeError(f"money must be a decimal string, Decimal or int, not {type(value).__name__}")
    if isinstance(value, int):
        return value * 10**scale
    try:
        d = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a money amount: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a money amount: {value!r}")
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    shift = exponent + scale
    if shift > 30:  # far beyond any column; refuse before building a huge integer
        raise ValueError(f"money amount out of range: {value!r}")
    coefficient = int("".join(map(str, digits)))
    if shift >= 0:
        units = coefficient * 10**shift
    else:
        units, rest = divmod(coefficient, 10**-shift)
        if rest:
            raise ValueError(f"money amount {value!r} has more than {scale} decimals")
    return -units if sign else units


def without_nulls(values: Sequence[Any], stand_in: Any) -> tuple[Sequence[Any], np.ndarray | None]:
    """(values with ``stand_in`` for each None, mask of the Nones), or (values, None) if none."""
    if None not in values:
        return values, None
    filled = np.array(values, dtype=object)
    nulls = np.equal(filled, None)
    filled[nulls] = stand_in
    return filled.tolist(), nulls


def _masked(values: np.ndarray, nulls: np.ndarray | None) -> np.ndarray:
    return values if nulls is None else np.ma.MaskedArray(values, nulls)


# -- timestamps -------------------------------------------------------------------------------------

_TS_LEN = 24
_TS_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22]
_TS_MARKS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b".", 23: b"Z"}
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int32)


def ts_column_to_ms(values: Sequence[str | None]) -> np.ndarray:
    """Timestamps -> int64 epoch ms; a masked array where values are None. Same answers as ts_to_ms."""
    texts, nulls = without_nulls(values, "1970-01-01T00:00:00.000Z")
    ms, ok = _fixed_shape_ms(texts)
    for i in np.flatnonzero(~ok):
        ms[i] = ts_to_ms(texts[i])
    return _masked(ms, nulls)


def _fixed_shape_ms(texts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of the rows shaped ``YYYY-MM-DDTHH:MM:SS.mmmZ`` and a mask of those rows."""
    n = len(texts)
    ms = np.zeros(n, dtype=np.int64)
    rows = _fixed_width_rows(texts, _TS_LEN)
    if rows is None:
        return ms, np.zeros(n, dtype=bool)
    by_position = np.ascontiguousarray(rows.T)  # one contiguous array per character position
    digits = by_position[_TS_DIGITS] - np.uint8(ord("0"))  # wraps below "0": one test checks both ends
    ok = (digits <= 9).all(axis=0)
    for pos, mark in _TS_MARKS.items():
        ok &= by_position[pos] == mark[0]
    d = digits.astype(np.int32)  # fields and day counts fit; half the memory traffic of int64
    year = d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3]
    month, day = d[4] * 10 + d[5], d[6] * 10 + d[7]
    hour, minute, second = d[8] * 10 + d[9], d[10] * 10 + d[11], d[12] * 10 + d[13]
    milli = d[14] * 100 + d[15] * 10 + d[16]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
    # Anything datetime would refuse (year 0, 31 April, 24:00, leap seconds) is left to it.
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour < 24) & (minute < 60) & (second < 60)
    days = _days_from_civil(year, month, day).astype(np.int64)
    ms[:] = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + milli
    return ms, ok


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's days_from_civil), year >= 1."""
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _fixed_width_rows(texts: Sequence[Any], width: int) -> np.ndarray | None:
    """The texts as an (n, width) uint8 array if every one is ASCII of exactly ``width`` chars.

    Joined with newlines: a total of n * (width + 1) chars holding exactly n newlines, each in the
    last column, proves every text has ``width`` chars and none contains a newline.
    """
    n = len(texts)
    try:
        blob = "\n".join(texts) + "\n"
    except TypeError:  # not all strings: the one-value path says what is wrong
        return None
    if len(blob) != n * (width + 1) or blob.count("\n") != n or not blob.isascii():
        return None
    rows = np.frombuffer(blob.encode("ascii"), dtype=np.uint8).reshape(n, width + 1)
    if not (rows[:, width] == ord("\n")).all():
        return None
    return rows[:, :width]


# -- money ------------------------------------------------------------------------------------------


def money_column_to_units(values: Sequence[str | Decimal | int | None],
                          scale: int = MONEY_SCALE) -> np.ndarray:
    """Money -> int64 units (micro-units at scale 6); masked where None. Same answers as money_to_units."""
    texts, nulls = without_nulls(values, "0." + "0" * scale)
    units, ok = _fixed_point_units(texts, scale)
    for i in np.flatnonzero(~ok):
        v = money_to_units(texts[i], scale)
        if not -_INT64_MAX <= v <= _INT64_MAX:
            raise ValueError(f"money amount out of range: {texts[i]!r}")
        units[i] = v
    return _masked(units, nulls)


def _fixed_point_units(texts: Sequence[Any], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Units of the rows shaped ``-?D{1,18-scale}.D{scale}`` (ASCII) and a mask of those rows.

    At most 18 digits, so every value is exact in int64. The texts are joined with newlines and
    read right-aligned, one pass per position k from each text's end: the decimal point of every
    valid row is at k == scale.
    """
    n = len(texts)
    units = np.zeros(n, dtype=np.int64)
    none_ok = np.zeros(n, dtype=bool)
    try:
        blob = "\n".join(texts) + "\n"
    except TypeError:  # Decimal or int values (rows built in Python): the one-value path
        return units, none_ok
    if n == 0 or not blob.isascii():
        return units, none_ok
    chars = np.frombuffer(blob.encode("ascii"), dtype=np.uint8)
    ends = np.flatnonzero(chars == ord("\n"))
    if len(ends) != n:  # a text holds a newline itself
        return units, none_ok
    lengths = np.diff(ends, prepend=-1) - 1
    width = min(int(lengths.max()), 20)
    negative = chars[np.maximum(ends - lengths, 0)] == ord("-")
    digits_end = lengths - negative  # the digits and the point are at k < digits_end
    int_digits = digits_end - scale - 1
    ok = (lengths <= width) & (int_digits >= 1) & (int_digits <= 18 - scale)
    for k in range(width):
        c = chars[np.maximum(ends - 1 - k, 0)]
        if k == scale:
            ok &= c == ord(".")
            continue
        needed = digits_end > k
        digit = c - np.uint8(ord("0"))  # wraps below "0": one test checks both ends
        ok &= (digit <= 9) | ~needed
        units += np.where(needed, digit, 0) * np.int64(10 ** (k if k < scale else k - 1))
    units[negative] *= -1
    return units, ok
