"""Closing a call: the single place a call becomes ENDED and its CDR is emitted.

First close wins: whichever comes first in the log - the node's call.terminated, or a pipeline
verdict that the call's node is lost (node.lost) - fixes the end time and reason, and the CDR emitted
then is final. A later event of the same call is counted by the driver as late and changes nothing: a
second CDR would double-bill, and correcting a published CDR is a rerating job, not the event fold's.

Besides the end, a close records the call's exposure: the instant it stopped running on the wire as
far as the log knows (``exposure_end_ms``) and whether that is still open (nobody sent a BYE).
"""

from __future__ import annotations

from typing import Final

from . import phase
from .alerts import raise_once
from .cdr import cdr_fields
from .effects import CancelDeadline, Effect, EmitCdr
from .end_reasons import END_REASONS
from .state import CLOSED_BY_NODE, CallState

# end_reason -> alert kind raised when a call ends that way (the B2BUA did enforce, but someone should
# know that a call had to be cut).
_ALERT_ON_END: Final = {
    "no_timer_limit": "limit_reached",
    "max_duration_limit": "limit_reached",
    "session_expired": "refresh_failed",
    "session_refresh_failed": "refresh_failed",
    "liveness_probe_failed": "probe_failed",
}


def close_call(state: CallState, end_ms: int, reason: str, ended_by: str, sip_status: int | None,
               effects: list[Effect], end_ts: str | None = None, *, closed_by: str = CLOSED_BY_NODE,
               exposure_end_ms: int | None = None, exposure_open: bool = False) -> None:
    """Mark ``state`` ENDED and append its effects (cancel timer, alert, CDR). No-op if already ENDED.

    ``end_ts`` is the ts string of ``end_ms`` when the caller has it (saves formatting), else None.
    ``exposure_end_ms`` defaults to ``end_ms`` (the node's BYE is the end on the wire).
    """
    if state.phase == phase.ENDED:
        return
    if reason not in END_REASONS:
        raise ValueError(f"unknown end_reason {reason!r}")
    state.phase = phase.ENDED
    state.end_ms = end_ms
    state.end_ts = end_ts
    state.end_reason = reason
    state.ended_by = ended_by
    state.sip_status = sip_status
    state.pending_since_ms = None
    state.closed_by = closed_by
    state.exposure_end_ms = end_ms if exposure_end_ms is None else exposure_end_ms
    state.exposure_open = exposure_open
    if state.scheduled_at_ms is not None:
        state.scheduled_at_ms = None
        effects.append(CancelDeadline(state.call_id))
    kind = _ALERT_ON_END.get(reason)
    if kind is not None and state.answer_ms is not None:
        raise_once(state, kind, end_ms, f"call ended: {reason}", effects)
    effects.append(EmitCdr(cdr_fields(state)))
