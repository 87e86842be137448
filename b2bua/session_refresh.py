"""RFC 4028 session timers per leg, on top of ``sip/session_timer.py``: the refreshes we send when
we are a leg's refresher, the refreshes the peers send us, and the end of a session nobody refreshed.

Each leg has its own ``SessionTimer`` (its interval and refresher negotiated on that leg alone).
Its deadlines are call timers named ``st:<leg>``. A refresh that fails (408/481, a timeout) or an
expiry without refresh ends the call (``session_refresh_failed`` / ``session_expired``) and says so
in a ``session.refresh_failed`` event; a successful one says ``session.refreshed``.
"""

from __future__ import annotations

from b2bua.call import Call, LegRole
from b2bua.core_config import (
    SUPPORTED,
)
from b2bua.relay import InDialogRelay
from b2bua.sip.message import (
    Response,
    SipSyntaxError,
    parse_session_expires,
)
from b2bua.sip.session_timer import (
    SessionTimer,
    UasDecision,
)
from b2bua.sip.transaction_layer import TransactionKey


class SessionRefresh(InDialogRelay):
    """RFC 4028 refreshes and expiries, per leg."""

    def _schedule_session(self, call: Call, role: LegRole) -> None:
        leg = call.leg(role)
        deadline = leg.session.next_deadline if leg.session is not None else None
        name = f"st:{role}"
        if deadline is None or call.ended:
            self._disarm(call, name)
        else:
            self._arm(call, name, deadline)

    def _peer_refreshed(self, call: Call, role: LegRole, decision: UasDecision | None, method: str) -> None:
        """We answered a refresh (or re-offer) from the peer of ``role`` with a 2xx."""
        leg = call.leg(role)
        if decision is not None and decision.mode == "timer" and decision.interval:
            we = decision.refresher == "uas"
            if leg.session is None:
                leg.session = SessionTimer.from_config(decision.interval, we, self.cfg.session)
                leg.session.start(self._now)
                leg.timer_mode = "timer"
                self._disarm(call, f"probe:{role}")
            else:
                leg.session.refreshed(self._now, decision.interval, we)
            leg.interval = decision.interval
        elif leg.session is not None:
            leg.session.refreshed(self._now)
        else:
            return
        self._schedule_session(call, role)
        self._emit_refreshed(call, role, method)
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"refresh received on the {role} leg ({method}): session "
                       f"{leg.interval} s, refresher {'b2bua' if leg.we_refresh else 'peer'}", role)

    def _we_refreshed(self, call: Call, role: LegRole, resp: Response, method: str) -> None:
        """Our refresh (or relayed re-offer) on ``role`` got a 2xx."""
        leg = call.leg(role)
        if leg.session is None:
            return
        interval, we = leg.interval, leg.we_refresh
        value = resp.headers.get("Session-Expires")
        if value is not None:
            try:
                se = parse_session_expires(value)
                interval = se.delta or interval
                we = se.refresher != "uas"  # we sent the request: "uac" is us
            except SipSyntaxError:
                pass
        leg.interval = interval
        leg.session.refreshed(self._now, interval, we)
        self._schedule_session(call, role)
        self._emit_refreshed(call, role, method)
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"refresh on the {role} leg ({method}) answered {resp.status}: "
                       f"session {interval} s", role)

    def _emit_refreshed(self, call: Call, role: LegRole, method: str) -> None:
        leg = call.leg(role)
        if not leg.interval:
            return
        self.metrics.refreshes[(role, "ok")] += 1
        extra = self._local_cseq(call, role)
        if leg.dialog is not None:
            extra["remote_target"] = leg.dialog.remote_target  # a re-INVITE or UPDATE may move it
        self._emit(call.id, "session.refreshed", leg=role, method=method if method == "UPDATE" else "INVITE",
                   session_expires=int(leg.interval), expires_at=self._ts(self._now + leg.interval), **extra)

    def _on_session_timer(self, call: Call, role: LegRole) -> None:
        leg = call.leg(role)
        if leg.session is None:
            return
        event = leg.session.fire(self._now)
        if event == "refresh":
            self._send_refresh(call, role)
            self._schedule_session(call, role)
        elif event == "expire":
            if leg.refresh_key is not None:
                self._refresh_failed(call, role, leg.refresh_method, None, "timeout")
            elif leg.we_refresh:
                self._refresh_failed(call, role, leg.refresh_method, None, "expired")
            else:
                if (trace := self._traced(call.id)) is not None:
                    trace.memo(call.id, self._now, f"session of the {role} leg expired: no refresh from "
                               f"the peer within {leg.interval} s", role)
                self.metrics.refreshes[(role, "expired")] += 1
                self._emit(call.id, "session.refresh_failed", leg=role, method=None, status=None,
                           cause="expired", **self._local_cseq(call, role))
                self._terminate(call, "session_expired", "system", detail=f"no refresh from the {role} leg")
        else:
            self._schedule_session(call, role)

    def _send_refresh(self, call: Call, role: LegRole) -> None:
        leg = call.leg(role)
        if leg.dialog is None or leg.dialog.is_terminated or leg.refresh_key is not None:
            return
        method = "UPDATE" if self.cfg.refresh_method == "update" and leg.allows_update else "INVITE"
        if method == "INVITE" and (leg.invite_busy or leg.retransmitter is not None):
            # An INVITE transaction is open on this leg (glare); the relayed one refreshes it anyway.
            return
        headers = [("Session-Expires", f"{leg.interval};refresher=uac"), ("Supported", SUPPORTED),
                   ("Min-SE", str(self.cfg.session.min_se))]
        branch = self.layer.new_branch()
        if method == "UPDATE":
            req = leg.dialog.create_update(branch=branch, content_type=None, headers=headers)
        else:
            req = leg.dialog.create_reinvite(branch=branch, body=leg.local_sdp,
                                             content_type=leg.local_sdp_type if leg.local_sdp else None,
                                             headers=headers)
            leg.invite_busy = True
        leg.refresh_method = method
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"refresh sent on the {role} leg ({method}, Session-Expires "
                       f"{leg.interval})", role)
        leg.refresh_key = self._send_request(call, leg, req, "refresh")

    def _on_refresh_response(self, call: Call, role: LegRole, key: TransactionKey, resp: Response) -> None:
        leg = call.leg(role)
        if resp.is_provisional:
            return
        method = leg.refresh_method or resp.cseq.method
        if resp.cseq.method == "INVITE":
            leg.invite_busy = False
            if resp.is_success:
                self._ack(call, role, resp.cseq.num)
        if leg.refresh_key != key or call.ended:
            return
        leg.refresh_key = None
        status = resp.status
        if resp.is_success:
            self._we_refreshed(call, role, resp, method)
        elif status in (408, 481):
            self._refresh_failed(call, role, method, status, "status")
        elif status == 422 and leg.interval:
            value = resp.headers.get("Min-SE")
            if value and value.partition(";")[0].strip().isdigit():
                leg.interval = max(leg.interval, int(value.partition(";")[0].strip()))
                self._send_refresh(call, role)
        elif status in (405, 501) and method == "UPDATE":
            leg.allows_update = False
            self._send_refresh(call, role)

    def _refresh_failed(self, call: Call, role: LegRole, method: str | None, status: int | None,
                        cause: str) -> None:
        if call.ended:
            return
        self.metrics.refreshes[(role, cause)] += 1
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"refresh failed on the {role} leg: {method or 'refresh'} "
                       f"{status or cause}", role)
        self._emit(call.id, "session.refresh_failed", leg=role,
                   method=method if method in ("INVITE", "UPDATE") else None, status=status, cause=cause,
                   **self._local_cseq(call, role))
        self._terminate(call, "session_refresh_failed", "system", sip_status=status,
                        detail=f"{method or 'refresh'} on the {role} leg: {status or cause}")
