"""affordable_ms: the longest call an amount pays for, checked against the billing arithmetic itself."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tariff import Rate, affordable_ms, billed_seconds, charge, cost_of


def _rate(per_minute: str, initial: int = 6, subsequent: int = 6, fee: str = "0", minimum: int = 0) -> Rate:
    return Rate("acme", "1555", Decimal(per_minute), initial, subsequent, Decimal(fee), minimum, "USD", 0)


def test_a_balance_of_37_seconds_at_6_6_affords_36() -> None:
    rate = _rate("1.00")
    amount = Decimal("0.62")  # 37 s cost 0.616667; billed on 6/6 they are 42 s = 0.70
    assert cost_of(rate, 36_000) == Decimal("0.600000") <= amount < cost_of(rate, 37_000)
    assert affordable_ms(rate, amount) == 36_000


def test_first_increment_fee_and_minimum() -> None:
    # 30/6 with a fee: the first increment (30 s) and the fee must both be paid for.
    rate = _rate("0.60", 30, 6, fee="0.05")
    first = cost_of(rate, 1)
    assert first == Decimal("0.350000")
    assert affordable_ms(rate, first - Decimal("0.000001")) == 0
    assert affordable_ms(rate, first) == 30_000
    assert affordable_ms(rate, Decimal("0.41")) == 36_000
    # A minimum between increments: up to 6 s talk is billed as the 10 s minimum, 7 s as 12 s.
    rate = _rate("0.60", 6, 6, minimum=10)
    assert affordable_ms(rate, cost_of(rate, 6_000)) == 6_000
    assert affordable_ms(rate, cost_of(rate, 12_000) - Decimal("0.000001")) == 6_000
    assert affordable_ms(rate, cost_of(rate, 12_000)) == 12_000


def test_nothing_free_and_negative() -> None:
    rate = _rate("1.00")
    assert affordable_ms(rate, Decimal(0)) == 0
    assert affordable_ms(rate, Decimal("-5")) == 0
    free = _rate("0", fee="0.10")
    assert affordable_ms(free, Decimal("0.10")) is None  # the fee is paid, minutes are free: no limit
    assert affordable_ms(free, Decimal("0.09")) == 0


def test_large_balance_is_exact() -> None:
    rate = _rate("0.013", 60, 60)
    amount = Decimal("1000000.00")
    limit = affordable_ms(rate, amount)
    assert limit is not None
    assert cost_of(rate, limit) <= amount < cost_of(rate, limit + 1)
    assert limit % 60_000 == 0


money = st.decimals(min_value=Decimal("0"), max_value=Decimal("50"), places=6, allow_nan=False,
                    allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(per_minute=st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("5"), places=6),
       initial=st.integers(0, 120), subsequent=st.integers(1, 60), minimum=st.integers(0, 120),
       fee=st.decimals(min_value=Decimal("0"), max_value=Decimal("1"), places=6), amount=money)
def test_cost_of_the_limit_fits_and_one_more_increment_does_not(per_minute: Decimal, initial: int,
                                                                 subsequent: int, minimum: int, fee: Decimal,
                                                                 amount: Decimal) -> None:
    rate = Rate("a", "", per_minute, initial, subsequent, fee, minimum, "USD", 0)
    limit = affordable_ms(rate, amount)
    assert limit is not None and limit >= 0 and limit % 1000 == 0
    if limit == 0:
        assert cost_of(rate, 1) > amount  # not even the first increment
        return
    assert charge(rate, limit)[1] <= amount
    # One millisecond more is billed as the next increment, and that costs more than the amount.
    billed = billed_seconds(limit, initial, subsequent, minimum)
    assert billed_seconds(limit + 1, initial, subsequent, minimum) > billed
    assert amount < charge(rate, limit + 1)[1]
    assert amount < cost_of(rate, limit + subsequent * 1000)
