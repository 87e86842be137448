"""Contract text -> exact integers (sipledger/store/parse.py): the column functions, which read the
contract's fixed shapes with numpy, answer exactly as the one-value functions for every input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipledger.store.parse import money_column_to_units, money_to_units, ts_column_to_ms, ts_to_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)

# Decimal(18, 6): 12 integer digits, 6 decimals.
money_values = st.decimals(min_value=Decimal("-999999999999.999999"),
                           max_value=Decimal("999999999999.999999"), places=6, allow_nan=False,
                           allow_infinity=False)
instants = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999000))
# Text near the contract's shapes, so that the fast paths' edges (signs, points, lengths, digits
# that are not ASCII, impossible dates) are reached often, not only by chance.
money_like = st.from_regex(r"\A[-+]?[0-9١_ ]{0,14}(\.[0-9 ]{0,8})?\Z")
ts_like = st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,4})?"
                        r"(Z|z|[+-][0-9]{2}:[0-9]{2})?\Z")


def contract_ts(dt: datetime) -> str:
    return f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def scalar_or_error(fn, value):
    try:
        return fn(value)
    except (ValueError, TypeError, OverflowError) as exc:
        return type(exc)


def column_or_error(fn, values):
    try:
        out = fn(values)
    except (ValueError, TypeError, OverflowError) as exc:
        return [type(exc)]
    return [None if v is np.ma.masked else int(v) for v in out]


@settings(max_examples=300)
@given(st.lists(money_values, max_size=40))
def test_money_in_the_contract_shape_converts_exactly(amounts: list[Decimal]) -> None:
    texts = [format(a, "f") for a in amounts]  # "0.022000", "-12.500000": six places, as rated
    units = money_column_to_units(texts)
    assert [int(u) for u in units] == [int(a * 1_000_000) for a in amounts]
    assert all(Decimal(int(u)) / 1_000_000 == a for u, a in zip(units, amounts, strict=True))


@settings(max_examples=300)
@given(st.lists(st.one_of(st.none(), money_values.map(lambda a: format(a, "f")), money_like), max_size=30))
def test_money_column_answers_as_the_one_value_function(values: list[str | None]) -> None:
    expected = []
    for v in values:
        got = None if v is None else scalar_or_error(money_to_units, v)
        if isinstance(got, int) and not -(2**63) < got < 2**63:
            got = ValueError  # a column is int64
        expected.append(got)
    errors = [e for e in expected if isinstance(e, type)]
    got = column_or_error(money_column_to_units, values)
    if errors:
        assert got == [errors[0]]
    else:
        assert got == expected


@pytest.mark.parametrize("text", ["0.0220001", "1e-7", "NaN", "Infinity", "1.2.3", "", "abc", "0x10"])
def test_money_that_would_round_or_is_no_number_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        money_to_units(text)
    with pytest.raises(ValueError):
        money_column_to_units(["1.000000", text])


def test_money_refuses_floats_and_keeps_nulls() -> None:
    with pytest.raises(TypeError):
        money_to_units(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        money_column_to_units(["0.100000", 0.1])  # type: ignore[list-item]
    units = money_column_to_units([None, "0.022000", None, Decimal("-0.008920"), 3])
    assert units.mask.tolist() == [True, False, True, False, False]
    assert units.data[[1, 3, 4]].tolist() == [22_000, -8_920, 3_000_000]
    assert money_to_units("0.0220000") == 22_000  # trailing zeros are not a loss


@settings(max_examples=300)
@given(st.lists(instants, max_size=40))
def test_contract_timestamps_convert_exactly(moments: list[datetime]) -> None:
    moments = [m.replace(microsecond=m.microsecond // 1000 * 1000, tzinfo=UTC) for m in moments]
    ms = ts_column_to_ms([contract_ts(m) for m in moments])
    assert ms.tolist() == [(m - EPOCH) // ONE_MS for m in moments]


@settings(max_examples=300)
@given(st.lists(st.one_of(st.none(), instants.map(contract_ts), ts_like, st.text(max_size=26)), max_size=30))
def test_timestamp_column_answers_as_the_one_value_function(values: list[str | None]) -> None:
    expected = [None if v is None else scalar_or_error(ts_to_ms, v) for v in values]
    errors = [e for e in expected if isinstance(e, type)]
    got = column_or_error(ts_column_to_ms, values)
    assert got == ([errors[0]] if errors else expected)


def test_timestamps_outside_the_fixed_shape_still_convert() -> None:
    values = ["2026-11-25T10:00:00.123Z", "2026-11-25T12:00:00.123+02:00", None, "2024-02-29T23:59:59.999Z"]
    ms = ts_column_to_ms(values)
    assert ms.mask.tolist() == [False, False, True, False]
    assert ms.data[0] == ms.data[1] == 1_795_600_800_123
    assert ms.data[3] == 1_709_251_199_999
    with pytest.raises(ValueError):
        ts_column_to_ms(["2026-11-25T10:00:00.000Z", "2026-02-29T10:00:00.000Z"])  # not a leap year
