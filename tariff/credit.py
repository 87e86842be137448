"""What a prepaid balance pays for: the longest call an amount affords on a rate.

The inverse of :func:`tariff.rates.charge`, so it honours everything ``charge`` does: the initial and
subsequent increments, the connection fee, the minimum duration and the rounding of money. The answer
is the end of the last whole increment the amount covers, ``affordable_ms(rate, amount) = L`` with

    charge(rate, L) <= amount < charge(rate, L + 1 ms)

(one millisecond more is billed as the next increment, so it would cost more than the amount). ``L`` is
always whole seconds, because billing rounds up to whole seconds first. A 6/6 rate whose amount covers
37 s of talk gives 36 s: the 37th second would be billed as 42.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from .rates import Rate, charge

# charge() rounds half up to 6 places: a cost is at least its exact value less half a unit.
_HALF_UNIT: Final = Decimal("0.0000005")


def cost_of(rate: Rate, billable_ms: int) -> Decimal:
    """What ``billable_ms`` of talk costs on ``rate`` (0 for 0 ms, as :func:`tariff.rates.charge`)."""
    return charge(rate, billable_ms)[1]


def affordable_ms(rate: Rate, amount: Decimal) -> int | None:
    """The longest billable duration, in ms, that ``amount`` pays for on ``rate`` (module docstring).

    0 when it does not pay for the first increment (with the fee and the minimum); None when the rate is
    free per minute and the amount covers the fee: money sets no limit then.
    """
    amount = Decimal(amount)
    if cost_of(rate, 1) > amount:
        return 0
    per_minute = rate.rate_per_minute
    if per_minute == 0:
        return None
    # cost(d) >= fee + per_minute * d / 60 - half a unit, so no affordable d lies above ``hi``; cost is
    # non-decreasing in d, so the last affordable second is found by bisection (about 40 charges for a
    # balance of millions).
    lo = 1
    hi = max(lo, int((amount - rate.connection_fee + _HALF_UNIT) * 60 / per_minute))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost_of(rate, mid * 1000) <= amount:
            lo = mid
        else:
            hi = mid - 1
    return lo * 1000
