"""Export CDRs from a store as JSON lines or CSV (`sipledger cdrs`)."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from .base import Store
from .tables import row_to_cdr, ts_to_ms

CDR_FIELDS = ("call_id", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
              "setup_ts", "ring_ts", "answer_ts", "end_ts", "pdd_ms", "duration_ms", "verified_ms",
              "unverified_ms", "billed_seconds", "timer_mode", "session_expires", "effective_limit_s",
              "refresh_count", "last_proof_of_life", "end_reason", "ended_by", "sip_status", "zombie",
              "exposure_ms", "exposure_open", "closed_by", "sell_rate", "sell_cost", "buy_rate", "buy_cost",
              "margin", "currency", "rate_deck_version", "schema_version")


def fetch_cdrs(store: Store, since: str | None = None, until: str | None = None,
               account: str | None = None, call_id: str | None = None) -> list[dict[str, Any]]:
    """CDRs as contract dicts, one per call (FINAL folds redelivered rows), ordered by end time."""
    where, params = [], {}
    if since:
        where.append("end_ms >= %(since)s")
        params["since"] = utc_ms(since, "--since")
    if until:
        where.append("end_ms < %(until)s")
        params["until"] = utc_ms(until, "--until")
    if account:
        where.append("account = %(account)s")
        params["account"] = account
    if call_id:
        where.append("call_id = %(call_id)s")
        params["call_id"] = call_id
    sql = "SELECT * FROM cdrs FINAL" + (" WHERE " + " AND ".join(where) if where else "") + \
        " ORDER BY end_ms, call_id"
    return [row_to_cdr(r) for r in store.query(sql, params)]


def utc_ms(text: str, option: str) -> int:
    t = text.strip()
    if len(t) == 10:
        t += "T00:00:00"
    if not t.endswith("Z") and "+" not in t[10:]:
        t += "+00:00"
    try:
        ms = ts_to_ms(t)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not an ISO 8601 date or time") from None
    assert ms is not None
    return ms


def export_cdrs(store: Store, out: TextIO, fmt: str = "jsonl", **filters: Any) -> int:
    rows = fetch_cdrs(store, **filters)
    if fmt == "jsonl":
        for cdr in rows:
            out.write(json.dumps(cdr, separators=(",", ":")) + "\n")
    else:
        writer = csv.DictWriter(out, fieldnames=CDR_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
