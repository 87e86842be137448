"""In-dialog requests on a live call: what is relayed to the other leg and what is answered here.

A re-INVITE or UPDATE with a session description (a re-offer) and every INFO cross to the other
leg in that leg's own dialog, and the answer maps back; one without a body is a session refresh
that concerns only its own leg and is answered here (RFC 4028 per leg). OPTIONS is answered here.
ACKs complete our 2xx (stopping its retransmission) and, for a delayed offer, carry the answer the
carrier's ACK waited for.
"""

from __future__ import annotations

from b2bua.call import Call, Leg, LegRole, Relay
from b2bua.call_setup import CallSetup
from b2bua.core_config import (
    ALLOW,
    SUPPORTED,
)
from b2bua.sip.dialog import dialog_id_for_request
from b2bua.sip.message import (
    Request,
    Response,
    SipSyntaxError,
)
from b2bua.sip.serializer import build_response
from b2bua.sip.session_timer import (
    UasDecision,
    negotiate_uas,
)
from b2bua.sip.transaction_layer import TransactionKey


class InDialogRelay(CallSetup):
    """In-dialog requests of a live call: relayed across or answered here."""

    def _on_ack(self, req: Request) -> None:
        entry = self.dialogs.get(dialog_id_for_request(req))
        if entry is None:
            return
        call, role = entry
        self._current = call
        leg = call.leg(role)
        rt = leg.retransmitter
        if rt is not None and rt.matches_ack(req):
            self._apply_rt(call, role, rt.ack_received(req, self._now))
            leg.retransmitter = None
        if role == "caller" and call.carrier_ack_waits_for_caller and call.pending_carrier_ok is not None:
            call.carrier_ack_waits_for_caller = False
            ctype = req.headers.get("Content-Type")
            self._ack(call, "carrier", call.pending_carrier_ok.cseq.num, req.body, ctype)
            if req.body:
                call.carrier.local_sdp = req.body

    def _on_in_dialog(self, req: Request, key: TransactionKey | None) -> None:
        entry = self._live_dialog(req, key)
        if entry is None:
            return
        call, role = entry
        leg, other = call.leg(role), call.other(role)
        if leg.dialog is None:
            self._respond(key, req, 481)
            return
        bad = leg.dialog.validate_request(req)
        if bad is not None:
            self._respond(key, req, bad)
            return
        if req.method == "OPTIONS":
            self._respond(key, req, 200, headers=[("Allow", ALLOW), ("Supported", SUPPORTED),
                                                   ("Contact", self._contact(leg.transport))])
            return
        if not call.answered:
            self._respond(key, req, 491 if req.method != "INFO" else 481)
            return
        decision: UasDecision | None = None
        if req.method in ("INVITE", "UPDATE"):
            try:
                decision = negotiate_uas(req, self.cfg.session)
            except SipSyntaxError as exc:
                self._respond(key, req, 400, f"Bad Request ({exc})"[:100])
                return
            if decision.mode == "reject_422":
                self._respond(key, req, 422, headers=decision.response_headers)
                return
            if req.method == "INVITE" and (leg.invite_busy or leg.retransmitter is not None):
                self._respond(key, req, 491)
                return
        relay = req.method == "INFO" or bool(req.body)
        if not relay:
            self._answer_refresh_locally(call, role, key, req, decision)
            return
        if req.max_forwards <= 0:
            self._respond(key, req, 483)
            return
        busy = req.method == "INVITE" and other.invite_busy
        if other.dialog is None or other.dialog.is_terminated or busy:
            self._respond(key, req, 491)
            return
        self._relay(call, role, key, req, decision)

    def _timer_headers(self, leg: Leg, decision: UasDecision | None) -> list[tuple[str, str]]:
        if decision is not None and decision.mode == "timer":
            return list(decision.response_headers)
        if leg.has_timer and leg.interval:
            # The refresh did not restate the timer; keep the session's terms.
            who = "uas" if leg.we_refresh else "uac"
            return [("Session-Expires", f"{leg.interval};refresher={who}"), ("Require", "timer")]
        return []

    def _answer_refresh_locally(self, call: Call, role: LegRole, key: TransactionKey | None, req: Request,
                                decision: UasDecision | None) -> None:
        leg = call.leg(role)
        headers = [("Contact", self._contact(leg.transport)), ("Allow", ALLOW), ("Supported", SUPPORTED),
                   *self._timer_headers(leg, decision)]
        if req.method == "INVITE":
            # An offer-less re-INVITE: our last description is the offer, the ACK carries the answer.
            headers.append(("Content-Type", leg.local_sdp_type))
            ok = build_response(req, 200, "OK", headers=headers, body=leg.local_sdp)
            if key is not None:
                self._send_2xx(call, role, key, ok)
        else:
            self._respond(key, req, 200, headers=headers)
        self._peer_refreshed(call, role, decision, req.method)

    def _relay(self, call: Call, role: LegRole, key: TransactionKey | None, req: Request,
               decision: UasDecision | None) -> None:
        other = call.other(role)
        assert other.dialog is not None
        headers: list[tuple[str, str]] = []
        if req.method in ("INVITE", "UPDATE") and other.has_timer and other.interval:
            who = "uac" if other.we_refresh else "uas"
            headers += [("Session-Expires", f"{other.interval};refresher={who}"), ("Supported", SUPPORTED)]
        ctype = req.headers.get("Content-Type")
        out = other.dialog.create_request(
            req.method, branch=self.layer.new_branch(), body=req.body,
            content_type=ctype if req.body else None, headers=headers,
            max_forwards=max(0, req.max_forwards - 1))
        if req.method == "INVITE":
            other.invite_busy = call.leg(role).invite_busy = True
        if req.body and req.method in ("INVITE", "UPDATE"):
            other.local_sdp, other.local_sdp_type = req.body, ctype or "application/sdp"
        ckey = self._send_request(call, other, out, "relay")
        if ckey is not None and key is not None:
            self.relays[ckey] = Relay(role, key, req, decision)

    def _on_relay_response(self, call: Call, key: TransactionKey, resp: Response) -> None:
        relay = self.relays.get(key)
        if relay is None or resp.is_provisional:
            return
        del self.relays[key]
        method = relay.request.method
        origin, other = call.leg(relay.origin), call.other(relay.origin)
        if method == "INVITE":
            origin.invite_busy = other.invite_busy = False
            if resp.is_success:
                self._ack(call, other.role, resp.cseq.num)
        if call.ended:
            return
        if not resp.is_success:
            self._respond(relay.server_key, relay.request, resp.status, resp.reason)
            return
        if method in ("INVITE", "UPDATE") and other.has_timer:
            self._we_refreshed(call, other.role, resp, method)
        headers = [("Contact", self._contact(origin.transport))]
        if method in ("INVITE", "UPDATE"):
            headers += [("Allow", ALLOW), ("Supported", SUPPORTED),
                        *self._timer_headers(origin, relay.decision)]
        ctype = resp.headers.get("Content-Type")
        if resp.body and ctype:
            headers.append(("Content-Type", ctype))
            if method in ("INVITE", "UPDATE"):
                origin.local_sdp, origin.local_sdp_type = resp.body, ctype
        if method == "INVITE":
            ok = build_response(relay.request, resp.status, resp.reason, headers=headers, body=resp.body)
            self._send_2xx(call, relay.origin, relay.server_key, ok)
        else:
            self._respond(relay.server_key, relay.request, resp.status, resp.reason, headers=headers,
                          body=resp.body)
        if method in ("INVITE", "UPDATE"):
            self._peer_refreshed(call, relay.origin, relay.decision, method)
