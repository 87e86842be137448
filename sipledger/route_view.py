"""`sipledger route NUMBER`: where a call to this number would go and what it would get, placing none.

The prefix the route table matches (longest wins, as the B2BUA routes), the gateways in the order the
B2BUA tries them (what each node last reported of their health, from the log's copy in the store, and
their answer to a probe now when asked), the rate each side would apply (the
account's sell rate, each gateway's vendor's buy rate: prefix, per minute, increments, fee, minimum),
and the limits the call would get (session timer, no-timer cap, maximum duration, and for a prepaid
account the credit limit its available balance pays for, or the 402 it would get). The same code the
B2BUA and the pipeline run: b2bua/routing.py, b2bua/credit_book.py, tariff/rates.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from b2bua.admission import Refuse
from b2bua.credit_book import CreditBook
from b2bua.routing import RouteTable
from pipeline.domain.timeutil import format_ts
from tariff import Rate, RateDeck, money_str, quantize_money

from .config import Config, Gateway


def rate_view(rate: Rate | None) -> dict[str, Any] | None:
    if rate is None:
        return None
    return {"prefix": rate.prefix, "rate_per_minute": str(rate.rate_per_minute),
            "increments": f"{rate.initial_increment}/{rate.subsequent_increment}",
            "connection_fee": str(rate.connection_fee), "minimum_duration_s": rate.minimum_duration,
            "currency": rate.currency, "effective_from": format_ts(rate.effective_from_ms)}


# The newest gateway.down / gateway.up of each node and gateway (key gateway:<node>:<gateway>) in the
# store's copy of the log; argMax runs on ClickHouse 18.16 and chDB alike.
LAST_REPORTS_SQL = ("SELECT call_id, argMax(payload, ts_ms) AS payload FROM call_events "
                    "WHERE type IN ('gateway.down', 'gateway.up') GROUP BY call_id")


def last_reports(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Gateway name -> what each node last reported of it (node, state, since, evidence), by node."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        ev = json.loads(row["payload"])
        down = ev["type"] == "gateway.down"
        if down:
            evidence = f"{ev['losses']} {'probes' if ev['cause'] != 'invite_timeout' else 'INVITEs'} lost"
        else:
            rtt = f" in {ev['rtt_ms']:g} ms" if ev.get("rtt_ms") is not None else ""
            evidence = f"answered {ev['status']}{rtt}"
        out.setdefault(ev["gateway"], []).append({"node": ev["node"], "state": "down" if down else "up",
                                                  "since": ev["ts"], "evidence": evidence})
    for reports in out.values():
        reports.sort(key=lambda r: r["node"])
    return out


def reported_text(reports: list[dict[str, Any]] | None) -> str:
    if not reports:
        return "no report"
    return "; ".join(f"{r['state']} on {r['node']} since {r['since']} ({r['evidence']})" for r in reports)


def credit_view(cfg: Config, account: str | None, number: str, at_ms: int, sell: RateDeck | None,
                available: Decimal | None) -> dict[str, Any] | None:
    """A prepaid account's credit for this call, decided by the B2BUA's own code (CreditBook.authorize)
    on ``available`` (the store's ledger: balance - reserved); None for an account that is not prepaid.
    The limit is for a caller with session timers (no no-timer cap below it)."""
    acc = next((a for a in cfg.accounts if a.name == account), None)
    if acc is None or not acc.prepaid:
        return None
    out: dict[str, Any] = {"available": None if available is None else money_str(quantize_money(available)),
                           "min_balance": format(acc.min_balance, "f"), "credit_limit_s": None, "hold": None,
                           "refused": None}
    if available is None:
        return out
    book = CreditBook(prepaid={acc.name: acc.min_balance}, deck=sell)
    book.on_record({"account": acc.name, "partition": None, "balance": str(available), "reserved": {},
                    "held": [], "debited": []})
    caps = [cfg.timers.max_call_duration * 1000] if cfg.timers.max_call_duration > 0 else []
    grant = book.authorize(acc.name, number, at_ms, caps)
    if isinstance(grant, Refuse):
        out["refused"] = f"{grant.status} {grant.reason_phrase}: {grant.detail}"
    elif grant is not None:
        out["credit_limit_s"] = None if grant.limit_ms is None else grant.limit_ms // 1000
        out["hold"] = format(grant.hold, "f")
    return out


def analyse(cfg: Config, number: str, account: str | None, at_ms: int, sell: RateDeck | None,
            buy: RateDeck | None, health: Callable[[Gateway], str] | None = None,
            reports: dict[str, list[dict[str, Any]]] | None = None,
            available: Decimal | None = None) -> dict[str, Any]:
    """The route, rates and limits of a call to ``number`` from ``account`` at ``at_ms``."""
    match = RouteTable.from_config(cfg).lookup(number)
    gateways = []
    for order, gw in enumerate(match.gateways if match else (), start=1):
        vendor = gw.vendor or gw.name
        gateways.append({
            "order": order, "gateway": gw.name, "address": f"{gw.transport}:{gw.host}:{gw.port}",
            "vendor": vendor, "health": health(gw) if health is not None else "not probed",
            "reported": (reports or {}).get(gw.name, []), "probed_by_b2bua": gw.probe,
            "buy_rate": rate_view(buy.lookup(vendor, number, at_ms) if buy is not None else None),
        })
    t = cfg.timers
    limits = {
        "session_timer": {"session_expires_s": t.session_ttl, "min_se_s": t.min_se,
                          "refresh_every_s": t.session_ttl // max(1, t.session_update_segment),
                          "early_hangup_s": t.session_timeout_early_hangup},
        "no_timer_cap_s": t.no_timer_max_duration or None,
        "max_call_duration_s": t.max_call_duration or None,
        "credit": credit_view(cfg, account, number, at_ms, sell, available),
    }
    return {
        "number": number, "account": account, "at": format_ts(at_ms),
        "prefix": match.prefix if match else None,
        "routable": match is not None,
        "sell_rate": rate_view(sell.lookup(account, number, at_ms) if sell is not None and account else None),
        "gateways": gateways,
        "limits": limits,
    }
