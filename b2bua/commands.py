"""The pipeline's commands to this node (``call.terminate``, ``call.takeover``, ``call.release``),
each applied once per ``command_id``.

``call.terminate`` ends a call of ours like any enforced limit. ``call.takeover`` ends a lost node's
call as that node's dialog (``takeover.py`` builds the BYEs) and reports the outcome as the call's
``call.terminated``, once per call. ``call.release`` forgets a call another node took over while we
were cut off, sending nothing.
"""

from __future__ import annotations

from typing import Any

from b2bua.core_config import (
    END_REASONS,
)
from b2bua.sip.message import (
    SipSyntaxError,
)
from b2bua.takeover import LEGS, Takeover, destination_of, reason_header
from b2bua.termination import Termination
from schemas.validation import ContractError, validate_command


class Commands(Termination):
    """The pipeline's terminate, takeover and release commands."""

    def _on_command(self, cmd: dict[str, Any]) -> None:
        ours = isinstance(cmd, dict) and cmd.get("node") == self.cfg.node_id
        ctype = cmd.get("type") if ours else None
        if ctype not in ("call.terminate", "call.takeover", "call.release"):
            self.stats["commands_ignored"] += 1
            return
        command_id = str(cmd.get("command_id") or "")
        if command_id and command_id in self._commands_seen:
            self.stats["commands_ignored"] += 1
            return
        if command_id:
            self._commands_seen[command_id] = None
            while len(self._commands_seen) > 10_000:
                self._commands_seen.popitem(last=False)
        if ctype == "call.takeover":
            self._on_takeover(cmd)
            return
        if ctype == "call.release":
            self._on_release(cmd)
            return
        call = self.calls.get(str(cmd.get("call_id") or ""))
        if call is None or call.ended:
            self.stats["commands_ignored"] += 1
            self._log("info", f"terminate command for unknown/finished call {cmd.get('call_id')!r} ignored")
            return
        self._current = call
        reason = cmd.get("reason")
        if reason not in END_REASONS:
            reason = "pipeline_terminate"
        self.stats["commands_applied"] += 1
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"terminate command {command_id} from {cmd.get('issued_by', '?')} "
                       f"obeyed ({reason}): BYE on both legs")
        self._terminate(call, str(reason), "system", status_to_caller=503, sip_status=None,
                        detail=f"command {command_id} from {cmd.get('issued_by', '?')}")

    def _on_takeover(self, cmd: dict[str, Any]) -> None:
        """A lost node's call: BYE on both legs as its dialog, then report the outcome as the call's
        call.terminated (with the seq the pipeline gave). Once per call, whatever repeats the command."""
        try:
            validate_command(cmd)
        except ContractError as exc:
            self.stats["commands_ignored"] += 1
            self._log("warning", f"takeover command refused: {exc}")
            return
        call_id = cmd["call_id"]
        if call_id in self.taken_over or call_id in self.calls:
            self.stats["commands_ignored"] += 1
            return
        t = Takeover(call_id, cmd["command_id"], cmd["dead_node"], int(cmd["seq"]), sent=self._ts(self._now))
        self.taken_over[call_id] = t
        while len(self.taken_over) > 100_000:
            self.taken_over.popitem(last=False)
        self.stats["takeovers"] += 1
        self._log("warning", f"taking over call {call_id} of lost node {cmd['dead_node']}: BYE on both legs")
        reason = reason_header(cmd["dead_node"], self.cfg.node_id)
        trace = self.trace
        selected = trace.select("") if trace is not None else None
        if trace is not None and selected is not None:
            tt = trace.start(call_id, "", selected, self._now)
            for role in LEGS:
                trace.bind(tt, str(cmd["dialogs"][role].get("call_id") or ""), role)
            trace.memo(call_id, self._now, f"takeover of call {call_id} of lost node {cmd['dead_node']} "
                       f"(command {cmd['command_id']}): BYE on both legs as its dialogs")
        for role in LEGS:
            state = cmd["dialogs"][role]
            try:
                dest = destination_of(state)
                req = t.bye(role, state, branch=self.layer.new_branch(),
                            local_contact=self._contact(state["transport"]), via_sent_by=self.sent_by,
                            reason=reason)
            except (ValueError, SipSyntaxError) as exc:
                self._log("warning", f"takeover of {call_id}: no BYE on the {role} leg ({exc})")
                t.not_sent(role)
                continue
            key, actions = self.layer.send_request(req, self._now, reliable=dest.transport == "tcp")
            if key is None:
                t.not_sent(role)
                continue
            self.tx_dest[key] = dest
            self.takeover_tx[key] = (t, role)
            self._apply(actions, dest)
        self._takeover_done(t)

    def _takeover_answered(self, t: Takeover, role: str, status: int | None) -> None:
        t.answered(role, status)
        self._takeover_done(t)

    def _takeover_done(self, t: Takeover) -> None:
        if not t.done or self.taken_over.get(t.call_id) is not t:
            return
        self.taken_over[t.call_id] = None  # reported: later repeats of the command find it done
        legs = ", ".join(f"{r} {v['outcome']}" + (f" ({v['status']})" if v["status"] else "")
                         for r, v in t.report()["legs"].items())
        self._log("warning", f"call {t.call_id} of lost node {t.dead_node} ended: {legs}")
        self._emit(t.call_id, "call.terminated", seq=t.seq, reason="orphaned", initiator="system",
                   sip_status=None, takeover=t.report())
        if self.trace is not None:
            self._trace_end(t.call_id, "orphaned", "system", f"takeover done: {legs}")

    def _on_release(self, cmd: dict[str, Any]) -> None:
        """A call another node took over while we were cut off: forget it, sending nothing (its legs
        were ended by that node; a BYE or refresh from us now would only meet 481s)."""
        call = self.calls.get(str(cmd.get("call_id") or ""))
        if call is None or call.ended:
            self.stats["commands_ignored"] += 1
            return
        self.stats["releases"] += 1
        self._log("warning", f"call {call.id} was taken over by {cmd.get('taken_over_by')}: released")
        if self.trace is not None:
            self._trace_end(call.id, "orphaned", "system", f"released: the call was taken over by "
                            f"{cmd.get('taken_over_by')} while this node was cut off; nothing sent")
        for role in LEGS:
            dialog = call.leg(role).dialog
            if dialog is not None:
                self.dialogs.pop(dialog.id, None)
                dialog.terminate()  # its session timer too: nothing may fire for it again
        self._force_forget(call)
