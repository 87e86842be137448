"""Output formats of the reports: terminal table (rich), CSV, JSON, and a self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from sipledger.store import Store

from .quality import alarms, quality
from .runaway import Period, RunawayReport, cost_impact
from .what_if import CENTS, WhatIfRow, what_if


def _json_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    raise TypeError(type(v).__name__)


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):  # flags such as exposure_open
        return "yes" if v else "no"
    if isinstance(v, Decimal):
        return f"{v:,}"
    return str(v)


def _numeric(v: Any) -> bool:
    """Right-aligned: counts and amounts (a bool such as exposure_open is a flag, not a number)."""
    return isinstance(v, int | Decimal) and not isinstance(v, bool)


def rich_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
               total: dict[str, Any] | None = None) -> Table:
    """``total``, if given, closes the table as a bold row under a rule (only a real total does)."""
    cols = list(columns or (rows[0].keys() if rows else (total or {}).keys()))
    table = Table(title=title, title_justify="left")
    for c in cols:
        numeric = bool(rows) and _numeric(rows[0].get(c))
        table.add_column(c.replace("_", " "), justify="right" if numeric else "left")
    for i, r in enumerate(rows):
        table.add_row(*(_text(r.get(c)) for c in cols), end_section=total is not None and i == len(rows) - 1)
    if total is not None:
        table.add_row(*(_text(total.get(c)) for c in cols), style="bold")
    return table


def write_rows(rows: Sequence[dict[str, Any]], fmt: str, out: TextIO, title: str = "") -> None:
    if fmt == "json":
        out.write(json.dumps(list(rows), default=_json_default, indent=2) + "\n")
    elif fmt == "csv":
        if rows:
            w = csv.DictWriter(out, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
    else:
        _console(out).print(rich_table(title, rows))


def _console(out: TextIO) -> Console:
    # A terminal gets tables fitted to its width; files and pipes get room for every column.
    return Console(file=out) if out.isatty() else Console(file=out, width=200)


def runaway_table(report: RunawayReport, out: TextIO) -> None:
    console = _console(out)
    title = f"Runaway cost by {report.by}, {report.period.describe()}"
    console.print(rich_table(title, report.rows, total=report.totals))
    if report.top_offenders:
        console.print(rich_table("Top offenders (zombie calls by exposure cost)", report.top_offenders))


# --- HTML ----------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _html_table(rows: Sequence[dict[str, Any]], total: dict[str, Any] | None = None) -> str:
    """A table of ``rows``, then ``total`` (if any) as the one row styled as a TOTAL row.

    The total is passed apart rather than recognised as "the last row": top offenders, cost impact
    or the what-if have no total, and their last row must not read as one.
    """
    if not rows and total is None:
        return "<p class='empty'>No rows.</p>"
    cols = list((rows[0] if rows else total or {}).keys())
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)

    def cell(v: Any) -> str:
        cls = "num" if _numeric(v) else ""
        return f"<td class='{cls}'>{html.escape(_text(v))}</td>"

    def tr(r: dict[str, Any], cls: str = "") -> str:
        attr = f" class='{cls}'" if cls else ""
        return f"<tr{attr}>" + "".join(cell(r.get(c)) for c in cols) + "</tr>"

    body = "".join(tr(r) for r in rows) + (tr(total, "total") if total is not None else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plots(
    store: Store, report: RunawayReport, whatif_rows: list[Any], period: Period
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [str(r[report.by]) for r in report.rows]
    ax.bar(labels, [float(r["exposure_sell_cost"]) for r in report.rows], color="#c0392b", label="sell")
    ax.bar(
        labels,
        [float(r["exposure_buy_cost"]) for r in report.rows],
        color="#2c3e50",
        alpha=0.6,
        label="buy (carrier may bill)",
    )
    ax.set_ylabel("cost of exposure")
    ax.set_title(f"Runaway exposure by {report.by}")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    plots.append(("Exposure", _png(fig)))

    where, params = period.where()
    durations = [
        int(r["duration_ms"]) / 1000
        for r in store.query(
            f"SELECT duration_ms FROM cdrs FINAL WHERE {where} AND answer_ms IS NOT NULL", params
        )
    ]
    if durations:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.hist(durations, bins=40, color="#34495e")
        limits = sorted(
            {
                int(r["effective_limit_s"])
                for r in store.query(
                    "SELECT DISTINCT effective_limit_s FROM cdrs FINAL "
                    f"WHERE {where} AND effective_limit_s IS NOT NULL",
                    params,
                )
            }
        )
        for lim in limits:
            ax.axvline(lim, color="#c0392b", linestyle="--")
            ax.text(lim, ax.get_ylim()[1] * 0.9, f" cap {lim}s", color="#c0392b", fontsize=8)
        ax.set_xlabel("call duration, s")
        ax.set_ylabel("calls")
        ax.set_title("Call durations with the caps in force")
        plots.append(("Durations", _png(fig)))

    if whatif_rows:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for account in sorted({r.account for r in whatif_rows}):
            pts = [r for r in whatif_rows if r.account == account]
            (line,) = ax.plot([r.cap_s for r in pts], [float(r.net_benefit) for r in pts], marker="o",
                              label=account)
            if pts[0].in_force_s is not None:  # net benefit 0 there by definition: what happened
                ax.plot([pts[0].in_force_s], [0], marker="D", color=line.get_color(), markersize=8)
        ax.set_xscale("log")
        # Each account's own candidates (a 20 s cap and a 7200 s one share the log axis).
        ticks = sorted({r.cap_s for r in whatif_rows} | {r.in_force_s for r in whatif_rows if r.in_force_s})
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("no-timer cap, s")
        ax.set_ylabel("exposure saved − revenue at risk")
        ax.set_title("What-if: no-timer cap")
        ax.axhline(0, color="#999", linewidth=0.8)
        ax.legend()
        plots.append(("What-if", _png(fig)))
    return plots


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}h2{border-bottom:2px solid #c0392b;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{padding:4px 8px;border:1px solid #ddd}
th{background:#f4f4f4;text-transform:capitalize}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600}.alarm{color:#c0392b;font-weight:600}img{max-width:100%}
.plots{display:flex;flex-wrap:wrap;gap:1em}.kpi{display:inline-block;margin-right:2em;font-size:1.1em}
.kpi b{display:block;font-size:1.6em;color:#c0392b}
"""


def recommendations(rows: list[WhatIfRow], best: dict[str, int]) -> list[dict[str, Any]]:
    """One row per account: the cap in force, the recommended one and its net benefit."""
    in_force = {r.account: r.in_force_s for r in rows}
    net = {(r.account, r.cap_s): r.net_benefit for r in rows}
    out = []
    for account, cap in sorted(best.items()):
        benefit = net.get((account, cap))
        if cap == in_force.get(account) and (benefit is None or benefit <= 0):
            benefit = Decimal(0).quantize(CENTS)  # kept because nothing beat it: no change, no benefit
        out.append({"account": account, "cap_in_force_s": in_force.get(account),
                    "recommended_no_timer_cap_s": cap, "net_benefit": benefit})
    return out


def html_report(
    store: Store, report: RunawayReport, period: Period, configured_cap: int | None = None
) -> str:
    """The self-contained page; ``configured_cap``: the no-timer cap in force where CDRs do not say."""
    whatif_rows, best = what_if(store, period, configured=configured_cap)
    impact = cost_impact(store, period)
    q = quality(store, period)
    found = alarms(q)
    t = report.totals
    kpis = (
        f"<div class='kpi'><b>{t.get('calls', 0):,}</b>calls</div>"
        f"<div class='kpi'><b>{t.get('zombie_calls', 0):,}</b>zombie calls</div>"
        f"<div class='kpi'><b>{_text(t.get('exposure_minutes', 0))}</b>exposure minutes</div>"
        f"<div class='kpi'><b>{_text(t.get('exposure_sell_cost', 0))}</b>exposure cost (sell)</div>"
        f"<div class='kpi'><b>{_text(t.get('exposure_buy_cost', 0))}</b>exposure cost (buy)</div>"
        f"<div class='kpi'><b>{t.get('open_exposure_calls', 0):,}</b>calls with exposure open</div>"
    )
    recs = recommendations(whatif_rows, best)
    plots = "".join(
        f"<figure><img alt='{html.escape(n)}' src='{src}'><figcaption>{html.escape(n)}</figcaption></figure>"
        for n, src in _plots(store, report, whatif_rows, period)
    )
    alarm_html = "".join(f"<p class='alarm'>{html.escape(a)}</p>" for a in found) or "<p>No alarms.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sipledger runaway-cost report</title>
<style>{_CSS}</style></head><body>
<h1>Runaway-cost report</h1><p class="sub">{html.escape(period.describe())} · grouped by {report.by}</p>
<section>{kpis}</section>
<div class="plots">{plots}</div>
<h2>Runaway cost by {html.escape(report.by)}</h2>{_html_table(report.rows, report.totals)}
<h2>Top offenders</h2>{_html_table(report.top_offenders)}
<h2>Cost impact per zombie incident</h2>{_html_table(impact)}
<h2>No-timer cap what-if</h2>{_html_table(recs)}{_html_table([r.as_dict() for r in whatif_rows])}
<h2>Vendor quality</h2>{alarm_html}{_html_table(q)}
</body></html>
"""
