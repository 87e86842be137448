"""Call signalling records (schemas/call_signalling.json) in table call_signalling, and their retention.

A record becomes one row per entry (a SIP message or a memo), the record's own fields repeated on each
(ClickHouse stores a repeated value in a column for next to nothing). ``fetch_records`` turns the rows
back into records, one per node that recorded the call, for ``sipledger trace``; a call is found by its
call id or by either leg's SIP Call-ID.

Retention is the same on every server version: ClickHouse 18.16 has no table TTL (nor does the DDL use
one), so the table is partitioned by the UTC day a call started and ``drop_expired`` drops whole
partitions older than the retention, by partition id (``DROP PARTITION ID``, which 18.16 and current
servers both take; the text of ``system.parts.partition`` differs between them, its id does not).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .base import Store
from .tables import ms_to_ts, ts_to_ms

TABLE = "call_signalling"
COLUMNS: tuple[str, ...] = (
    "call_id", "node", "n", "ts_ms", "kind", "leg", "direction", "transport", "remote", "sip_call_id",
    "first_line", "headers", "body", "body_bytes", "text", "account", "selected_by", "local", "start_ms",
    "end_ms", "end_reason", "failed", "dropped_entries",
)
_CALL_FIELDS = ("call_id", "node", "account", "selected_by", "local", "end_reason", "failed",
                "dropped_entries")


def record_columns(records: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows of ``records`` (valid ones) as whole columns for ``Store.insert_columns``."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for rec in records:
        start = ts_to_ms(rec["start"])
        end = ts_to_ms(rec["end"]) if rec["end"] is not None else None
        for e in rec["entries"]:
            sip = e["kind"] == "sip"
            values = {
                "call_id": rec["call_id"], "node": rec["node"], "n": e["n"], "ts_ms": ts_to_ms(e["ts"]),
                "kind": e["kind"], "leg": e["leg"] or "", "direction": e["direction"] if sip else "",
                "transport": e["transport"] if sip else "", "remote": e["remote"] if sip else "",
                "sip_call_id": e["sip_call_id"] if sip else "", "first_line": e["first_line"] if sip else "",
                "headers": e["headers"] if sip else "", "body": e["body"] if sip else None,
                "body_bytes": e["body_bytes"] if sip else 0, "text": "" if sip else e["text"],
                "account": rec["account"], "selected_by": rec["selected_by"], "local": rec["local"],
                "start_ms": start, "end_ms": end, "end_reason": rec["end_reason"],
                "failed": 1 if rec["failed"] else 0, "dropped_entries": rec["dropped_entries"],
            }
            for c in COLUMNS:
                cols[c].append(values[c])
    return cols


def rows_to_records(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (any order) back to records, one per (call id, node), in the order the calls started."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["call_id"], r["node"])
        rec = by_key.get(key)
        if rec is None:
            rec = by_key[key] = {"schema_version": 1, **{f: r[f] for f in _CALL_FIELDS},
                                 "start": ms_to_ts(int(r["start_ms"])),
                                 "end": ms_to_ts(None if r["end_ms"] is None else int(r["end_ms"])),
                                 "entries": []}
            rec["failed"] = bool(rec["failed"])
            rec["dropped_entries"] = int(rec["dropped_entries"])
        if r["kind"] == "sip":
            entry = {"n": int(r["n"]), "ts": ms_to_ts(int(r["ts_ms"])), "kind": "sip", "leg": r["leg"],
                     "direction": r["direction"], "transport": r["transport"], "remote": r["remote"],
                     "sip_call_id": r["sip_call_id"], "first_line": r["first_line"], "headers": r["headers"],
                     "body": r["body"], "body_bytes": int(r["body_bytes"])}
        else:
            entry = {"n": int(r["n"]), "ts": ms_to_ts(int(r["ts_ms"])), "kind": "memo",
                     "leg": r["leg"] or None, "text": r["text"]}
        rec["entries"].append(entry)
    out = list(by_key.values())
    for rec in out:
        rec["entries"].sort(key=lambda e: e["n"])
    out.sort(key=lambda rec: (rec["start"], rec["call_id"], rec["node"]))
    return out


def fetch_records(store: Store, call_id: str) -> list[dict[str, Any]]:
    """The records of the call whose call id, or either leg's SIP Call-ID, is ``call_id``."""
    rows = store.query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} FINAL WHERE call_id IN (SELECT call_id "
                       f"FROM {TABLE} WHERE call_id = %(id)s OR sip_call_id = %(id)s) "
                       "ORDER BY call_id, node, n", {"id": call_id})
    return rows_to_records(rows)


def recent_calls(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The latest recorded calls (for `sipledger trace` without a call id): one row each."""
    return store.query(
        f"SELECT call_id, node, any(account) AS account, any(start_ms) AS start_ms, any(end_reason) AS "
        f"end_reason, max(failed) AS failed, count() AS entries FROM {TABLE} GROUP BY call_id, node "
        "ORDER BY start_ms DESC, call_id LIMIT %(limit)s", {"limit": int(limit)})


def utc_day(epoch_s: float) -> date:
    return datetime.fromtimestamp(epoch_s, UTC).date()


def drop_expired(store: Store, today: date, retention_days: int) -> list[str]:
    """Drop the partitions (days) older than ``retention_days`` before ``today``; returns their ids.

    A day is kept while ``today - day < retention_days``: with 7, today and the 6 days before it."""
    cutoff = (today - timedelta(days=retention_days - 1)).strftime("%Y%m%d")
    parts = store.query("SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() "
                        "AND table = %(t)s AND active AND partition_id < %(cutoff)s ORDER BY partition_id",
                        {"t": TABLE, "cutoff": cutoff})
    dropped = []
    for row in parts:
        pid = str(row["partition_id"])
        if not (len(pid) == 8 and pid.isdigit()):
            continue  # not a day of ours: leave it alone
        store.execute(f"ALTER TABLE {TABLE} DROP PARTITION ID '{pid}'")
        dropped.append(pid)
    return dropped
