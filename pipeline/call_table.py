"""The faust workers' call-state table as it is stored in Kafka: its names and its record format.

Written by the workers (pipeline/faust_app.py) and read back by their table recovery and by
`sipledger calls` in Kafka mode (sipledger/calls_view.py), which must not import faust just to learn
a topic name; hence this module imports neither faust nor Kafka clients.

Records of the changelog topic ``<app id>-call-state-changelog`` (faust's json codec, i.e. JSON text):

* key ``"<call_id>"``, value ``{"p": partition, "w": layout, "s": [field values]}``: one call's state,
  its fields positional in the order of ``LAYOUTS[layout]`` (held events as a seq-sorted list, alert
  kinds sorted). Positional because a worker writes one such record per touched call per batch, and
  naming 38 fields in every record doubled the cost of writing state (measured: 3.8 us against 2.0 us
  a record including the JSON encoding).
* key ``"<call_id>"``, value ``{"p": partition, "s": {field: value}}``: the same state by field name,
  as workers wrote it before layouts existed; still read.
* key ``"~liveness/<p>"``, value ``{"p": p, "clocks": {node: [clock, candidate, clamped]}, "beats":
  {node: newest heartbeat ms}, "addresses": {node: "host:port"}}``: a partition's node clocks (written
  before per-node clocks as ``{"p": p, "live": {node: last seen ms}}``, still read).
* key ``"~closed/<p>/<tag>"``, value ``{"p": p, "c": base64 of closed-call records}``: calls of partition
  ``p`` dropped from the table at one eviction (pipeline/domain/closed_calls.py records: a key digest and
  the close time each), remembered so a late redelivery changes nothing. Written before the calls'
  tombstones, on the same partition.
* key ``"~ledger/<p>"``, value ``{"p": p, "books": ..., "last_settled": [...]}``: partition ``p``'s prepaid
  ledger as ``Ledger.to_dict`` gives it (top-ups by id, settled debits; holds and debits of live calls are
  on their states). Written when a top-up is counted and before the tombstones of an eviction that
  settled debits (``last_settled`` names those calls, so a restart that still finds them does not count
  them twice).
* a null value: the call was closed, its CDR committed, and it was dropped (a tombstone).
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Iterable
from typing import Any, Final

import orjson

from pipeline.domain import CallState
from sipledger.topic_reader import latest_by_key

DEFAULT_APP_ID: Final = "sipledger-pipeline"
TABLE_NAME: Final = "call-state"
LIVENESS_PREFIX: Final = "~liveness/"
CLOSED_PREFIX: Final = "~closed/"
LEDGER_PREFIX: Final = "~ledger/"

# Field orders ever written, by layout number. Never change an entry: a new CallState field needs a new
# layout (tests/pipeline/test_call_table.py fails until there is one), so changelogs written by an older
# worker still restore.
LAYOUTS: Final[dict[int, tuple[str, ...]]] = {
    1: ("call_id", "phase", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
        "route_attempt", "setup_ms", "ring_ms", "answer_ms", "end_ms", "last_event_ms", "timer_mode",
        "session_expires", "refresher_caller", "refresher_carrier", "effective_limit_s", "limit_source",
        "refresh_count", "last_proof_ms", "session_expiry_ms", "setup_ts", "ring_ts", "answer_ts",
        "end_ts", "last_proof_ts", "end_reason", "ended_by", "sip_status", "terminate_issued",
        "alerts_raised", "next_seq", "held", "pending_since_ms", "scheduled_at_ms"),
    # 2: who closed the call and its exposure (CDR schema_version 2).
    2: ("call_id", "phase", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
        "route_attempt", "setup_ms", "ring_ms", "answer_ms", "end_ms", "last_event_ms", "timer_mode",
        "session_expires", "refresher_caller", "refresher_carrier", "effective_limit_s", "limit_source",
        "refresh_count", "last_proof_ms", "session_expiry_ms", "setup_ts", "ring_ts", "answer_ts",
        "end_ts", "last_proof_ts", "end_reason", "ended_by", "sip_status", "terminate_issued",
        "alerts_raised", "next_seq", "held", "pending_since_ms", "scheduled_at_ms", "closed_by",
        "exposure_end_ms", "exposure_open"),
    # 3: dialog state of both legs and a takeover under way (call.takeover).
    3: ("call_id", "phase", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
        "route_attempt", "setup_ms", "ring_ms", "answer_ms", "end_ms", "last_event_ms", "timer_mode",
        "session_expires", "refresher_caller", "refresher_carrier", "effective_limit_s", "limit_source",
        "refresh_count", "last_proof_ms", "session_expiry_ms", "setup_ts", "ring_ts", "answer_ts",
        "end_ts", "last_proof_ts", "end_reason", "ended_by", "sip_status", "terminate_issued",
        "alerts_raised", "next_seq", "held", "pending_since_ms", "scheduled_at_ms", "closed_by",
        "exposure_end_ms", "exposure_open", "dialogs", "takeover_node", "lost_ms"),
    # 4: a prepaid call's hold and debit (pipeline/domain/ledger.py).
    4: ("call_id", "phase", "node", "account", "caller", "callee", "source_ip", "vendor", "gateway",
        "route_attempt", "setup_ms", "ring_ms", "answer_ms", "end_ms", "last_event_ms", "timer_mode",
        "session_expires", "refresher_caller", "refresher_carrier", "effective_limit_s", "limit_source",
        "refresh_count", "last_proof_ms", "session_expiry_ms", "setup_ts", "ring_ts", "answer_ts",
        "end_ts", "last_proof_ts", "end_reason", "ended_by", "sip_status", "terminate_issued",
        "alerts_raised", "next_seq", "held", "pending_since_ms", "scheduled_at_ms", "closed_by",
        "exposure_end_ms", "exposure_open", "dialogs", "takeover_node", "lost_ms", "credit_hold",
        "credit_debit"),
}
CURRENT_LAYOUT: Final = max(LAYOUTS)
_FIELDS = LAYOUTS[CURRENT_LAYOUT]
_GET_FIELDS = operator.attrgetter(*_FIELDS)
_ALERTS = _FIELDS.index("alerts_raised")
_HELD = _FIELDS.index("held")


def changelog_topic(app_id: str) -> str:
    # faust's naming of a table's changelog topic.
    return f"{app_id}-{TABLE_NAME}-changelog"


def liveness_key(partition: int) -> str:
    return f"{LIVENESS_PREFIX}{partition}"


def ledger_key(partition: int) -> str:
    return f"{LEDGER_PREFIX}{partition}"


def closed_key(partition: int, tag: str) -> str:
    return f"{CLOSED_PREFIX}{partition}/{tag}"


def closed_value(partition: int, records: bytes) -> dict[str, Any]:
    return {"p": partition, "c": base64.b64encode(records).decode()}


def is_closed(value: Any) -> bool:
    return isinstance(value, dict) and "c" in value


def closed_records(value: dict[str, Any]) -> bytes:
    return base64.b64decode(value["c"])


def state_value(partition: int, state: CallState) -> dict[str, Any]:
    """The table value of one call's state (current layout)."""
    values = list(_GET_FIELDS(state))
    values[_ALERTS] = sorted(state.alerts_raised)
    held = state.held
    values[_HELD] = [held[s] for s in sorted(held)] if held else []
    return {"p": partition, "w": CURRENT_LAYOUT, "s": values}


def is_state(value: Any) -> bool:
    return isinstance(value, dict) and "s" in value


def state_of(value: dict[str, Any]) -> CallState:
    """The CallState in a table value of any layout (or by field name). ValueError for unknown layouts."""
    s = value["s"]
    if isinstance(s, dict):
        return CallState.from_dict(s)
    layout = LAYOUTS.get(value.get("w", 0))
    if layout is None or len(layout) != len(s):
        raise ValueError(f"call state record of unknown layout {value.get('w')!r} ({len(s)} fields)")
    return CallState.from_dict(dict(zip(layout, s, strict=True)))


def encode(key: str, value: Any) -> tuple[bytes, bytes | None]:
    """Key and value bytes exactly as faust's json codec writes them (None value: a tombstone)."""
    return orjson.dumps(key), None if value is None else orjson.dumps(value)


def fold_changelog(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, dict[str, Any]]:
    """call_id -> its latest state value; tombstones delete, liveness records are skipped.

    Values are decoded only once they are known to be the last of their key: a long changelog holds
    many versions of each call.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, raw in latest_by_key(records).items():
        try:
            call_id = orjson.loads(key)
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # not written by a worker: faust's json codec encodes every key and value
        if isinstance(call_id, str) and not call_id.startswith("~") and is_state(decoded):
            out[call_id] = decoded
    return out
