"""Billing-accuracy audit of CDRs with Great Expectations (used by notebooks/billing_accuracy.ipynb).

The expected billed seconds and sell cost are recomputed here from the rate deck CSV with
pandas and Decimal, deliberately without the pipeline's rating code: an audit that reused
the code it audits could not catch its mistakes.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

# The vocabulary as the contract states it, not as the pipeline's code has it.
END_REASONS: tuple[str, ...] = tuple(
    json.loads(resources.files("schemas").joinpath("common.json").read_text())["$defs"]["end_reason"]["enum"]
)
# A call may outlive its effective limit by the enforcement path's reaction time, not more.
LIMIT_TOLERANCE_MS = 5_000
SIX_PLACES = Decimal("0.000001")


def load_cdrs(store_url: str, base_dir: str | None = None) -> pd.DataFrame:
    from sipledger.store.cdr_export import fetch_cdrs
    from sipledger.store.remote import open_reader

    with open_reader(store_url, base_dir) as store:
        rows = fetch_cdrs(store)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("sell_rate", "sell_cost", "buy_rate", "buy_cost", "margin"):
        df[col] = df[col].map(lambda v: None if v is None else Decimal(v))
    for col in ("setup_ts", "answer_ts", "end_ts"):
        df[col.replace("_ts", "_time")] = pd.to_datetime(df[col], utc=True)
    return df


def load_deck(path: str | Path) -> pd.DataFrame:
    deck = pd.read_csv(path, dtype=str).fillna("")
    deck["effective_from_time"] = pd.to_datetime(deck["effective_from"], utc=True)
    return deck


def _billed(seconds: int, initial: int, subsequent: int, minimum: int) -> int:
    if seconds <= 0:
        return 0
    billed = initial if seconds <= initial else initial + -(-(seconds - initial) // subsequent) * subsequent
    return max(billed, minimum)


def _lookup(deck: pd.DataFrame, party: str, number: str, at: pd.Timestamp) -> pd.Series | None:
    number = number.lstrip("+")
    rows = deck[(deck["party"] == party) & (deck["effective_from_time"] <= at)]
    rows = rows[[number.startswith(p.lstrip("+")) for p in rows["prefix"]]]
    if rows.empty:
        return None
    rows = rows.assign(plen=rows["prefix"].str.len()).sort_values(["plen", "effective_from_time"])
    return rows.iloc[-1]


def recompute(cdrs: pd.DataFrame, sell_deck: pd.DataFrame, bill_modes: dict[str, str]) -> pd.DataFrame:
    """Add expected_billed_seconds and expected_sell_cost (text, 6 places) to a copy of ``cdrs``."""
    out = cdrs.copy()
    billed, costs = [], []
    for row in out.itertuples(index=False):
        at = row.answer_time if pd.notna(row.answer_time) else row.setup_time
        rate = _lookup(sell_deck, row.account, row.callee, at)
        ms = row.verified_ms if bill_modes.get(row.account, "full") == "verified" else row.duration_ms
        seconds = -(-int(ms) // 1000)
        if rate is None or not ms:
            # Unrated calls still state their whole seconds; they cost nothing.
            billed.append(seconds)
            costs.append(format(Decimal(0).quantize(SIX_PLACES), "f"))
            continue
        b = _billed(
            seconds,
            int(rate["initial_increment"]),
            int(rate["subsequent_increment"]),
            int(rate["minimum_duration"] or 0),
        )
        cost = Decimal(rate["connection_fee"] or "0") + Decimal(rate["rate_per_minute"]) * b / Decimal(60)
        billed.append(b)
        costs.append(format(cost.quantize(SIX_PLACES, rounding=ROUND_HALF_UP), "f"))
    out["expected_billed_seconds"] = billed
    out["expected_sell_cost"] = costs
    out["sell_cost_text"] = out["sell_cost"].map(lambda d: format(Decimal(d).quantize(SIX_PLACES), "f"))
    out["verified_plus_unverified_ms"] = out["verified_ms"] + out["unverified_ms"]
    limit_ms = out["effective_limit_s"].astype("Float64") * 1000
    out["within_limit"] = (limit_ms.isna() | (out["duration_ms"] <= limit_ms + LIMIT_TOLERANCE_MS)).astype(
        bool
    )
    return out


@dataclass
class AuditResult:
    success: bool
    checks: list[dict[str, Any]]
    failing: pd.DataFrame


def run_suite(audited: pd.DataFrame) -> AuditResult:
    """Run the billing-accuracy expectations; every failing row is returned with what it failed."""
    warnings.filterwarnings("ignore", module="great_expectations")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("cdrs")
        .add_dataframe_asset("cdrs")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name="billing_accuracy"))
    ex = gx.expectations
    for col in ("duration_ms", "verified_ms", "unverified_ms", "billed_seconds"):
        suite.add_expectation(ex.ExpectColumnValuesToBeBetween(column=col, min_value=0))
    suite.add_expectation(
        ex.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="duration_ms", column_B="verified_ms", or_equal=True
        )
    )
    suite.add_expectation(
        ex.ExpectColumnPairValuesToBeEqual(column_A="verified_plus_unverified_ms", column_B="duration_ms")
    )
    suite.add_expectation(
        ex.ExpectColumnPairValuesToBeEqual(column_A="billed_seconds", column_B="expected_billed_seconds")
    )
    suite.add_expectation(ex.ExpectColumnValuesToBeInSet(column="within_limit", value_set=[True]))
    suite.add_expectation(ex.ExpectColumnValuesToBeUnique(column="call_id"))
    suite.add_expectation(ex.ExpectColumnValuesToBeInSet(column="end_reason", value_set=list(END_REASONS)))
    suite.add_expectation(
        ex.ExpectColumnPairValuesToBeEqual(column_A="sell_cost_text", column_B="expected_sell_cost")
    )
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="billing", data=batch, suite=suite))
    frame = audited.reset_index(drop=True)
    result = vd.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    checks, bad = [], {}
    for r in result.results:
        cfg = r.expectation_config
        cols = [v for k, v in cfg.kwargs.items() if k.startswith("column")]
        idx = r.result.get("unexpected_index_list") or []
        checks.append(
            {
                "expectation": cfg.type,
                "columns": ", ".join(map(str, cols)),
                "success": r.success,
                "failing_rows": len(idx),
            }
        )
        for i in idx:
            i = i if isinstance(i, int) else i.get("index", i)
            bad.setdefault(int(i), []).append(f"{cfg.type}({', '.join(map(str, cols))})")
    failing = (
        frame.loc[sorted(bad)].assign(failed=[", ".join(bad[i]) for i in sorted(bad)])
        if bad
        else frame.iloc[0:0].assign(failed=[])
    )
    return AuditResult(bool(result.success), checks, failing)


def billed_vs_verified(audited: pd.DataFrame) -> pd.DataFrame:
    """Per account: minutes billed on the sell side against minutes proven alive."""
    g = audited.groupby("account").agg(
        calls=("call_id", "count"),
        billed_s=("billed_seconds", "sum"),
        duration_ms=("duration_ms", "sum"),
        verified_ms=("verified_ms", "sum"),
        unverified_ms=("unverified_ms", "sum"),
    )
    g["billed_minutes"] = (g["billed_s"] / 60).round(2)
    g["verified_minutes"] = (g["verified_ms"] / 60_000).round(2)
    g["unverified_minutes"] = (g["unverified_ms"] / 60_000).round(2)
    g["billed_over_verified_pct"] = (
        (g["billed_s"] * 1000 / g["verified_ms"].where(g["verified_ms"] > 0)) * 100 - 100
    ).round(1)
    return g[
        ["calls", "billed_minutes", "verified_minutes", "unverified_minutes", "billed_over_verified_pct"]
    ]
