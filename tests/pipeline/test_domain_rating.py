from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.rating import RateDeck, billed_seconds, charge
from pipeline.domain.timeutil import parse_ts

DECK = """\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,\
minimum_duration,currency,effective_from
acme,44,0.0100,6,6,0,0,USD,2026-01-01
acme,4412,0.0200,30,6,0.05,0,USD,2026-01-01
acme,4412,0.0300,30,6,0.05,0,USD,2026-12-01
acme,1,0.0050,60,60,0,0,USD,2026-01-01
acme,,0.5,1,1,0,0,USD,2026-01-01
beta,44,0.0100,1,1,0,20,EUR,2026-01-01T12:00:00.000Z
"""
NOV = parse_ts("2026-11-25T10:00:00.000Z")


def test_billing_examples() -> None:
    assert billed_seconds(65_400, 6, 6, 0) == 66  # a normal 65.4 s call on 6/6
    assert billed_seconds(10_000, 30, 6, 0) == 30  # 30/6 on a 10 s call
    assert billed_seconds(61_000, 60, 60, 0) == 120  # 60/60 on 61 s
    assert billed_seconds(60_000, 60, 60, 0) == 60
    assert billed_seconds(1, 1, 1, 0) == 1  # 1 ms rounds up to a whole second
    assert billed_seconds(5_000, 1, 1, 20) == 20  # minimum duration
    assert billed_seconds(0, 30, 6, 20) == 0  # unanswered: nothing billed, minimum does not apply


def test_lookup_longest_prefix_and_newest_effective() -> None:
    deck = RateDeck.from_csv(DECK, "v7")
    assert deck.version == "v7" and len(deck) == 6
    assert deck.lookup("acme", "+441234567", NOV).rate_per_minute == Decimal("0.0200")
    assert deck.lookup("acme", "+4420", NOV).rate_per_minute == Decimal("0.0100")
    assert deck.lookup("acme", "4412999", parse_ts("2026-12-02T00:00:00.000Z")).rate_per_minute == \
        Decimal("0.0300")
    assert deck.lookup("acme", "33123", NOV).rate_per_minute == Decimal("0.5")  # default route
    assert deck.lookup("nobody", "44", NOV) is None
    # not yet effective at all for beta on that morning
    assert deck.lookup("beta", "44", parse_ts("2026-01-01T11:59:59.999Z")) is None
    assert deck.lookup("beta", "44", parse_ts("2026-01-01T12:00:00.000Z")) is not None


def test_future_entry_falls_back_to_shorter_prefix() -> None:
    deck = RateDeck.from_csv(DECK.replace("acme,4412,0.0200,30,6,0.05,0,USD,2026-01-01\n", ""), "v")
    assert deck.lookup("acme", "4412", NOV).prefix == "44"


def test_cost_with_connection_fee_rounded_half_up() -> None:
    deck = RateDeck.from_csv(DECK, "v")
    rate = deck.lookup("acme", "4412", NOV)
    billed, cost = charge(rate, 10_000)  # 30/6 -> 30 s at 0.02/min = 0.01 + 0.05 fee
    assert (billed, cost) == (30, Decimal("0.060000"))
    rate = deck.lookup("acme", "33", NOV)  # 0.5/min, 1/1
    assert charge(rate, 1)[1] == Decimal("0.008333")  # 0.5/60 = 0.0083333.. -> 6 dp
    assert charge(rate, 0) == (0, Decimal("0.000000"))  # no connection fee when nothing billed


def test_half_up_rounding() -> None:
    from pipeline.domain.rating import Rate

    r = Rate("a", "", Decimal("0.0000006"), 1, 1, Decimal(0), 0, "USD", 0)
    # 0.0000006 * 5 / 60 = 0.00000005 -> 0.000000 ; 0.0000006 * 60 / 60 = 0.0000006 -> 0.000001 (half up)
    assert charge(r, 60_000)[1] == Decimal("0.000001")


def test_from_file(tmp_path: Path) -> None:
    p = tmp_path / "deck.csv"
    p.write_text(DECK)
    assert len(RateDeck.from_csv(p, "f")) == 6
    assert len(RateDeck.from_csv(str(p), "f")) == 6


def test_bad_decks_are_refused() -> None:
    with pytest.raises(ValueError, match="columns"):
        RateDeck.from_csv("party,prefix\nacme,44\n", "v")
    with pytest.raises(ValueError, match="line 2"):
        RateDeck.from_csv(DECK.splitlines()[0] + "\nacme,44,x,6,6,0,0,USD,2026-01-01\n", "v")
    with pytest.raises(ValueError, match="subsequent"):
        RateDeck.from_csv(DECK.splitlines()[0] + "\nacme,44,1,6,0,0,0,USD,2026-01-01\n", "v")
    with pytest.raises(ValueError, match="duplicate"):
        RateDeck.from_csv(DECK + "acme,44,0.0200,6,6,0,0,USD,2026-01-01\n", "v")


increments = st.sampled_from([(1, 1), (6, 6), (30, 6), (60, 60), (0, 30), (60, 1)])


@given(st.integers(min_value=1, max_value=10**8), increments, st.integers(min_value=0, max_value=300))
def test_billed_seconds_follow_increments(duration_ms: int, inc: tuple[int, int], minimum: int) -> None:
    initial, subsequent = inc
    billed = billed_seconds(duration_ms, initial, subsequent, minimum)
    exact_s = Decimal(duration_ms) / 1000
    assert billed >= exact_s
    assert billed >= minimum and billed >= initial
    d = -(-duration_ms // 1000)
    if d > initial:
        assert (billed - initial) % subsequent == 0 or billed == minimum
        if billed > minimum:
            assert billed - exact_s < subsequent
    else:
        assert billed == max(initial, minimum)


@given(st.integers(min_value=-10**6, max_value=0), increments, st.integers(min_value=0, max_value=300))
def test_no_time_no_bill(duration_ms: int, inc: tuple[int, int], minimum: int) -> None:
    assert billed_seconds(duration_ms, *inc, minimum) == 0
