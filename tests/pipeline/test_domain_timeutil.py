from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.timeutil import format_ts, parse_date_or_ts, parse_ts


def test_parse_known_value() -> None:
    assert parse_ts("1970-01-01T00:00:00.000Z") == 0
    assert parse_ts("2026-11-25T10:00:00.123Z") == 1_795_600_800_123


def test_format_always_three_fraction_digits() -> None:
    assert format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(1_795_600_800_000) == "2026-11-25T10:00:00.000Z"
    assert format_ts(1_795_600_800_007) == "2026-11-25T10:00:00.007Z"


def test_non_utc_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_ts("2026-11-25T10:00:00.123+01:00")


def test_leap_day() -> None:
    assert format_ts(parse_ts("2028-02-29T23:59:59.999Z") + 1) == "2028-03-01T00:00:00.000Z"


def test_date_or_ts_for_rate_decks() -> None:
    assert parse_date_or_ts("2026-11-25") == parse_ts("2026-11-25T00:00:00.000Z")
    assert parse_date_or_ts("2026-11-25T10:00:00.123Z") == 1_795_600_800_123
    assert parse_date_or_ts(" 2026-11-25T10:00:00 ") == 1_795_600_800_000


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_roundtrip(ms: int) -> None:
    assert parse_ts(format_ts(ms)) == ms
