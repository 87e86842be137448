"""Runaway-cost figures from the operator's own CDRs (same SQL on chDB and on ClickHouse servers).

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
               sum(unverified_ms) AS sum_unverified_ms,
               sum(ifNull(sell_rate, toDecimal64(0, 6)) * unverified_ms) AS unverified_sell_rate_ms,
               sum(ifNull(buy_rate, toDecimal64(0, 6)) * unverified_ms) AS unverified_buy_rate_ms,
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
                "unverified_minutes": _minutes(r["sum_unverified_ms"]),
                "unverified_sell_cost": _cost(r["unverified_sell_rate_ms"]),
                "unverified_buy_cost": _cost(r["unverified_buy_rate_ms"]),
                "ended_at_limit": int(r["at_limit"]),
                "minutes": _minutes(r["sum_duration_ms"]),
                "sell_cost": Decimal(r["sum_sell_cost"]),
                "buy_cost": Decimal(r["sum_buy_cost"]),
                "margin": Decimal(r["sum_margin"]),
            }
        )
    rows.sort(key=lambda x: (-x["unverified_sell_cost"], str(x[by])))
    totals: dict[str, Any] = {by: "TOTAL"}
    for key in (
        "calls",
        "answered",
        "zombie_calls",
        "zombie_minutes",
        "unverified_minutes",
        "unverified_sell_cost",
        "unverified_buy_cost",
        "ended_at_limit",
        "minutes",
        "sell_cost",
        "buy_cost",
        "margin",
    ):
        totals[key] = (
            sum((row[key] for row in rows), Decimal(0) if isinstance(rows[0][key], Decimal) else 0)
            if rows
            else 0
        )
    return RunawayReport(by, period, rows, totals, top_offenders(store, period, top))


def top_offenders(store: Store, period: Period = Period(), top: int = 10) -> list[dict[str, Any]]:
    where, params = period.where()
    params["top"] = int(top)
    sql = f"""
        SELECT call_id, account, vendor, caller, callee, end_reason, duration_ms, unverified_ms,
               ifNull(sell_rate, toDecimal64(0, 6)) * unverified_ms AS rate_ms, end_ms
        FROM cdrs FINAL
        WHERE {where} AND zombie = 1
        ORDER BY rate_ms DESC, unverified_ms DESC, call_id
        LIMIT %(top)s
    """
    return [
        {
            "call_id": r["call_id"],
            "account": r["account"],
            "vendor": r["vendor"],
            "callee": r["callee"],
            "end_reason": r["end_reason"],
            "duration_minutes": _minutes(r["duration_ms"]),
            "unverified_minutes": _minutes(r["unverified_ms"]),
            "unverified_sell_cost": _cost(r["rate_ms"]),
        }
        for r in store.query(sql, params)
    ]


def cost_impact(store: Store, period: Period = Period()) -> list[dict[str, Any]]:
    """The VOS3000 guides' table (zombie duration x rate -> cost per incident and per month), from CDRs.

    One row per zombie end reason: incidents in the period, average unverified duration, average
    sell rate, cost per incident, and the monthly figure extrapolated from the period's length.
    """
    where, params = period.where()
    sql = f"""
        SELECT end_reason, count() AS incidents, sum(unverified_ms) AS sum_unverified_ms,
               sum(ifNull(sell_rate, toDecimal64(0, 6)) * unverified_ms) AS rate_ms,
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
        cost = _cost(r["rate_ms"])
        per_incident = (cost / n).quantize(Decimal("0.0001"))
        per_month_incidents = (Decimal(n) * 30 / days).quantize(Decimal("0.1"))
        out.append(
            {
                "end_reason": str(r["end_reason"]),
                "incidents": n,
                "avg_zombie_minutes": (Decimal(int(r["sum_unverified_ms"])) / n / MS_PER_MIN).quantize(MONEY),
                "avg_rate_per_minute": (Decimal(r["rate_sum"]) / n).quantize(Decimal("0.000001")),
                "cost_per_incident": per_incident,
                "incidents_per_month": per_month_incidents,
                "cost_per_month": (per_incident * per_month_incidents).quantize(MONEY),
            }
        )
    return out
