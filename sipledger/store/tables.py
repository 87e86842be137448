"""Rows of the ClickHouse tables <-> the JSON contracts (CDR, alert, event).

The contracts carry ISO timestamps and money as strings; the tables carry epoch
milliseconds and Decimal. This module is the only place that converts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

CDR_TS_FIELDS = {"setup_ts": "setup_ms", "ring_ts": "ring_ms", "answer_ts": "answer_ms",
                 "end_ts": "end_ms", "last_proof_of_life": "last_proof_of_life_ms"}
CDR_MONEY_FIELDS = ("sell_rate", "sell_cost", "buy_rate", "buy_cost", "margin")
CDR_COLUMNS: tuple[str, ...] = (
    "call_id", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
    "setup_ms", "ring_ms", "answer_ms", "end_ms", "pdd_ms", "duration_ms", "verified_ms", "unverified_ms",
    "billed_seconds", "timer_mode", "session_expires", "effective_limit_s", "refresh_count",
    "last_proof_of_life_ms", "end_reason", "ended_by", "sip_status", "zombie", "sell_rate", "sell_cost",
    "buy_rate", "buy_cost", "margin", "currency", "rate_deck_version", "version",
)
ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id", "kind", "call_id", "node", "account", "vendor", "ran_ms", "unverified_ms",
    "estimated_cost", "currency", "message", "ts_ms",
)
EVENT_COLUMNS: tuple[str, ...] = ("event_id", "call_id", "seq", "type", "ts_ms", "node", "payload")


def ts_to_ms(ts: str | None) -> int | None:
    if ts is None:
        return None
    return int(datetime.fromisoformat(ts).timestamp() * 1000 + 0.5)


def ms_to_ts(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _money(v: str | None) -> Decimal | None:
    return None if v is None else Decimal(v)


def _ms_or_none(ts: str | None) -> int | None:
    return None if ts is None else ts_to_ms(ts)


# How each column is made from a CDR, decided once instead of per row.
_TS_COLUMN_FIELD = {col: field for field, col in CDR_TS_FIELDS.items()}
_ROW_MAKERS = tuple(
    (lambda cdr, version: version) if col == "version"
    else (lambda cdr, version, f=_TS_COLUMN_FIELD[col]: _ms_or_none(cdr[f])) if col in _TS_COLUMN_FIELD
    else (lambda cdr, version, c=col: _money(cdr[c])) if col in CDR_MONEY_FIELDS
    else (lambda cdr, version: 1 if cdr["zombie"] else 0) if col == "zombie"
    else (lambda cdr, version, c=col: cdr[c])
    for col in CDR_COLUMNS
)


def cdr_to_row(cdr: dict[str, Any], version: int) -> tuple[Any, ...]:
    return tuple(make(cdr, version) for make in _ROW_MAKERS)


def _money_text(v: Any) -> str | None:
    if v is None:
        return None
    return format(Decimal(v).quantize(Decimal("0.000001")), "f")


def row_to_cdr(row: dict[str, Any]) -> dict[str, Any]:
    """A table row back to the CDR contract (the inverse of cdr_to_row, version dropped)."""
    cdr: dict[str, Any] = {}
    for col in CDR_COLUMNS:
        if col == "version":
            continue
        v = row[col]
        if col in _TS_COLUMN_FIELD:
            cdr[_TS_COLUMN_FIELD[col]] = ms_to_ts(None if v is None else int(v))
        elif col in CDR_MONEY_FIELDS:
            cdr[col] = _money_text(v)
        elif col == "zombie":
            cdr[col] = bool(v)
        elif col in ("pdd_ms", "duration_ms", "verified_ms", "unverified_ms", "billed_seconds",
                     "session_expires", "effective_limit_s", "refresh_count", "sip_status"):
            cdr[col] = None if v is None else int(v)
        else:
            cdr[col] = v
    cdr["schema_version"] = 1
    return cdr


def alert_to_row(alert: dict[str, Any]) -> tuple[Any, ...]:
    vals = dict(alert, estimated_cost=Decimal(alert["estimated_cost"]), ts_ms=ts_to_ms(alert["ts"]))
    return tuple(vals[c] for c in ALERT_COLUMNS)


def event_to_row(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["event_id"], event["call_id"], event["seq"], event["type"], ts_to_ms(event["ts"]),
            event["node"], orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode())
