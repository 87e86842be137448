"""Ending calls: BYE on both legs (or a final response and CANCEL before the answer), the end reason
and the ``call.terminated`` event, the tombstone an ended call leaves for late messages, and the
safety-net sweep for calls that outlived every deadline.

A BYE from either party is always accepted on a live call (answering 481 would leave one leg up).
An ended call becomes an ``EndedCall`` tombstone for ``linger`` seconds, so a CANCEL that crossed our
final response or a late carrier 2xx still gets the right answer, while the call's own state is
freed at once.
"""

from __future__ import annotations

from typing import Any

from b2bua.actions import CancelTimer
from b2bua.call import Call, CallState, EndedAttempt, EndedCall, LegRole
from b2bua.core_config import (
    INITIATOR,
)
from b2bua.core_state import (
    TOMBSTONE_PURPOSES,
    TxOwner,
)
from b2bua.liveness import Liveness
from b2bua.sip.dialog import DialogState
from b2bua.sip.message import (
    Request,
    identity_copy,
)
from b2bua.sip.transaction_layer import TransactionKey


class Termination(Liveness):
    """Ending calls on the wire and in the events; tombstones; the safety net."""

    def _on_bye(self, req: Request, key: TransactionKey | None) -> None:
        entry = self._live_dialog(req, key)
        if entry is None:
            return
        call, role = entry
        # A BYE on a live call is always accepted: no CSeq check, no state check. Answering 481 here
        # leaves the far end's call up while ours is down (or the reverse) and inflates CDRs.
        self._respond(key, req, 200)
        leg = call.leg(role)
        if leg.dialog is not None:
            leg.dialog.terminate()
        if not call.answered:
            if role == "caller":
                call.cancelled = True
                self._terminate(call, "caller_cancel", "caller", status_to_caller=487, sip_status=None)
            else:
                self._terminate(call, "rejected", "callee", status_to_caller=480, sip_status=480,
                                detail="carrier sent BYE before answering")
            return
        reason = "normal_caller_bye" if role == "caller" else "normal_callee_bye"
        self._terminate(call, reason, INITIATOR[role], sip_status=None, except_leg=role)

    def _send_bye(self, call: Call, role: LegRole) -> bool:
        leg = call.leg(role)
        d = leg.dialog
        if d is None or d.is_terminated or d.state is not DialogState.CONFIRMED:
            return False
        if role == "carrier" and call.carrier_ack_waits_for_caller and call.pending_carrier_ok is not None:
            call.carrier_ack_waits_for_caller = False
            self._ack(call, "carrier", call.pending_carrier_ok.cseq.num, leg.local_sdp,
                      leg.local_sdp_type if leg.local_sdp else None)
        bye = d.create_bye(branch=self.layer.new_branch())
        self._send_request(call, leg, bye, "bye")
        d.terminate()
        return True

    def _terminate(self, call: Call, reason: str, initiator: str, *, status_to_caller: int | None = None,
                   reason_phrase: str | None = None, sip_status: int | None = None, detail: str | None = None,
                   except_leg: LegRole | None = None) -> None:
        """End ``call`` on the wire (BYE both legs, or final response + CANCEL) and in the events."""
        if call.ended:
            return
        if call.answered:
            for role in ("caller", "carrier"):
                if role != except_leg and self._send_bye(call, role):
                    self.metrics.byes_sent[reason] += 1
        else:
            if status_to_caller is not None and not call.final_sent and call.invite is not None:
                call.final_sent = True
                self._respond(call.server_key, call.invite, status_to_caller, reason_phrase,
                              to_tag=call.to_tag)
            self._cancel_carrier(call)
        self._end_call(call, reason, initiator, sip_status, detail)

    def _end_call(self, call: Call, reason: str, initiator: str, sip_status: int | None,
                  detail: str | None) -> None:
        self.metrics.ended[reason] += 1
        call.state = CallState.ENDED
        call.ended_at = self._now
        for name in sorted(call.timers):
            self._out.append(CancelTimer(("call", call.id, name)))
        call.timers.clear()
        for leg in (call.caller, call.carrier):
            if leg.session is not None:
                leg.session.stop()
            if leg.retransmitter is not None:
                leg.retransmitter.stop()
                leg.retransmitter = None
            if leg.dialog is not None:
                self.dialogs.pop(leg.dialog.id, None)
                leg.dialog.terminate()
        if call.slot_held:
            call.slot_held = False
            self.admission.release(call.account)
        self._credit_ended(call)
        self.calls.pop(call.id, None)
        self._bury(call)
        fields: dict[str, Any] = {"reason": reason, "initiator": initiator, "sip_status": sip_status}
        if detail:
            fields["detail"] = detail[:512]
        self._emit(call.id, "call.terminated", **fields)
        if self.trace is not None:
            self._trace_end(call.id, reason, initiator, f"call ended: {reason} by {initiator}"
                            + (f", SIP {sip_status}" if sip_status else "")
                            + (f" ({detail})" if detail else ""))

    def _force_forget(self, call: Call) -> None:
        """Last resort when even the clean-up failed: drop every reference so nothing fires again."""
        for name in call.timers:
            self._out.append(CancelTimer(("call", call.id, name)))
        call.timers.clear()
        call.state = CallState.ENDED
        self.calls.pop(call.id, None)
        if self.trace is not None:
            self._trace_end(call.id, None, None, "call forgotten without an end on the wire")
        if call.slot_held:
            call.slot_held = False
            self.admission.release(call.account)
        if call.ended_at is None:
            call.ended_at = self._now
            self._credit_ended(call)

    def _sweep(self) -> None:
        """Safety net: calls that outlived every deadline they have (say after an internal error)."""
        timeout = self.cfg.timers.timeout
        grace = timeout + self.cfg.sweep_interval
        for call in list(self.calls.values()):
            self._current = call
            try:
                if not call.answered:
                    budget = (len(call.gateways) or 1) * (self.cfg.invite_timeout + timeout) \
                        + self.cfg.call_progress_timeout + grace
                    if self._now - call.created_at > budget:
                        self.stats["safety_net"] += 1
                        self._terminate(call, "response_timeout", "system", status_to_caller=408,
                                        sip_status=408, detail="safety net: call set-up never finished")
                    continue
                deadlines: list[tuple[float, str]] = []
                if call.limit_at is not None:
                    deadlines.append((call.limit_at, call.limit_reason or "max_duration_limit"))
                for leg in (call.caller, call.carrier):
                    if leg.session is not None and leg.session.expire_at is not None:
                        deadlines.append((leg.session.expire_at, "session_expired"))
                if deadlines:
                    at, reason = min(deadlines)
                    if self._now > at + grace:
                        self.stats["safety_net"] += 1
                        self._terminate(call, reason, "system", detail="safety net: deadline long past")
            except Exception as exc:
                self._log("error", f"safety net could not end call {call.id}: {exc!r}")
                self._force_forget(call)
        self._current = None
        self._expire_tombstones()
        line = self.refusals.flush(self._now)
        if line is not None:
            self._log("warning", line)

    def _bury(self, call: Call) -> None:
        """Replace an ended call by its tombstone everywhere late messages may look for it.

        The Call itself (both INVITEs, dialogs, session state, the 2xx...) is then referenced only
        by transactions that end within seconds, so it is freed instead of lingering for the whole
        ``linger`` period; the tombstone holds only what late answers need."""
        dead: dict[int, EndedAttempt] = {}
        for attempt in call.attempts:
            dead[id(attempt)] = EndedAttempt(identity_copy(attempt.invite), attempt.dest, attempt.final,
                                             attempt.cancel_sent)
        tomb = EndedCall(call.id, call.server_key, self._now, list(dead.values()), call.late_byes)
        if self.by_server_key.get(call.server_key) is call:
            self.by_server_key[call.server_key] = tomb
        for attempt in call.attempts:
            cid = attempt.invite.call_id or ""
            if self.uac_callids.get(cid) is call:
                self.uac_callids[cid] = tomb
        # The INVITE transaction stays up to 32 s after a 2xx (RFC 6026), the BYE or CANCEL that
        # ended the call a few seconds: point them at the tombstone. Refreshes, probes and relays
        # keep the Call (their handlers read its legs); they are rare at the end of a call.
        keys = [a.key for a in call.attempts if a.key is not None] + self._step_keys
        for key in keys:
            owner = self.tx_owner.get(key)
            if owner is not None and owner.call is call and owner.purpose in TOMBSTONE_PURPOSES:
                was = owner.attempt
                self.tx_owner[key] = TxOwner(tomb, owner.role, owner.purpose,
                                            dead.get(id(was)) if was is not None else None)
        old = self.ended.pop(call.id, None)
        if old is not None:
            self._forget_tombstone(old)
        self.ended[call.id] = tomb
        self._ended_queue.append(tomb)
        self._expire_tombstones()

    def _expire_tombstones(self) -> None:
        """Drop tombstones older than ``linger``; the queue is in end order, so only due ones are seen."""
        queue, limit = self._ended_queue, self._now - self.cfg.linger
        while queue and queue[0].ended_at < limit:
            tomb = queue.popleft()
            if self.ended.get(tomb.id) is tomb:
                del self.ended[tomb.id]
            self._forget_tombstone(tomb)

    def _forget_tombstone(self, tomb: EndedCall) -> None:
        if self.by_server_key.get(tomb.server_key) is tomb:
            del self.by_server_key[tomb.server_key]
        for attempt in tomb.attempts:
            cid = attempt.invite.call_id or ""
            if self.uac_callids.get(cid) is tomb:
                del self.uac_callids[cid]
