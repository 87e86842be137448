"""Rows and columns of the ClickHouse tables <-> the JSON contracts (CDR, alert, event).

The contracts carry ISO timestamps and money as strings; the tables carry epoch
milliseconds and Decimal. This module decides which field becomes which column; the value
conversions themselves are in parse.py. Rows (``*_to_row``, for ``Store.insert``) convert one
record at a time; a ColumnBuffer (``*_buffer``, for ``Store.insert_columns``) converts a batch
a column at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from .columnar import ColumnValues, Units
from .parse import MONEY_SCALE, money_column_to_units, ts_column_to_ms, ts_to_ms

CDR_TS_FIELDS = {"setup_ts": "setup_ms", "ring_ts": "ring_ms", "answer_ts": "answer_ms",
                 "end_ts": "end_ms", "last_proof_of_life": "last_proof_of_life_ms"}
CDR_MONEY_FIELDS = ("sell_rate", "sell_cost", "buy_rate", "buy_cost", "margin")
CDR_COLUMNS: tuple[str, ...] = (
    "call_id", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
    "setup_ms", "ring_ms", "answer_ms", "end_ms", "pdd_ms", "duration_ms", "verified_ms", "unverified_ms",
    "billed_seconds", "timer_mode", "session_expires", "effective_limit_s", "refresh_count",
    "last_proof_of_life_ms", "end_reason", "ended_by", "sip_status", "zombie", "exposure_ms", "exposure_open",
    "closed_by", "sell_rate", "sell_cost", "buy_rate", "buy_cost", "margin", "currency", "rate_deck_version",
    "version",
)
ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id", "kind", "call_id", "node", "account", "vendor", "ran_ms", "unverified_ms",
    "estimated_cost", "currency", "message", "ts_ms",
)
EVENT_COLUMNS: tuple[str, ...] = ("event_id", "call_id", "seq", "type", "ts_ms", "node", "payload")
LEDGER_COLUMNS: tuple[str, ...] = ("account", "entry_id", "kind", "amount", "currency", "node", "ts_ms",
                                   "note", "version")


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
    else (lambda cdr, version, c=col: 1 if cdr[c] else 0) if col in ("zombie", "exposure_open")
    else (lambda cdr, version, c=col: cdr[c])
    for col in CDR_COLUMNS
)


# Row versions: the rank of the record above the write time in ms (< 2**44 until the year 2527).
_RANK_SHIFT = 44
_RANK = {"node": 2, "pipeline": 1}


def cdr_version(cdr: dict[str, Any], wall_ms: int) -> int:
    """The ReplacingMergeTree version of a CDR row: which record of a call the store keeps.

    A record closed by the call's own node (``closed_by`` = node) outranks one closed by a pipeline
    verdict, whatever was written last; within a rank the later write wins (a re-rated copy).
    """
    return (_RANK.get(cdr.get("closed_by", "node"), 1) << _RANK_SHIFT) | wall_ms


def ledger_version(row: dict[str, Any], wall_ms: int) -> int:
    """The ReplacingMergeTree version of an account_ledger row: a debit (its CDR's rank, node over
    verdict, ``row["rank"]`` 1 or 2) outranks the call's hold (rank 0), then the later write wins."""
    return (int(row.get("rank", 0)) << _RANK_SHIFT) | wall_ms


# What a schema_version 1 CDR (from an older worker, a CDR topic written before) recorded, in v2 terms.
CDR_V1_DEFAULTS = {"exposure_ms": 0, "exposure_open": False, "closed_by": "node"}


def upgrade_cdr(cdr: dict[str, Any]) -> dict[str, Any]:
    """A CDR with every v2 field: a v1 CDR gets the defaults (it is returned as is when complete)."""
    if "exposure_ms" in cdr:
        return cdr
    return {**cdr, **{k: v for k, v in CDR_V1_DEFAULTS.items() if k not in cdr}}


def cdr_to_row(cdr: dict[str, Any], version: int) -> tuple[Any, ...]:
    cdr = upgrade_cdr(cdr)
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
        elif col in ("zombie", "exposure_open"):
            cdr[col] = bool(v)
        elif col in ("pdd_ms", "duration_ms", "verified_ms", "unverified_ms", "billed_seconds",
                     "session_expires", "effective_limit_s", "refresh_count", "sip_status", "exposure_ms"):
            cdr[col] = None if v is None else int(v)
        else:
            cdr[col] = v
    cdr["schema_version"] = 2
    return cdr


def alert_to_row(alert: dict[str, Any]) -> tuple[Any, ...]:
    vals = dict(alert, estimated_cost=Decimal(alert["estimated_cost"]), ts_ms=ts_to_ms(alert["ts"]))
    return tuple(vals[c] for c in ALERT_COLUMNS)


def event_to_row(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["event_id"], event["call_id"], event["seq"], event["type"], ts_to_ms(event["ts"]),
            event["node"], event_payload(event))


# -- columns ---------------------------------------------------------------------------------------
# For each table column: the contract field it comes from and how its text converts. Columns not
# listed here (a CDR's version, an event's payload) are given to ColumnBuffer.add beside the record.
_TS, _MONEY, _AS_IS = "ts", "money", "as is"
_Sources = tuple[tuple[str, str, str], ...]  # (column, field, how)


def _sources(columns: Sequence[str], ts_fields: dict[str, str], money: Sequence[str]) -> _Sources:
    return tuple((col, ts_fields[col], _TS) if col in ts_fields else (col, col, _MONEY) if col in money
                 else (col, col, _AS_IS) for col in columns)


_CDR_SOURCES = _sources([c for c in CDR_COLUMNS if c != "version"], _TS_COLUMN_FIELD, CDR_MONEY_FIELDS)
_ALERT_SOURCES = _sources(ALERT_COLUMNS, {"ts_ms": "ts"}, ("estimated_cost",))
_EVENT_SOURCES = _sources([c for c in EVENT_COLUMNS if c != "payload"], {"ts_ms": "ts"}, ())
_LEDGER_SOURCES = _sources([c for c in LEDGER_COLUMNS if c != "version"], {"ts_ms": "ts"}, ("amount",))


class ColumnBuffer:
    """Records of one table kept a column at a time, for ``Store.insert_columns``.

    ``add`` appends each field's value, as the contract has it, to its column; ``columns`` converts
    whole columns (timestamps, money: parse.py) when they are written. Appending per field while
    the record is fresh measured cheaper than keeping row tuples and transposing them at flush.
    """

    def __init__(self, sources: _Sources, given: Sequence[str] = ()) -> None:
        self._how = {col: how for col, _, how in sources}
        self._values: dict[str, list[Any]] = {col: [] for col, _, _ in sources}
        self._values.update((col, []) for col in given)
        self._appends = tuple((self._values[col].append, field) for col, field, _ in sources)
        self._given = tuple(self._values[col].append for col in given)
        self._first = self._values[sources[0][0]]

    def add(self, record: dict[str, Any], *given: Any) -> None:
        """Append ``record``'s fields, and ``given`` values for the columns not taken from it."""
        rows = len(self._first)
        try:
            for append, field in self._appends:
                append(record[field])
            for append, value in zip(self._given, given, strict=True):
                append(value)
        except BaseException:
            self._truncate(rows)  # a record without a field adds nothing: the columns stay aligned
            raise

    def _truncate(self, rows: int) -> None:
        for column in self._values.values():
            del column[rows:]

    def __len__(self) -> int:
        return len(self._first)

    def columns(self, start: int, end: int) -> dict[str, ColumnValues]:
        """Rows ``start`` to ``end`` (exclusive) as columns in the table's terms."""
        out: dict[str, ColumnValues] = {}
        whole = start == 0 and end == len(self._first)
        for col, column in self._values.items():
            values = column if whole else column[start:end]
            how = self._how.get(col, _AS_IS)
            try:
                if how == _TS:
                    out[col] = ts_column_to_ms(values)
                elif how == _MONEY:
                    out[col] = Units(money_column_to_units(values, MONEY_SCALE), MONEY_SCALE)
                else:
                    out[col] = values
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{col}: {exc}") from exc
        return out

    def drop(self, n: int) -> None:
        """Forget the first ``n`` rows (they are stored)."""
        for column in self._values.values():
            del column[:n]


def cdr_buffer() -> ColumnBuffer:
    """``add(cdr, version)``."""
    return ColumnBuffer(_CDR_SOURCES, ("version",))


def alert_buffer() -> ColumnBuffer:
    """``add(alert)``."""
    return ColumnBuffer(_ALERT_SOURCES)


def event_buffer() -> ColumnBuffer:
    """``add(event, event_payload(event))``."""
    return ColumnBuffer(_EVENT_SOURCES, ("payload",))


def ledger_buffer() -> ColumnBuffer:
    """``add(row, version)`` (rows: pipeline.processor Outputs.ledger)."""
    return ColumnBuffer(_LEDGER_SOURCES, ("version",))


def event_payload(event: dict[str, Any]) -> str:
    """The event as stored in call_events.payload: its JSON, keys sorted."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
