"""What-if analysis of the no-timer cap (SS_SIP_NO_TIMER_REINVITE_INTERVAL) per account.

For each candidate cap and account, over answered calls without session timers:

- cut: calls a party ended normally (BYE) that ran longer than the cap: the cap would have cut
  them; ``cut_minutes`` is what they ran beyond it and ``revenue_at_risk`` its sell value.
- exposure: the unverified minutes of zombie calls under that cap. A call the current cap ended
  is assumed to run on to any larger cap (a zombie has no natural end); any other call would end
  at the smaller of its duration and the cap. ``exposure_saved`` compares with what happened.

The recommended cap per account maximises exposure saved minus revenue at risk; ties go to the
larger cap, which cuts fewer real conversations.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sipledger.store import Store

from .runaway import MS_PER_MIN, PARTY_REASONS, ZOMBIE_REASONS, Period, _in

CANDIDATE_CAPS = (900, 1800, 3600, 5400, 7200, 14400)
CENTS = Decimal("0.0001")


@dataclass(slots=True)
class WhatIfRow:
    account: str
    cap_s: int
    calls: int
    cut_calls: int
    cut_minutes: Decimal
    revenue_at_risk: Decimal
    exposure_minutes: Decimal
    exposure_saved_minutes: Decimal
    exposure_saved_cost: Decimal
    net_benefit: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _calls(store: Store, period: Period) -> list[dict[str, Any]]:
    where, params = period.where()
    sql = f"""
        SELECT account, duration_ms, verified_ms, unverified_ms, end_reason,
               ifNull(sell_rate, toDecimal64(0, 6)) AS rate
        FROM cdrs FINAL
        WHERE {where} AND timer_mode = 'no_timer' AND answer_ms IS NOT NULL
          AND (end_reason IN {_in(PARTY_REASONS)} OR end_reason IN {_in(ZOMBIE_REASONS)})
    """
    return store.query(sql, params)


def what_if(
    store: Store, period: Period = Period(), caps: tuple[int, ...] = CANDIDATE_CAPS
) -> tuple[list[WhatIfRow], dict[str, int]]:
    """Rows for every (account, cap), and the recommended cap per account."""
    by_account: dict[str, list[dict[str, Any]]] = {}
    for r in _calls(store, period):
        by_account.setdefault(r["account"], []).append(r)
    rows: list[WhatIfRow] = []
    best: dict[str, int] = {}
    for account, calls in sorted(by_account.items()):
        candidates = []
        for cap in caps:
            cap_ms = cap * 1000
            cut = cut_ms = 0
            risk = Decimal(0)
            exposure_ms = 0
            saved_ms = 0
            saved_cost = Decimal(0)
            for c in calls:
                d, v, u = int(c["duration_ms"]), int(c["verified_ms"]), int(c["unverified_ms"])
                rate = Decimal(c["rate"])
                if c["end_reason"] in PARTY_REASONS:
                    if d > cap_ms:
                        cut += 1
                        cut_ms += d - cap_ms
                        risk += rate * (d - cap_ms) / MS_PER_MIN
                    continue
                new_d = cap_ms if c["end_reason"] == "no_timer_limit" else min(d, cap_ms)
                new_u = max(0, new_d - v)
                exposure_ms += new_u
                saved_ms += u - new_u
                saved_cost += rate * (u - new_u) / MS_PER_MIN
            row = WhatIfRow(
                account,
                cap,
                len(calls),
                cut,
                (Decimal(cut_ms) / MS_PER_MIN).quantize(CENTS),
                risk.quantize(CENTS),
                (Decimal(exposure_ms) / MS_PER_MIN).quantize(CENTS),
                (Decimal(saved_ms) / MS_PER_MIN).quantize(CENTS),
                saved_cost.quantize(CENTS),
                (saved_cost - risk).quantize(CENTS),
            )
            rows.append(row)
            candidates.append(row)
        best[account] = max(candidates, key=lambda r: (r.net_benefit, r.cap_s)).cap_s
    return rows, best
