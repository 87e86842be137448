"""`sipledger trace`: a call's signalling from the store or a capture, as a ladder, a page, JSON or pcap.

The store holds the records the pipeline stored (table call_signalling, sipledger/store/signalling.py);
a capture is any pcap or pcapng (sipledger/trace_pcap.py). Either way the result is a list of ladders
(sipledger/trace_ladder.py), one per call: the store gives one for the call asked for, a capture one per
call it holds (or those with the Call-ID asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import Store
from .store.signalling import fetch_records, recent_calls
from .store.tables import ms_to_ts
from .trace_ladder import Ladder
from .trace_pcap import read_capture


def from_store(store: Store, call_id: str) -> list[Ladder]:
    records = fetch_records(store, call_id)
    return [Ladder.of(records)] if records else []


def from_capture(path: Path, call_id: str | None = None) -> list[Ladder]:
    ladders = read_capture(path)
    if call_id:
        ladders = [lad for lad in ladders if any(
            rec["call_id"] == call_id or any(e.get("sip_call_id") == call_id for e in rec["entries"])
            for rec in lad.records)]
    return ladders


def as_json(ladders: list[Ladder]) -> list[dict[str, Any]]:
    """What --json prints: per call its parties and its records (the contract's form)."""
    return [{"call_id": lad.call_id, "roles": [r for r in lad.roles if r], "records": lad.records}
            for lad in ladders]


def recent(store: Store, limit: int) -> list[dict[str, Any]]:
    rows = recent_calls(store, limit)
    return [{"call_id": r["call_id"], "node": r["node"], "account": r["account"],
             "start": ms_to_ts(int(r["start_ms"])), "end_reason": r["end_reason"],
             "failed": bool(r["failed"]), "entries": int(r["entries"])} for r in rows]
