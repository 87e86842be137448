"""The event fold ``apply``: one call's events into its state (pipeline.domain.state.CallState).

Ordering and duplicates. ``seq`` is per call, from 1, without gaps, so the state only needs
``next_seq`` (all seqs below it are applied) and ``held`` (events that arrived early, keyed by seq):

* an event with ``seq < next_seq`` or already held is a duplicate (redelivery): nothing changes and no
  effects are returned - so re-applying any event is idempotent even though ``apply`` mutates in place;
* an event with ``seq == next_seq`` is applied, then any held successors are drained in seq order;
* an event with ``seq > next_seq`` is held.

Hence every arrival order applies the same events in the same (seq) order, and the final state and CDR
are the same once all events arrived. Until seq 1 (call.setup) is applied the call is PENDING and
``pending_since_ms`` is the earliest ts among the held events (earliest, not first-arrived, so it does
not depend on arrival order); ``rules`` reports it as ``unknown_call`` after ``unknown_call_timeout_s``.
A gap after setup simply holds later events; the driver can force them in with :func:`drain_held`.

``apply`` MUTATES ``state`` and returns the same object (``None`` -> a new one). No I/O, no clock: every
time comes from the events. node.heartbeat and node.lost are not call events: the processor routes them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from . import phase
from .alerts import raise_once
from .closing import close_call
from .effects import Effect
from .end_reasons import PARTY_BYE_REASONS
from .phase import ACTIVE, ANSWERED, ENDED, PENDING
from .policy import Policy
from .rules import effective_limit, sync_deadline
from .state import CallState
from .timeutil import EPOCH_UTC, ONE_MS, parse_ts

_fromisoformat = datetime.fromisoformat


def _taken_over(st: CallState, ev: dict[str, Any], ts: int, takeover: dict[str, Any],
                fx: list[Effect]) -> None:
    """A surviving node ended a lost node's call (its BYE on each leg). Billed like any orphan, up to the
    last proof of life; the exposure ran until that BYE, and stays open only if the carrier leg's BYE got
    no answer (a 481 means the carrier had already dropped the dialog: nothing more to bill)."""
    if st.answer_ms is not None and st.last_proof_ms is not None:
        end, end_ts = st.last_proof_ms, st.last_proof_ts
    elif st.answer_ms is not None:
        end, end_ts = st.answer_ms, st.answer_ts
    else:
        end, end_ts = ts, ev["ts"]
    carrier = takeover["legs"]["carrier"]["outcome"]
    still_open = carrier in ("timeout", "not_sent")
    raise_once(st, "orphaned", ts, f"node {takeover['dead_node']} lost; taken over by {ev['node']}", fx)
    if still_open or takeover["legs"]["caller"]["outcome"] in ("timeout", "not_sent"):
        legs = ", ".join(f"{leg} {v['outcome']}" for leg, v in sorted(takeover["legs"].items()))
        raise_once(st, "takeover_failed", ts, f"takeover by {ev['node']}: BYE {legs}", fx)
    # The exposure ends when the BYEs went out, not when their answers came (or timed out) later.
    sent = takeover.get("sent")
    bye_at = parse_ts(sent) if sent else ts
    close_call(st, end, "orphaned", "system", None, fx, end_ts, exposure_end_ms=max(end, bye_at),
               exposure_open=still_open)


Handler = Callable[[CallState, dict[str, Any], int, Policy, list[Effect]], None]


def _on_setup(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    st.account = ev["account"]
    st.caller = ev["caller"]
    st.callee = ev["callee"]
    st.source_ip = ev["source_ip"]
    credit = ev.get("credit")
    if credit is not None:
        st.credit_hold = credit["hold"]


def _on_routed(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    # Re-routing (attempt 2, 3, ...) replaces the vendor: the last one is who carried the call.
    st.vendor = ev["vendor"]
    st.gateway = ev["gateway"]
    st.route_attempt = ev["attempt"]


def _on_progress(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.ring_ms is None:
        st.ring_ms = ts
        st.ring_ts = ev["ts"]


def _on_answered(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.phase != ACTIVE:
        return
    st.phase = phase.ANSWERED
    st.answer_ms = ts
    st.answer_ts = st.last_proof_ts = ev["ts"]
    st.last_proof_ms = ts  # the 200 OK itself proves both legs were alive
    mode = ev["timer_mode"]
    st.timer_mode = mode
    se = ev["session_expires"]
    st.session_expires = se
    refresher = ev["refresher"]
    st.refresher_caller = refresher["caller"]
    st.refresher_carrier = refresher["carrier"]
    st.effective_limit_s, st.limit_source = effective_limit(
        ev["effective_limit_s"], ev["limit_source"], mode, policy)
    if mode == "session_timer" and se:
        st.session_expiry_ms = ts + se * 1000
    dialogs = ev.get("dialogs")
    if dialogs:
        # Copies: refreshes and probes advance them, and the event itself stays as the log has it.
        st.dialogs = {leg: dict(d) for leg, d in dialogs.items()}
    sync_deadline(st, policy, fx)


def _advance_dialog(st: CallState, ev: dict[str, Any]) -> None:
    """A request the node sent on a leg advanced that leg's CSeq (and a target refresh its target)."""
    dialogs = st.dialogs
    if not dialogs:
        return
    d = dialogs.get(ev["leg"])
    if d is None:
        return
    cseq = ev.get("local_cseq")
    if cseq is not None and cseq > d["local_cseq"]:
        d["local_cseq"] = cseq
    target = ev.get("remote_target")
    if target:
        d["remote_target"] = target


def _on_refreshed(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.phase != ANSWERED:
        return
    _advance_dialog(st, ev)
    st.refresh_count += 1
    if st.last_proof_ms is None or ts > st.last_proof_ms:
        st.last_proof_ms = ts
        st.last_proof_ts = ev["ts"]
    expiry = parse_ts(ev["expires_at"])
    if st.session_expiry_ms is None or expiry > st.session_expiry_ms:
        st.session_expiry_ms = expiry
    sync_deadline(st, policy, fx)


def _on_refresh_failed(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.phase == ANSWERED:
        _advance_dialog(st, ev)
        msg = (f"session refresh failed on the {ev['leg']} leg ({ev['cause']}, "
               f"{'no response' if ev['status'] is None else 'status ' + str(ev['status'])})")
        raise_once(st, "refresh_failed", ts, msg, fx)


def _on_probe_ok(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.phase != ANSWERED:
        return
    _advance_dialog(st, ev)
    if st.last_proof_ms is None or ts > st.last_proof_ms:
        st.last_proof_ms = ts
        st.last_proof_ts = ev["ts"]


def _on_probe_failed(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    if st.phase == ANSWERED:
        _advance_dialog(st, ev)
        raise_once(st, "probe_failed", ts,
                   f"liveness probe failed on the {ev['leg']} leg ({ev['cause']}, "
                   f"{'no response' if ev['status'] is None else 'status ' + str(ev['status'])})", fx)


def _on_terminated(st: CallState, ev: dict[str, Any], ts: int, policy: Policy, fx: list[Effect]) -> None:
    reason = ev["reason"]
    initiator = ev["initiator"]
    takeover = ev.get("takeover")
    if takeover is not None:
        _taken_over(st, ev, ts, takeover, fx)
        return
    if st.phase == ANSWERED and reason in PARTY_BYE_REASONS and initiator != "system":
        # A party's BYE proves the call was alive until the end: verified == duration.
        st.last_proof_ms = ts
        st.last_proof_ts = ev["ts"]
    close_call(st, ts, reason, initiator, ev["sip_status"], fx, ev["ts"])


_HANDLERS: Final[dict[str, Handler]] = {
    "call.setup": _on_setup,
    "call.routed": _on_routed,
    "call.progress": _on_progress,
    "call.answered": _on_answered,
    "session.refreshed": _on_refreshed,
    "session.refresh_failed": _on_refresh_failed,
    "liveness.probe_succeeded": _on_probe_ok,
    "liveness.probe_failed": _on_probe_failed,
    "call.terminated": _on_terminated,
}
EVENT_TYPES: Final = frozenset(_HANDLERS)


def _start(st: CallState, ev: dict[str, Any], ts: int) -> None:
    """seq 1 (call.setup by contract; whatever it is, it starts the call)."""
    st.phase = ACTIVE
    st.node = ev["node"]
    st.setup_ms = ts
    st.setup_ts = ev["ts"]
    st.pending_since_ms = None


def _step(st: CallState, ev: dict[str, Any], policy: Policy, fx: list[Effect]) -> None:
    """Apply one in-order event (the held-event path; ``apply`` inlines the same for the first one)."""
    if st.phase == ENDED:
        return  # first close wins: nothing after the close changes the (already emitted) CDR
    ts = (_fromisoformat(ev["ts"]) - EPOCH_UTC) // ONE_MS
    if st.last_event_ms is None or ts > st.last_event_ms:
        st.last_event_ms = ts
    if st.phase == PENDING:
        _start(st, ev, ts)
    _HANDLERS[ev["type"]](st, ev, ts, policy, fx)


def apply(state: CallState | None, event: dict[str, Any], policy: Policy) -> tuple[CallState, list[Effect]]:
    """Fold one (schema-valid) call event into the call's state. See the module docstring.

    Returns ``(state, effects)``; ``state`` is the argument itself, mutated (or a new one for ``None``).
    Raises ValueError for event types that are not call events (node.heartbeat) before touching state.
    """
    # Hot path (hundreds of thousands of calls a second): locals, no helper calls for the common case.
    handler = _HANDLERS.get(event["type"])
    if handler is None:
        raise ValueError(f"not a call event type: {event['type']!r}")
    if state is None:
        state = CallState(event["call_id"])
    seq = event["seq"]
    nxt = state.next_seq
    fx: list[Effect] = []
    if seq != nxt:
        if seq > nxt and seq not in state.held:
            state.held[seq] = event
            if nxt == 1:
                _hold_pending(state, event, policy, fx)
        return state, fx  # held, or a duplicate of an applied/held event
    ph = state.phase
    if ph != ENDED:
        ts = (_fromisoformat(event["ts"]) - EPOCH_UTC) // ONE_MS  # == timeutil.parse_ts, inlined
        last = state.last_event_ms
        if last is None or ts > last:
            state.last_event_ms = ts
        if ph == PENDING:
            _start(state, event, ts)
        handler(state, event, ts, policy, fx)
    nxt += 1
    held = state.held
    if held:
        while nxt in held:
            _step(state, held.pop(nxt), policy, fx)
            nxt += 1
        if seq == 1 and state.scheduled_at_ms is not None and state.phase != ENDED:
            sync_deadline(state, policy, fx)  # the pending (unknown_call) timer is no longer needed
    state.next_seq = nxt
    return state, fx


def _hold_pending(state: CallState, event: dict[str, Any], policy: Policy, fx: list[Effect]) -> None:
    ts = parse_ts(event["ts"])
    if state.pending_since_ms is None or ts < state.pending_since_ms:
        state.pending_since_ms = ts
    if not state.node:
        state.node = event["node"]
    sync_deadline(state, policy, fx)


def drain_held(state: CallState, policy: Policy) -> tuple[CallState, list[Effect]]:
    """Force held events in, skipping missing seqs (for a driver that gave up waiting for a gap).

    Only for calls past seq 1: a PENDING call has no call.setup, so it cannot be folded meaningfully.
    Mutates and returns ``state``.
    """
    fx: list[Effect] = []
    if state.phase == phase.PENDING:
        return state, fx
    held = state.held
    while held:
        seq = min(held)
        _step(state, held.pop(seq), policy, fx)
        state.next_seq = seq + 1
    return state, fx
