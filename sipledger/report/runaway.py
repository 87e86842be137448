"""Runaway-cost figures from the operator's own CDRs (same SQL on chDB and on ClickHouse servers).

The runaway measure is *exposure* (CDR ``exposure_ms``): from a call's last proof of life to the
instant it stopped running on the wire as far as the log knows - the BYE its node sent, or for an
orphan (nobody ended it) the pipeline's detection. It is what the carrier may bill. Unverified time
(``unverified_ms``, billed to the customer on faith) is kept as its own column: the two are equal
for calls a node ended, but an orphan is billed only to its last proof (unverified 0) while its
exposure runs on, so reading unverified time alone showed orphans as costing nothing.

Money stays Decimal: the SQL only multiplies Decimal rates by integer milliseconds
(which every ClickHouse version does exactly) and Python divides by 60,000.
Every query reads ``cdrs FINAL`` so a re-delivered CDR never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pipeline.domain import end_reasons
from sipledger.store import Store

MS_PER_MIN = Decimal(60_000)
MONEY = Decimal("0.01")
ZOMBIE_REASONS = tuple(sorted(end_reasons.ZOMBIE_REASONS))
LIMIT_REASONS = ("no_timer_limit", "max_duration_limit")
PARTY_REASONS = tuple(sorted(end_reasons.PARTY_BYE_REASONS))
# A call "ended exactly at a limit" when it stopped within this much of its effective limit.
AT_LIMIT_TOLERANCE_MS = 2_000
# A call's exposure in ms. Rows written before CDR schema_version 2 read exposure_ms as 0 (the 005
# migration's default) although their node-ended zombies ran exposed for their unverified time; for
# every version-2 row exposure_ms >= unverified_ms (equal when a node ended the call, unverified 0 for
# an orphan), so the larger of the two is exposure_ms on new rows and the old reports' measure on old
# ones, instead of showing history as zero after the migration. Plain greatest(): 18.16 has it.
EXPOSURE_MS = "greatest(exposure_ms, unverified_ms)"

GROUPINGS = {
    "account": "account",
    "vendor": "vendor",
    "prefix": "substring(callee, 1, {prefix_len})",
    "day": "toString(toDate(intDiv(end_ms, 1000)))",
}


@dataclass(frozen=True, slots=True)
class Period:
    since_ms: int | None = None
    until_ms: int | None = None

    def where(self, alias: str = "") -> tuple[str, dict[str, Any]]:
        parts, params = ["1 = 1"], {}
        if self.since_ms is not None:
            parts.append(f"{alias}end_ms >= %(since)s")
            params["since"] = self.since_ms
        if self.until_ms is not None:
            parts.append(f"{alias}end_ms < %(until)s")
            params["until"] = self.until_ms
        return " AND ".join(parts), params

    def describe(self) -> str:
        def fmt(ms: int | None) -> str:
            return "…" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")

        if self.since_ms is None and self.until_ms is None:
            return "all CDRs"
        return f"{fmt(self.since_ms)} to {fmt(self.until_ms)} UTC"


# The label of the totals row (in the grouping's column); renderers bold only that row.
TOTAL = "TOTAL"
# The summed columns of a runaway row, in the rows' order; the Decimal ones sum from Decimal(0).
SUMMED_KEYS = ("calls", "answered", "zombie_calls", "zombie_minutes", "exposure_minutes",
               "exposure_sell_cost", "exposure_buy_cost", "open_exposure_calls", "unverified_minutes",
               "ended_at_limit", "minutes", "sell_cost", "buy_cost", "margin")
DECIMAL_KEYS = frozenset({"zombie_minutes", "exposure_minutes", "exposure_sell_cost", "exposure_buy_cost",
                          "unverified_minutes", "minutes", "sell_cost", "buy_cost", "margin"})


@dataclass(slots=True)
class RunawayReport:
    by: str
    period: Period
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    top_offenders: list[dict[str, Any]] = field(default_factory=list)


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _minutes(ms: Any) -> Decimal:
    return (Decimal(int(ms or 0)) / MS_PER_MIN).quantize(MONEY)


def _cost(rate_ms: Any) -> Decimal:
    return (Decimal(rate_ms or 0) / MS_PER_MIN).quantize(Decimal("0.0001"))


def runaway_cost(
    store: Store, by: str = "account", period: Period = Period(), prefix_len: int = 2, top: int = 10
) -> RunawayReport:
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}")
    group = GROUPINGS[by].format(prefix_len=int(prefix_len))
    where, params = period.where()
    sql = f"""
        SELECT {group} AS grp,
               count() AS calls,
               countIf(answer_ms IS NOT NULL) AS answered,
               countIf(zombie = 1) AS zombie_calls,
               sumIf(duration_ms, zombie = 1) AS zombie_ms,
               sum({EXPOSURE_MS}) AS sum_exposure_ms,
               sum(ifNull(sell_rate, toDecimal64(0, 6)) * {EXPOSURE_MS}) AS exposure_sell_rate_ms,
               sum(ifNull(buy_rate, toDecimal64(0, 6)) * {EXPOSURE_MS}) AS exposure_buy_rate_ms,
               countIf(exposure_open = 1) AS open_exposure,
               sum(unverified_ms) AS sum_unverified_ms,
               countIf(end_reason IN {_in(LIMIT_REASONS)} AND effective_limit_s IS NOT NULL
                       AND duration_ms + {AT_LIMIT_TOLERANCE_MS} >= effective_limit_s * 1000) AS at_limit,
               sum(duration_ms) AS sum_duration_ms,
               sum(sell_cost) AS sum_sell_cost,
               sum(buy_cost) AS sum_buy_cost,
               sum(margin) AS sum_margin
        FROM cdrs FINAL
        WHERE {where}
        GROUP BY grp
        ORDER BY grp
    """
    rows = []
    for r in store.query(store.render(sql), params):
        rows.append(
            {
                by: r["grp"],
                "calls": int(r["calls"]),
                "answered": int(r["answered"]),
                "zombie_calls": int(r["zombie_calls"]),
                "zombie_minutes": _minutes(r["zombie_ms"]),
                "exposure_minutes": _minutes(r["sum_exposure_ms"]),
                "exposure_sell_cost": _cost(r["exposure_sell_rate_ms"]),
                "exposure_buy_cost": _cost(r["exposure_buy_rate_ms"]),
                "open_exposure_calls": int(r["open_exposure"]),
                "unverified_minutes": _minutes(r["sum_unverified_ms"]),
                "ended_at_limit": int(r["at_limit"]),
                "minutes": _minutes(r["sum_duration_ms"]),
                "sell_cost": Decimal(r["sum_sell_cost"]),
                "buy_cost": Decimal(r["sum_buy_cost"]),
                "margin": Decimal(r["sum_margin"]),
            }
        )
    # Most expensive exposure first: sell value, then what the carrier may bill, then its length.
    rows.sort(key=lambda x: (-x["exposure_sell_cost"], -x["exposure_buy_cost"], -x["exposure_minutes"],
                             str(x[by])))
    totals: dict[str, Any] = {by: TOTAL}
    for key in SUMMED_KEYS:
        totals[key] = sum((row[key] for row in rows), Decimal(0) if key in DECIMAL_KEYS else 0)
    return RunawayReport(by, period, rows, totals, top_offenders(store, period, top))


def top_offenders(store: Store, period: Period = Period(), top: int = 10) -> list[dict[str, Any]]:
    """The zombie calls with the most expensive exposure (orphans included: theirs is never billed)."""
    where, params = period.where()
    params["top"] = int(top)
    sql = f"""
        SELECT call_id, account, vendor, callee, end_reason, closed_by, exposure_open,
               duration_ms, unverified_ms, {EXPOSURE_MS} AS exposed_ms,
               ifNull(sell_rate, toDecimal64(0, 6)) * {EXPOSURE_MS} AS sell_rate_ms,
               ifNull(buy_rate, toDecimal64(0, 6)) * {EXPOSURE_MS} AS buy_rate_ms
        FROM cdrs FINAL
        WHERE {where} AND zombie = 1
        ORDER BY sell_rate_ms DESC, buy_rate_ms DESC, exposed_ms DESC, call_id
        LIMIT %(top)s
    """
    return [
        {
            "call_id": r["call_id"],
            "account": r["account"],
            "vendor": r["vendor"],
            "callee": r["callee"],
            "end_reason": str(r["end_reason"]),
            "closed_by": str(r["closed_by"]),
            "exposure_open": bool(int(r["exposure_open"])),
            "duration_minutes": _minutes(r["duration_ms"]),
            "unverified_minutes": _minutes(r["unverified_ms"]),
            "exposure_minutes": _minutes(r["exposed_ms"]),
            "exposure_sell_cost": _cost(r["sell_rate_ms"]),
            "exposure_buy_cost": _cost(r["buy_rate_ms"]),
        }
        for r in store.query(sql, params)
    ]


def cost_impact(store: Store, period: Period = Period()) -> list[dict[str, Any]]:
    """The VOS3000 guides' table (zombie duration x rate -> cost per incident and per month), from CDRs.

    One row per zombie end reason: incidents in the period, average exposure, average sell rate, the
    exposure's cost per incident at the sell rate and at the buy rate (what the carrier may bill), and
    the monthly figures extrapolated from the period's length. Exposure, not unverified time: an
    orphan is billed only to its last proof of life, so its unverified time is 0 while it ran on.
    """
    where, params = period.where()
    sql = f"""
        SELECT end_reason, count() AS incidents, sum({EXPOSURE_MS}) AS sum_exposure_ms,
               sum(ifNull(sell_rate, toDecimal64(0, 6)) * {EXPOSURE_MS}) AS sell_rate_ms,
               sum(ifNull(buy_rate, toDecimal64(0, 6)) * {EXPOSURE_MS}) AS buy_rate_ms,
               sum(ifNull(sell_rate, toDecimal64(0, 6))) AS rate_sum,
               min(end_ms) AS first_ms, max(end_ms) AS last_ms
        FROM cdrs FINAL
        WHERE {where} AND zombie = 1
        GROUP BY end_reason
        ORDER BY end_reason
    """
    rows = store.query(sql, params)
    if not rows:
        return []
    first = min(int(r["first_ms"]) for r in rows) if period.since_ms is None else period.since_ms
    last = max(int(r["last_ms"]) for r in rows) if period.until_ms is None else period.until_ms
    days = max(Decimal(last - first) / Decimal(86_400_000), Decimal(1))
    out = []
    for r in rows:
        n = int(r["incidents"])
        per_incident = (_cost(r["sell_rate_ms"]) / n).quantize(Decimal("0.0001"))
        buy_per_incident = (_cost(r["buy_rate_ms"]) / n).quantize(Decimal("0.0001"))
        per_month_incidents = (Decimal(n) * 30 / days).quantize(Decimal("0.1"))
        out.append(
            {
                "end_reason": str(r["end_reason"]),
                "incidents": n,
                "avg_exposure_minutes": (Decimal(int(r["sum_exposure_ms"])) / n / MS_PER_MIN).quantize(MONEY),
                "avg_rate_per_minute": (Decimal(r["rate_sum"]) / n).quantize(Decimal("0.000001")),
                "cost_per_incident": per_incident,
                "buy_cost_per_incident": buy_per_incident,
                "incidents_per_month": per_month_incidents,
                "cost_per_month": (per_incident * per_month_incidents).quantize(MONEY),
                "buy_cost_per_month": (buy_per_incident * per_month_incidents).quantize(MONEY),
            }
        )
    return out
