"""What-if analysis of the no-timer cap (SS_SIP_NO_TIMER_REINVITE_INTERVAL) per account.

The candidates are built per account around the cap in force for it (:func:`cap_in_force`): the most
common ``effective_limit_s`` of its no-timer calls, else the configured one. A fixed list such as
900...14400 s says nothing to an account whose cap is 20 s (every candidate would only add exposure)
and too little to one at 7200 s; ``caps`` given by the caller (``--caps``) still replaces them.

For each candidate cap and account, over answered calls without session timers:

- cut: calls a party ended normally (BYE) that ran longer than the cap: the cap would have cut
  them; ``cut_minutes`` is what they ran beyond it and ``revenue_at_risk`` its sell value.
- exposure: the exposure of the account's zombie calls under that cap. A call that a no-timer cap
  ended is assumed to run on to any larger cap (a zombie has no natural end); any other zombie would
  stop at the smaller of where it stopped and the cap. Either way its exposure runs from its last
  proof of life to that stop. ``exposure_saved`` compares with what happened, so it is negative for
  caps above the one in force. Orphans are left out: their node is dead, and no cap can stop a call
  whose node is not running to enforce it.

``net_benefit`` (exposure saved at the sell rate minus revenue at risk) is measured against what
happened under the cap in force, whose own net benefit is therefore 0. The recommended cap per
account is the candidate with the best net benefit if that is positive (ties go to the larger cap,
which cuts fewer real conversations); when no candidate beats what happened - e.g. every candidate
lies above the cap in force and only adds exposure - the cap in force is kept. Only an account whose
cap is unknown gets the best candidate whatever its sign.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sipledger.store import Store

from .runaway import EXPOSURE_MS, MS_PER_MIN, PARTY_REASONS, ZOMBIE_REASONS, Period, _in

# VOS3000-style no-timer caps operators commonly run, s; the candidates for an account whose cap in
# force is unknown, and otherwise the ones among them within CAP_RANGE of it.
STANDARD_CAPS = (900, 1800, 3600, 5400, 7200, 14400)
# Candidates derived from the cap in force C, as fractions of it: C/4, C/2, 3C/4, C, 3C/2, 2C.
CAP_FRACTIONS = ((1, 4), (1, 2), (3, 4), (1, 1), (3, 2), (2, 1))
CAP_RANGE = ((1, 4), (2, 1))  # the sensible range around C, as the fractions above
CENTS = Decimal("0.0001")
ORPHANED = "orphaned"
NO_TIMER_LIMIT = "no_timer_limit"


@dataclass(slots=True)
class WhatIfRow:
    account: str
    cap_s: int
    in_force_s: int | None
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


def _frac(cap: int, frac: tuple[int, int]) -> int:
    """``cap * num / den`` in whole seconds, halves rounded up (integers: no float rounding)."""
    num, den = frac
    return max(1, (cap * num * 2 + den) // (den * 2))


def candidate_caps(in_force: int | None) -> tuple[int, ...]:
    """The caps to try for an account whose no-timer cap in force is ``in_force`` s (None: unknown)."""
    if in_force is None:
        return STANDARD_CAPS
    lo, hi = (_frac(in_force, f) for f in CAP_RANGE)
    around = {_frac(in_force, f) for f in CAP_FRACTIONS}
    return tuple(sorted(around | {c for c in STANDARD_CAPS if lo <= c <= hi}))


def configured_cap(no_timer_max_duration: int, max_call_duration: int = 0) -> int | None:
    """The cap a node applies to a no-timer call from the [timers] settings (0 = off), as the B2BUA does:
    the smaller of the two that are on; None when both are off."""
    on = [c for c in (no_timer_max_duration, max_call_duration) if c > 0]
    return min(on) if on else None


def cap_in_force(limits: list[int | None], configured: int | None = None) -> int | None:
    """The most common effective limit of an account's no-timer calls (ties: the larger, so a change of
    cap within the period is not read as a lower one than was running), else ``configured``."""
    counts = Counter(lim for lim in limits if lim)
    if not counts:
        return configured
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _calls(store: Store, period: Period) -> list[dict[str, Any]]:
    where, params = period.where()
    sql = f"""
        SELECT account, duration_ms, verified_ms, {EXPOSURE_MS} AS exposure_ms, end_reason,
               effective_limit_s, ifNull(sell_rate, toDecimal64(0, 6)) AS rate
        FROM cdrs FINAL
        WHERE {where} AND timer_mode = 'no_timer' AND answer_ms IS NOT NULL
          AND (end_reason IN {_in(PARTY_REASONS)} OR end_reason IN {_in(ZOMBIE_REASONS)})
    """
    return store.query(sql, params)


def _row(account: str, cap: int, in_force: int | None, calls: list[dict[str, Any]]) -> WhatIfRow:
    cap_ms = cap * 1000
    cut = cut_ms = exposure_ms = saved_ms = 0
    risk = saved_cost = Decimal(0)
    for c in calls:
        d, v, e = int(c["duration_ms"]), int(c["verified_ms"]), int(c["exposure_ms"])
        rate = Decimal(c["rate"])
        if c["end_reason"] in PARTY_REASONS:
            if d > cap_ms:
                cut += 1
                cut_ms += d - cap_ms
                risk += rate * (d - cap_ms) / MS_PER_MIN
            continue
        # Where the zombie would have stopped on the wire under this cap, from the answer.
        stop = cap_ms if c["end_reason"] == NO_TIMER_LIMIT else min(d, cap_ms)
        new_e = max(0, stop - v)  # exposure runs from the last proof (answer + verified) to the stop
        exposure_ms += new_e
        saved_ms += e - new_e
        saved_cost += rate * (e - new_e) / MS_PER_MIN
    return WhatIfRow(
        account,
        cap,
        in_force,
        len(calls),
        cut,
        (Decimal(cut_ms) / MS_PER_MIN).quantize(CENTS),
        risk.quantize(CENTS),
        (Decimal(exposure_ms) / MS_PER_MIN).quantize(CENTS),
        (Decimal(saved_ms) / MS_PER_MIN).quantize(CENTS),
        saved_cost.quantize(CENTS),
        (saved_cost - risk).quantize(CENTS),
    )


def recommend(rows: list[WhatIfRow], in_force: int | None) -> int:
    """One account's cap: the best positive net benefit, else the cap in force (see the module doc)."""
    best = max(rows, key=lambda r: (r.net_benefit, r.cap_s))
    if in_force is None or best.net_benefit > 0:
        return best.cap_s
    return in_force


def what_if(
    store: Store,
    period: Period = Period(),
    caps: tuple[int, ...] | None = None,
    configured: int | None = None,
) -> tuple[list[WhatIfRow], dict[str, int]]:
    """Rows for every (account, candidate cap), and the recommended cap per account.

    ``caps``: the candidates for every account (None: around each account's cap in force).
    ``configured``: the cap in force for accounts whose CDRs do not say (see :func:`configured_cap`).
    """
    by_account: dict[str, list[dict[str, Any]]] = {}
    for r in _calls(store, period):
        by_account.setdefault(r["account"], []).append(r)
    rows: list[WhatIfRow] = []
    best: dict[str, int] = {}
    for account, calls in sorted(by_account.items()):
        # Orphans still tell which cap was in force, but no cap could have stopped them.
        in_force = cap_in_force([c["effective_limit_s"] for c in calls], configured)
        stoppable = [c for c in calls if c["end_reason"] != ORPHANED]
        if not stoppable:
            continue
        account_rows = [_row(account, cap, in_force, stoppable)
                        for cap in (caps if caps is not None else candidate_caps(in_force))]
        rows += account_rows
        best[account] = recommend(account_rows, in_force)
    return rows, best
