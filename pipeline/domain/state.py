"""The per-call state the pipeline keeps: plain data, no rules.

Every module of the core reads or writes this record; none of them is imported here, so the
layering is one way: this module and the other plain data (phase, policy, effects, end_reasons,
timeutil) at the bottom, alerts/cdr/closing/rules above them, and the fold (``fold.apply``) on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final

from . import phase

# Who closed a call's record: its own node's call.terminated, or a pipeline verdict (node.lost).
CLOSED_BY_NODE: Final = "node"
CLOSED_BY_PIPELINE: Final = "pipeline"


@dataclass(slots=True)
class CallState:
    call_id: str
    phase: str = phase.PENDING
    # Owning node (the node of call.setup; of the first event while pending).
    node: str = ""
    account: str = ""
    caller: str = ""
    callee: str = ""
    source_ip: str = ""
    vendor: str = ""  # latest call.routed
    gateway: str = ""
    route_attempt: int = 0
    setup_ms: int | None = None
    ring_ms: int | None = None  # first call.progress
    answer_ms: int | None = None
    end_ms: int | None = None
    last_event_ms: int | None = None  # latest ts applied; end time of an orphaned unanswered call
    timer_mode: str | None = None  # session_timer | no_timer (set on answer)
    session_expires: int | None = None
    refresher_caller: str | None = None
    refresher_carrier: str | None = None
    effective_limit_s: int | None = None
    limit_source: str = "none"
    refresh_count: int = 0
    last_proof_ms: int | None = None
    session_expiry_ms: int | None = None
    # The event ts strings behind setup/ring/answer/end/last_proof_ms, kept so a CDR needs no formatting
    # (formatting is ~2 us a timestamp in Python, as much as folding an event). None -> format the ms.
    setup_ts: str | None = None
    ring_ts: str | None = None
    answer_ts: str | None = None
    end_ts: str | None = None
    last_proof_ts: str | None = None
    end_reason: str | None = None
    ended_by: str | None = None
    sip_status: int | None = None
    terminate_issued: bool = False
    alerts_raised: set[str] = field(default_factory=set)
    next_seq: int = 1
    held: dict[int, dict[str, Any]] = field(default_factory=dict)
    pending_since_ms: int | None = None
    # Due time of the last ScheduleDeadline handed out (None: no timer armed); avoids redundant effects.
    scheduled_at_ms: int | None = None
    # CLOSED_BY_NODE or CLOSED_BY_PIPELINE once closed.
    closed_by: str | None = None
    # When the call stopped running on the wire as far as the log knows: the BYE a node sent (its
    # call.terminated), or, when nobody ended it, the pipeline's detection (node.lost). The exposure
    # is the stretch from the last proof of life to this instant.
    exposure_end_ms: int | None = None
    # True when no node is known to have ended the call on the wire: the carrier may still bill it.
    exposure_open: bool = False
    # Dialog state of both legs ({"caller": {...}, "carrier": {...}}, schemas/common.json dialog_leg),
    # from call.answered, with local_cseq and remote_target kept current by refreshes and probes: what
    # a surviving node needs to end the call if its node dies.
    dialogs: dict[str, Any] | None = None
    # A takeover under way: the node told to end the call, and the node.lost verdict's time.
    takeover_node: str | None = None
    lost_ms: int | None = None
    # A prepaid call: what its node held for it at setup (call.setup credit.hold), and once its CDR is
    # rated, the debit that replaces the hold (the CDR's sell_cost); money strings. See ledger.py.
    credit_hold: str | None = None
    credit_debit: str | None = None

    @property
    def closed(self) -> bool:
        return self.phase == phase.ENDED

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (held events as a seq-sorted list, alert kinds sorted)."""
        d = {f: getattr(self, f) for f in FIELD_NAMES}
        d["alerts_raised"] = sorted(self.alerts_raised)
        d["held"] = [self.held[s] for s in sorted(self.held)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallState:
        kw = {f: d[f] for f in FIELD_NAMES if f in d}
        kw["alerts_raised"] = set(d.get("alerts_raised", ()))
        kw["held"] = {e["seq"]: e for e in d.get("held", ())}
        return cls(**kw)


FIELD_NAMES: Final = tuple(f.name for f in fields(CallState))
