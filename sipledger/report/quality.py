"""Vendor quality per hour: ASR, ACD, PDD and minutes, with alarms.

Computed by GROUP BY over ``cdrs FINAL`` rather than a materialized view: a view counts every
inserted row, so a CDR re-delivered after a crash would be counted twice; FINAL folds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sipledger.store import Store

from .runaway import MS_PER_MIN, Period


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_asr: Decimal = Decimal("0.30")
    min_calls: int = 20  # an hour with fewer calls says nothing about ASR
    max_zombie_minutes: Decimal = Decimal("60")


def quality(store: Store, period: Period = Period()) -> list[dict[str, Any]]:
    where, params = period.where()
    sql = f"""
        SELECT vendor, toString({{TS_TO_DATETIME(intDiv(end_ms, 3600000) * 3600000)}}) AS hour,
               count() AS calls,
               countIf(answer_ms IS NOT NULL) AS answered,
               sumIf(duration_ms, answer_ms IS NOT NULL) AS answered_ms,
               sumIf(pdd_ms, pdd_ms IS NOT NULL) AS pdd_sum,
               countIf(pdd_ms IS NOT NULL) AS pdd_n,
               sumIf(duration_ms, zombie = 1) AS zombie_ms
        FROM cdrs FINAL
        WHERE {where} AND vendor != ''
        GROUP BY vendor, hour
        ORDER BY vendor, hour
    """
    out = []
    for r in store.query(store.render(sql), params):
        calls, answered = int(r["calls"]), int(r["answered"])
        out.append(
            {
                "vendor": r["vendor"],
                "hour": str(r["hour"])[:16],
                "calls": calls,
                "answered": answered,
                "asr": (Decimal(answered) / calls).quantize(Decimal("0.001")) if calls else Decimal(0),
                "acd_minutes": (Decimal(int(r["answered_ms"])) / answered / MS_PER_MIN).quantize(
                    Decimal("0.01")
                )
                if answered
                else Decimal(0),
                "pdd_ms": int(int(r["pdd_sum"]) / int(r["pdd_n"])) if int(r["pdd_n"]) else None,
                "minutes": (Decimal(int(r["answered_ms"])) / MS_PER_MIN).quantize(Decimal("0.01")),
                "zombie_minutes": (Decimal(int(r["zombie_ms"])) / MS_PER_MIN).quantize(Decimal("0.01")),
            }
        )
    return out


def alarms(rows: list[dict[str, Any]], t: Thresholds = Thresholds()) -> list[str]:
    found = []
    for r in rows:
        if r["calls"] >= t.min_calls and r["asr"] < t.min_asr:
            found.append(
                f"ASR alarm: {r['vendor']} at {r['hour']} ASR {r['asr']:.1%} below {t.min_asr:.0%} "
                f"over {r['calls']} calls"
            )
        if r["zombie_minutes"] > t.max_zombie_minutes:
            found.append(
                f"zombie alarm: {r['vendor']} at {r['hour']} {r['zombie_minutes']} zombie minutes "
                f"above {t.max_zombie_minutes}"
            )
    return found
