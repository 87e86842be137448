"""Lifecycle facts of calls as contract events: envelope, per-call seq, validation, publishing.

Every event is checked against its JSON Schema before it leaves: an invalid event from
the B2BUA itself is a bug, and it fails loudly in tests instead of reaching billing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from b2bua.sip.randomness import uuid4_hex
from schemas.validation import validate_event
from sipledger.eventlog import Publisher

_TS_SECOND: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def format_ts(epoch_s: float) -> str:
    ms = int(epoch_s * 1000)
    second = ms // 1000
    last, prefix = _TS_SECOND[0]
    if second != last:
        # strftime costs more than the rest of an event; events come in bursts within one second.
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _TS_SECOND[0] = (second, prefix)
    return f"{prefix}{ms % 1000:03d}Z"


# 2: dialog state, local_cseq, heartbeat address, takeover reports (schemas/common.json).
SCHEMA_VERSION = 2


class CallEventFactory:
    def __init__(self, node: str, publisher: Publisher, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.publisher = publisher
        self.clock = clock
        self._seq: dict[str, int] = {}
        self._hb_seq = 0
        self.published = 0

    def emit(self, call_id: str, etype: str, seq: int | None = None, **fields: Any) -> dict[str, Any]:
        """``seq``: given for an event of a call this node did not set up (a takeover's report, with
        the seq the pipeline handed over); else the call's next."""
        if seq is None:
            seq = self._seq.get(call_id, 0) + 1
            self._seq[call_id] = seq
        event = {"event_id": uuid4_hex(), "call_id": call_id, "seq": seq, "type": etype,
                 "ts": format_ts(self.clock()), "node": self.node, "schema_version": SCHEMA_VERSION,
                 **fields}
        validate_event(event)
        self.publisher.publish(event)
        self.published += 1
        if etype == "call.terminated":
            self._seq.pop(call_id, None)
        return event

    def heartbeat(self, active_calls: int, address: str | None = None) -> dict[str, Any]:
        """``address``: host:port this node answers SIP OPTIONS at over UDP, where the pipeline probes it
        before calling it lost when its heartbeats stop (schema_version 2)."""
        self._hb_seq += 1
        event = {"event_id": uuid4_hex(), "call_id": f"node:{self.node}", "seq": self._hb_seq,
                 "type": "node.heartbeat", "ts": format_ts(self.clock()), "node": self.node,
                 "schema_version": SCHEMA_VERSION, "active_calls": active_calls}
        if address:
            event["address"] = address
        validate_event(event)
        # Every pipeline partition must see every node's heartbeat to judge its calls orphaned or not.
        self.publisher.publish(event, broadcast=True)
        return event

    def open_calls(self) -> int:
        return len(self._seq)
