"""Liveness probes: in-dialog OPTIONS to legs without session timers, every
``timers.liveness_probe_interval`` seconds. Any final answer but 408/481 proves the far end still has
the dialog (``liveness.probe_succeeded``); 408, 481 or no answer ends the call
(``liveness_probe_failed``)."""

from __future__ import annotations

from b2bua.call import Call, LegRole
from b2bua.session_refresh import SessionRefresh
from b2bua.sip.message import (
    Response,
)
from b2bua.sip.transaction_layer import TransactionKey


class Liveness(SessionRefresh):
    """OPTIONS probes of legs without session timers."""

    def _send_probe(self, call: Call, role: LegRole) -> None:
        leg = call.leg(role)
        if leg.dialog is None or leg.dialog.is_terminated or leg.has_timer or leg.probe_key is not None:
            return
        req = leg.dialog.create_options(branch=self.layer.new_branch())
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"liveness probe sent on the {role} leg (OPTIONS)", role)
        leg.probe_key = self._send_request(call, leg, req, "probe")

    def _on_probe_response(self, call: Call, role: LegRole, key: TransactionKey, resp: Response) -> None:
        leg = call.leg(role)
        if resp.is_provisional or leg.probe_key != key or call.ended:
            return
        leg.probe_key = None
        if resp.status in (408, 481):
            self._probe_failed(call, role, resp.status, "status")
            return
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"liveness probe answered {resp.status} on the {role} leg: alive",
                       role)
        self._emit(call.id, "liveness.probe_succeeded", leg=role, status=resp.status,
                   **self._local_cseq(call, role))
        if not leg.has_timer:
            self._arm(call, f"probe:{role}", self._now + self.cfg.liveness_probe_interval)

    def _probe_failed(self, call: Call, role: LegRole, status: int | None, cause: str) -> None:
        if call.ended:
            return
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"liveness probe failed on the {role} leg: {status or cause}",
                       role)
        self._emit(call.id, "liveness.probe_failed", leg=role, status=status, cause=cause,
                   **self._local_cseq(call, role))
        self._terminate(call, "liveness_probe_failed", "system", sip_status=status,
                        detail=f"OPTIONS to the {role} leg: {status or cause}")
