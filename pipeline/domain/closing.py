"""Closing a call: the single place a call becomes ENDED and its CDR is emitted.

First close wins: whichever comes first - the node's call.terminated, or the pipeline orphaning the
call after its node vanished - fixes the end time and reason, and the CDR emitted then is final. A later
call.terminated for the same call is recorded as seen (dedup) but emits nothing: a second CDR would
double-bill, and correcting a published CDR is a rerating job, not the event fold's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import phase
from .alerts import raise_once
from .cdr import cdr_fields
from .effects import CancelDeadline, Effect, EmitCdr
from .end_reasons import END_REASONS

if TYPE_CHECKING:
    from .call_state import CallState

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
               effects: list[Effect], end_ts: str | None = None) -> None:
    """Mark ``state`` ENDED and append its effects (cancel timer, alert, CDR). No-op if already ENDED.

    ``end_ts`` is the ts string of ``end_ms`` when the caller has it (saves formatting), else None.
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
    if state.scheduled_at_ms is not None:
        state.scheduled_at_ms = None
        effects.append(CancelDeadline(state.call_id))
    kind = _ALERT_ON_END.get(reason)
    if kind is not None and state.answer_ms is not None:
        raise_once(state, kind, end_ms, f"call ended: {reason}", effects)
    effects.append(EmitCdr(cdr_fields(state)))
