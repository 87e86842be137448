"""Setting a call up: the caller's INVITE, admission, routing, the attempts towards the carriers with
failover, the provisional responses, the answer, and CANCEL before it.

Admission decides first (8.2.1: authentication comes before the request's own checks); then the
route's gateways are tried in order, each attempt its own INVITE client transaction (a 422 retry
reuses the attempt with a new CSeq). An attempt that gets no answer in time or a failure that
``routing.should_fail_over`` lets through moves on to the next gateway. The carrier's 2xx is ACKed,
our own 2xx goes to the caller (retransmitted until its ACK), and both legs' session timers,
probes and duration limit are armed. Late answers of attempts given up on get ACK and BYE.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from b2bua.actions import Address, Send
from b2bua.admission import Admit, Challenge, Refuse
from b2bua.call import Attempt, Call, CallState, EndedAttempt, EndedCall, Leg
from b2bua.call_events import format_ts
from b2bua.core_config import (
    ALLOW,
    SUPPORTED,
)
from b2bua.core_state import (
    TxOwner,
    callee_of,
    refresher_label,
    user_of,
)
from b2bua.credit import CREDIT_GUARD_S, Credit
from b2bua.credit_book import Grant
from b2bua.routing import should_fail_over
from b2bua.sip.dialog import Dialog
from b2bua.sip.message import (
    Headers,
    Request,
    Response,
    SipSyntaxError,
    identity_copy,
    parse_name_addr,
    parse_session_expires,
    parse_token_list,
    parse_uri,
)
from b2bua.sip.serializer import build_response
from b2bua.sip.session_timer import (
    SessionTimer,
    UacNegotiation,
    UasDecision,
    negotiate_uas,
    supports_timer,
)
from b2bua.sip.transaction import (
    build_ack_for_non2xx,
    build_cancel,
)
from b2bua.sip.transaction_layer import TransactionKey
from b2bua.takeover import dialog_state

# limit_source -> the end reason the limit timer ends the call with.
_LIMIT_REASON = {"max_call_duration": "max_duration_limit", "no_timer_max_duration": "no_timer_limit",
                 "credit_limit": "credit_limit"}


class CallSetup(Credit):
    """The caller's INVITE to the answer (or the failure) on both legs."""

    def _on_initial_invite(self, req: Request, key: TransactionKey | None) -> None:
        source = self._source or Address("0.0.0.0", 0)
        if key is not None and key in self.by_server_key:
            return  # a retransmission that outlived its transaction: the call exists already
        if req.max_forwards <= 0:
            self._respond(key, req, 483)
            return
        try:
            decision = negotiate_uas(req, self.cfg.session)
        except SipSyntaxError as exc:
            self._respond(key, req, 400, f"Bad Request ({exc})"[:100])
            return
        verdict = self.admission.identify(source.host, req.call_id or "", "INVITE",
                                          req.headers.get("Authorization"), self._now, req.uri)
        if isinstance(verdict, Challenge):
            # An intermediate step of a normal call set-up: no events, billing only sees the retry.
            self.stats["challenged"] += 1
            self._respond(key, req, 401, headers=[("WWW-Authenticate", v) for v in verdict.www_authenticate])
            return
        if isinstance(verdict, Refuse):
            if verdict.record:
                self._refuse(req, key, verdict, decision, source)
            else:
                self._refuse_unadmitted(req, key, verdict, source)
            return
        assert isinstance(verdict, Admit)
        account = verdict.account
        bad = self._conformance(req, with_method=False)
        if bad is not None:
            self._reject(key, req, bad)
            return
        if decision.mode == "reject_422":
            self._respond(key, req, 422, headers=decision.response_headers)
            return
        # Prepaid: priced before the concurrency slot is taken, so a refusal holds nothing.
        credit = self._authorize_credit(account, callee_of(req) or "unknown", decision)
        if isinstance(credit, Refuse):
            self._refuse(req, key, credit, decision, source, account=account.name)
            return
        refusal = self.admission.acquire(account)
        if refusal is not None:
            self._refuse(req, key, refusal, decision, source, account=account.name)
            return
        if key is None:  # pragma: no cover - an INVITE always has a server transaction
            self.admission.release(account)
            return
        call = self._create_call(req, key, account, decision, source, credit)
        self._current = call
        route = self.routes.lookup(call.callee)
        if route is None:
            self._terminate(call, "no_route", "system", status_to_caller=404, reason_phrase="No Route",
                            sip_status=404, detail=f"no route for {call.callee}")
            return
        call.prefix, call.gateways = route.prefix, route.gateways
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"route: prefix {route.prefix!r} for {call.callee}, gateways "
                       f"{', '.join(g.name for g in route.gateways)} (account {account.name})")
        first = self._route_gateways(call, -1)  # gateways known down are skipped (gateway_probes.py)
        if first is None:
            self._all_gateways_down(call)
            return
        call.gateway_index = first
        self._start_attempt(call)

    def _setup_fields(self, req: Request, account: str, source: Address) -> dict[str, Any]:
        se_value = req.headers.get("Session-Expires")
        min_se = req.headers.get("Min-SE")
        requested_se = requested_ref = requested_min = None
        try:
            if se_value is not None:
                se = parse_session_expires(se_value)
                requested_se, requested_ref = (se.delta or None), se.refresher
            if min_se is not None:
                requested_min = int(min_se.partition(";")[0].strip()) or None
        except (SipSyntaxError, ValueError):
            pass
        return {
            "caller": user_of(req.headers.get("From"))[:128],
            "callee": (callee_of(req) or "unknown")[:128],
            "account": (account or "unknown")[:64],
            "source_ip": source.host[:64],
            "timer_supported": se_value is not None or supports_timer(req),
            "requested_session_expires": requested_se,
            "requested_min_se": requested_min,
            "requested_refresher": requested_ref,
        }

    def _refuse_unadmitted(self, req: Request, key: TransactionKey | None, refusal: Refuse,
                           source: Address) -> None:
        """Refused traffic of no admitted account: answered and counted, never written as a call."""
        self.stats["refused_unadmitted"] += 1
        self._respond(key, req, refusal.status, refusal.reason_phrase)
        line = self.refusals.count(source.host, refusal.cause or "refused", self._now)
        if line is not None:
            self._log("warning", line)

    def _refuse(self, req: Request, key: TransactionKey | None, refusal: Refuse, decision: UasDecision,
                source: Address, account: str = "") -> None:
        """A final refusal of an account is billing-relevant (fraud, capacity): it gets a setup and a
        terminated event, and keeps its transaction so a retransmission is not refused (and billed)
        twice."""
        self._keep_tx = True
        self.stats["refused"] += 1
        self._respond(key, req, refusal.status, refusal.reason_phrase)
        call_id = self._new_call_id()
        trace = self.trace
        selected = trace.select(refusal.account or account) if trace is not None else None
        if trace is not None and selected is not None:
            trace.start(call_id, refusal.account or account, selected, self._now, req.call_id, req)
            self._trace_end(call_id, refusal.end_reason, "system",
                            f"refused: {refusal.status} ({refusal.end_reason}: {refusal.detail})")
        self._emit(call_id, "call.setup", **self._setup_fields(req, refusal.account or account, source))
        self._emit(call_id, "call.terminated", reason=refusal.end_reason, initiator="system",
                   sip_status=refusal.status, detail=refusal.detail[:512])
        self._log("info", f"refused INVITE from {source}: {refusal.status} {refusal.detail}")

    def _create_call(self, req: Request, key: TransactionKey, account: Any, decision: UasDecision,
                     source: Address, credit: Grant | None = None) -> Call:
        self.stats["calls"] += 1
        to_tag = self.layer.new_tag()
        caller = Leg("caller", source.transport, peer_source=source)
        caller.allows_update = "update" in parse_token_list(req.headers.get_all("Allow"))
        caller.dialog = Dialog.uas_from_request(req, to_tag, local_contact=self._contact(source.transport),
                                                via_sent_by=self.sent_by,
                                                transport=sys.intern(source.transport.upper()))
        call = Call(
            id=self._new_call_id(), account=account, caller_user=user_of(req.headers.get("From")),
            callee=callee_of(req), source=source, created_at=self._now, invite=req, invite_cseq=req.cseq.num,
            server_key=key,
            to_tag=to_tag, caller=caller, carrier=Leg("carrier", "udp"), uas_decision=decision,
        )
        self.calls[call.id] = call
        self.by_server_key[key] = call
        self.dialogs[caller.dialog.id] = (call, "caller")
        trace = self.trace
        if trace is not None and (selected := trace.select(account.name)) is not None:
            trace.start(call.id, account.name, selected, self._now, req.call_id, req)
        fields = self._setup_fields(req, account.name, source)
        if credit is not None:
            fields["credit"] = credit.fields()
            self._hold_credit(call, credit)
        self._emit(call.id, "call.setup", **fields)
        return call

    def _start_attempt(self, call: Call) -> None:
        gw = call.gateways[call.gateway_index]
        transport = gw.transport
        negotiation = UacNegotiation(self.cfg.session)
        invite = self._carrier_invite(call, gw.host, gw.port, transport, negotiation)
        attempt = Attempt(len(call.attempts) + 1, gw, invite, None, Address(gw.host, gw.port, transport),
                          negotiation)
        call.attempts.append(attempt)
        call.attempt = attempt
        call.carrier = Leg("carrier", transport, local_sdp=invite.body,
                           local_sdp_type=invite.headers.get("Content-Type") or "application/sdp")
        self.uac_callids[invite.call_id or ""] = call
        if (trace := self._traced(call.id)) is not None:
            trace.bind(trace.traces[call.id], invite.call_id or "", "carrier")
            trace.memo(call.id, self._now, f"attempt {attempt.number} of {len(call.gateways)}: gateway "
                       f"{gw.name} (vendor {gw.vendor or gw.name}) at {attempt.dest}", "carrier")
        self._emit(call.id, "call.routed", vendor=(gw.vendor or gw.name)[:64],
                   gateway=f"{gw.host}:{gw.port}"[:128], prefix=call.prefix[:32], attempt=attempt.number)
        self._send_attempt(call, attempt)

    def _carrier_invite(self, call: Call, host: str, port: int, transport: str,
                        negotiation: UacNegotiation) -> Request:
        tparam = ";transport=tcp" if transport == "tcp" else ""
        uri = f"sip:{call.callee}@{host}:{port}{tparam}"
        src = call.invite
        assert src is not None  # attempts are made before the answer only
        h = Headers()
        h.add("Via", f"SIP/2.0/{transport.upper()} {self.sent_by};branch={self.layer.new_branch()};rport")
        h.add("Max-Forwards", str(max(0, src.max_forwards - 1)))
        from_user = call.caller_user or "anonymous"
        h.add("From", f"<sip:{from_user}@{self.cfg.local_host}>;tag={self.layer.new_tag()}")
        h.add("To", f"<sip:{call.callee}@{host}:{port}>")
        h.add("Call-ID", f"{self.layer.rng.getrandbits(96):024x}@{self.cfg.local_host}")
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact(transport))
        h.add("Allow", ALLOW)
        ctype = src.headers.get("Content-Type")
        if src.body and ctype:
            h.add("Content-Type", ctype)
        req = Request("INVITE", uri, h, src.body)
        negotiation.apply_to(req)
        return req

    def _send_attempt(self, call: Call, attempt: Attempt) -> None:
        key, actions = self.layer.send_request(attempt.invite, self._now,
                                               reliable=attempt.dest.transport == "tcp")
        assert key is not None
        attempt.key = key
        self.tx_dest[key] = attempt.dest
        self.tx_owner[key] = TxOwner(call, "carrier", "invite", attempt)
        self._disarm(call, "progress")
        self._arm(call, "invite_timeout", self._now + self.cfg.invite_timeout)
        self._apply(actions)

    def _retry_422(self, call: Call, attempt: Attempt) -> None:
        old = attempt.invite
        h = Headers()
        for name, value in old.headers:
            if name == "Via":
                value = f"SIP/2.0/{attempt.dest.transport.upper()} {self.sent_by};" \
                        f"branch={self.layer.new_branch()};rport"
            elif name == "CSeq":
                value = f"{old.cseq.num + 1} INVITE"
            h.add(name, value)
        invite = Request("INVITE", old.uri, h, old.body)
        attempt.negotiation.apply_to(invite)
        attempt.invite = invite
        attempt.provisional = attempt.final = False
        self._send_attempt(call, attempt)

    def _on_carrier_invite_response(self, call: Call | EndedCall, attempt: Attempt | EndedAttempt,
                                    resp: Response) -> None:
        status = resp.status
        if isinstance(attempt, Attempt):  # an ended call's attempt no longer knows its gateway
            self._gateway_invite_answered(attempt.gateway, status)
        if (not isinstance(call, Call) or not isinstance(attempt, Attempt) or attempt is not call.attempt
                or attempt.abandoned or call.ended):
            self._on_late_invite_response(call, attempt, resp)
            return
        if attempt.final:
            if resp.is_success:
                self._on_2xx_again(call, attempt, resp)
            return
        if status < 200:
            attempt.provisional = True
            self._disarm(call, "invite_timeout")
            if "progress" not in call.timers:
                self._arm(call, "progress", self._now + self.cfg.call_progress_timeout)
            if status > 100:
                self._relay_provisional(call, resp)
            return
        attempt.final = True
        self._disarm(call, "invite_timeout")
        self._disarm(call, "progress")
        if status < 300:
            self._on_carrier_answer(call, attempt, resp)
            return
        if status == 422 and attempt.negotiation.on_422(resp):
            if (trace := self._traced(call.id)) is not None:
                trace.memo(call.id, self._now, f"{attempt.gateway.name} wants a longer session (422, Min-SE "
                           f"{resp.headers.get('Min-SE')}): INVITE again", "carrier")
            self._retry_422(call, attempt)
            return
        if should_fail_over(status) and (nxt := self._route_gateways(call, call.gateway_index)) is not None:
            self._attempt_failed(call, attempt, f"{status} {resp.reason}".rstrip())
            call.gateway_index = nxt
            self._start_attempt(call)
            return
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"attempt {attempt.number} to {attempt.gateway.name} failed: "
                       f"{status} {resp.reason}".rstrip() + ("; no gateway left" if should_fail_over(status)
                                                         else "; not a failover status"), "carrier")
        reason = "busy" if status in (486, 600) else "rejected"
        self._terminate(call, reason, "callee", status_to_caller=status, reason_phrase=resp.reason,
                        sip_status=status)

    def _on_late_invite_response(self, call: Call | EndedCall, attempt: Attempt | EndedAttempt,
                                 resp: Response) -> None:
        if resp.is_provisional:
            if resp.status > 100 and not attempt.cancel_sent and not attempt.final:
                self._send_cancel(call, attempt)  # the CANCEL had to wait for a provisional (9.1)
            return
        attempt.final = True
        if resp.is_success:
            self._ack_and_bye(call, attempt, resp)

    def _on_2xx_again(self, call: Call, attempt: Attempt, resp: Response) -> None:
        """A retransmitted 2xx needs our ACK again; a 2xx from another fork gets ACK and BYE."""
        leg = call.carrier
        if leg.dialog is not None and leg.dialog.matches(resp):
            if leg.last_ack is not None and leg.last_ack_cseq == resp.cseq.num:
                self._out.append(Send(leg.last_ack, self._leg_dest(leg)))
        else:
            self._ack_and_bye(call, attempt, resp)

    def _ack_and_bye(self, call: Call | EndedCall, attempt: Attempt | EndedAttempt, resp: Response) -> None:
        tmp = self._uac_dialog(attempt.invite, resp, attempt.dest.transport)
        leg = Leg("carrier", attempt.dest.transport, dialog=tmp)
        ack = tmp.create_ack(branch=self.layer.new_branch())
        self._send(ack, self._leg_dest(leg))
        marker = f"{resp.call_id}|{resp.to.tag or ''}"
        if marker in call.late_byes:
            return
        call.late_byes.add(marker)
        bye = tmp.create_bye(branch=self.layer.new_branch())
        self._send_request(call, leg, bye, "late_bye")
        tmp.terminate()

    def _uac_dialog(self, invite: Request, resp: Response, transport: str) -> Dialog:
        return Dialog.uac_from_response(invite, resp, local_contact=self._contact(transport),
                                        via_sent_by=self.sent_by, transport=sys.intern(transport.upper()))

    def _send_cancel(self, call: Call | EndedCall, attempt: Attempt | EndedAttempt) -> None:
        attempt.cancel_sent = True
        cancel = build_cancel(attempt.invite)
        key, actions = self.layer.send_request(cancel, self._now, reliable=attempt.dest.transport == "tcp")
        if key is not None:
            self.tx_dest[key] = attempt.dest
            self.tx_owner[key] = TxOwner(call, "carrier", "cancel", attempt)
            self._step_keys.append(key)
        self._apply(actions)

    def _cancel_carrier(self, call: Call) -> None:
        attempt = call.attempt
        if attempt is None or attempt.final or attempt.abandoned:
            return
        attempt.abandoned = True
        if attempt.provisional and not attempt.cancel_sent:
            self._send_cancel(call, attempt)

    def _relay_provisional(self, call: Call, resp: Response) -> None:
        leg = call.carrier
        attempt = call.attempt
        if resp.to.tag and leg.dialog is None and attempt is not None:
            try:
                leg.dialog = self._uac_dialog(attempt.invite, resp, leg.transport)
                self.dialogs[leg.dialog.id] = (call, "carrier")
            except ValueError:
                pass
        if call.final_sent:
            return
        headers: list[tuple[str, str]] = [("Contact", self._contact(call.caller.transport))]
        ctype = resp.headers.get("Content-Type")
        if resp.body and ctype:
            headers.append(("Content-Type", ctype))
        assert call.invite is not None  # not final_sent: not answered
        self._respond(call.server_key, call.invite, resp.status, resp.reason, headers=headers, body=resp.body,
                      to_tag=call.to_tag)
        if resp.status in (180, 181, 182, 183) and not call.progress_emitted:
            call.progress_emitted = True
            self._emit(call.id, "call.progress", status=resp.status)

    def _on_carrier_answer(self, call: Call, attempt: Attempt, resp: Response) -> None:
        leg = call.carrier
        if leg.dialog is not None:
            self.dialogs.pop(leg.dialog.id, None)
        leg.dialog = self._uac_dialog(attempt.invite, resp, leg.transport)
        self.dialogs[leg.dialog.id] = (call, "carrier")
        leg.allows_update = "update" in parse_token_list(resp.headers.get_all("Allow"))
        try:
            result = attempt.negotiation.on_2xx(resp)
        except SipSyntaxError:
            result = None
        if result is not None and result.mode == "timer" and result.interval:
            leg.timer_mode, leg.interval = "timer", result.interval
            leg.session = SessionTimer.from_config(result.interval, result.we_refresh, self.cfg.session)
        invite = call.invite
        assert invite is not None  # the answer comes once (attempt.final guards it)
        if not invite.body and resp.body:
            # Delayed offer: the carrier's 2xx holds the offer, the caller's ACK will hold the answer.
            call.carrier_ack_waits_for_caller = True
            call.pending_carrier_ok = resp
        else:
            self._ack(call, "carrier", resp.cseq.num)

        caller = call.caller
        decision = call.uas_decision
        if decision.mode == "timer" and decision.interval:
            caller.timer_mode, caller.interval = "timer", decision.interval
            caller.session = SessionTimer.from_config(decision.interval, decision.we_refresh,
                                                      self.cfg.session)
        headers: list[tuple[str, str]] = [("Contact", self._contact(caller.transport)), ("Allow", ALLOW),
                                          ("Supported", SUPPORTED), *decision.response_headers]
        ctype = resp.headers.get("Content-Type")
        if resp.body and ctype:
            headers.append(("Content-Type", ctype))
            caller.local_sdp, caller.local_sdp_type = resp.body, ctype
        if caller.dialog is not None:
            caller.dialog.confirm()
        call.final_sent = True
        call.state = CallState.ANSWERED
        call.answered_at = self._now
        self.metrics.setup_latency.observe(self._now - call.created_at)
        ok = build_response(invite, 200, "OK", to_tag=call.to_tag, headers=headers, body=resp.body)
        self._send_2xx(call, "caller", call.server_key, ok)
        # What a held call keeps is what it costs (issue 16: 10,000 calls up): the caller's INVITE is
        # not needed any more, and of the carrier INVITE late answers need only its identity.
        call.invite = None
        attempt.invite = identity_copy(attempt.invite)

        for role in ("caller", "carrier"):
            lg = call.leg(role)
            if lg.session is not None:
                lg.session.start(self._now)
                self._schedule_session(call, role)
            elif self.cfg.liveness_probe_interval > 0:
                self._arm(call, f"probe:{role}", self._now + self.cfg.liveness_probe_interval)
        limit, source = self._limit_for(call)
        if limit is not None:
            call.limit_at = self._now + limit - (CREDIT_GUARD_S if source == "credit_limit" else 0.0)
            call.limit_reason = _LIMIT_REASON[source]
            self._arm(call, "limit", call.limit_at)
        if (trace := self._traced(call.id)) is not None:
            self._memo_answer(trace, call, attempt, limit, source)
        self._emit(
            call.id, "call.answered",
            timer_mode="session_timer" if caller.has_timer else "no_timer",
            session_expires=caller.interval if caller.has_timer else None,
            refresher={r: refresher_label(call.leg(r)) for r in ("caller", "carrier")},
            effective_limit_s=limit, limit_source=source, **self._dialogs_of(call),
        )

    def _dialogs_of(self, call: Call) -> dict[str, Any]:
        """``dialogs`` for call.answered: what a surviving node needs to end this call if we die."""
        out: dict[str, Any] = {}
        for role in ("caller", "carrier"):
            leg = call.leg(role)
            if leg.dialog is None:
                return {}
            try:
                out[role] = dialog_state(leg.dialog, self._takeover_dest(leg))
            except ValueError:
                return {}
        return {"dialogs": out}

    def _takeover_dest(self, leg: Leg) -> Address:
        """Where another node reaches this leg: our own next hop, except a TCP caller's connection,
        which dies with us; its Contact (or first route) is where it can be reached anew."""
        if leg.role == "caller" and leg.transport == "tcp" and leg.dialog is not None:
            d = leg.dialog
            try:
                uri = parse_name_addr(d.route_set[0]).uri if d.route_set else parse_uri(d.remote_target)
                return Address(uri.host, uri.port or 5060, "tcp")
            except SipSyntaxError:
                pass
        return self._leg_dest(leg)

    def _limit_for(self, call: Call) -> tuple[int | None, str]:
        options: list[tuple[int, str]] = []
        if self.cfg.max_call_duration > 0:
            options.append((self.cfg.max_call_duration, "max_call_duration"))
        if not call.caller.has_timer and self.cfg.no_timer_max_duration > 0:
            options.append((self.cfg.no_timer_max_duration, "no_timer_max_duration"))
        if call.credit is not None and call.credit.limit_ms is not None:
            options.append((call.credit.limit_ms // 1000, "credit_limit"))  # whole seconds (tariff/credit.py)
        if not options:
            return None, "none"
        return min(options)

    def _attempt_failed(self, call: Call, attempt: Attempt, why: str) -> None:
        trace = self._traced(call.id)
        if trace is not None:
            trace.failed_over(call.id)
            nxt = call.gateways[call.gateway_index + 1]
            trace.memo(call.id, self._now, f"attempt {attempt.number} to {attempt.gateway.name} failed: "
                       f"{why}; failing over to {nxt.name}", "carrier")

    def _memo_answer(self, trace: Any, call: Call, attempt: Attempt, limit: int | None, source: str) -> None:
        """What the answer set up: each leg's session timer (or probes), and the duration limit."""
        probes = self.cfg.liveness_probe_interval
        trace.memo(call.id, self._now, f"answered by {attempt.gateway.name}: "
                   f"{_leg_text(call.caller, probes)}; {_leg_text(call.carrier, probes)}")
        if limit is None:
            trace.memo(call.id, self._now, "no duration limit armed (timers.max_call_duration and "
                       "timers.no_timer_max_duration do not apply)")
        else:
            trace.memo(call.id, self._now, f"limit armed: {limit} s from timers.{source}, at "
                       f"{format_ts(self._now + limit + self.wall_offset)}")

    def _on_attempt_timeout(self, call: Call) -> None:
        """No response at all from the gateway in time: next gateway, or 408 to the caller."""
        attempt = call.attempt
        if attempt is None or call.ended or call.answered:
            return
        attempt.abandoned = True
        self._abandon_transaction(attempt.key)
        self._gateway_invite_timeout(attempt.gateway)
        if call.cancelled:
            return
        if (nxt := self._route_gateways(call, call.gateway_index)) is not None:
            self._attempt_failed(call, attempt, f"no answer within {self.cfg.invite_timeout:g} s "
                                 "(sip.invite_timeout)")
            call.gateway_index = nxt
            self._start_attempt(call)
            return
        if (trace := self._traced(call.id)) is not None:
            trace.memo(call.id, self._now, f"attempt {attempt.number} to {attempt.gateway.name}: no answer "
                       f"within {self.cfg.invite_timeout:g} s (sip.invite_timeout); no gateway left",
                       "carrier")
        self._terminate(call, "response_timeout", "system", status_to_caller=408, sip_status=408,
                        detail=f"no response from {attempt.gateway.host}:{attempt.gateway.port}")

    def _on_stray_response(self, resp: Response) -> None:
        """A response no transaction claims: 2xx retransmissions and answers of abandoned INVITEs."""
        call = self.uac_callids.get(resp.call_id or "")
        if call is None:
            return
        try:
            method = resp.cseq.method
        except SipSyntaxError:
            return
        if method != "INVITE" or resp.is_provisional:
            return
        attempt: Attempt | EndedAttempt | None = None
        candidates: Sequence[Attempt | EndedAttempt] = call.attempts
        for candidate in reversed(candidates):
            if candidate.invite.call_id == resp.call_id:
                attempt = candidate
                break
        if attempt is None:
            return
        if not resp.is_success:
            # Our abandoned INVITE got its final answer: ACK it so the gateway stops retransmitting.
            self._send(build_ack_for_non2xx(attempt.invite, resp), attempt.dest)
            return
        if isinstance(call, Call) and not call.ended and attempt is call.attempt:
            leg = call.carrier
            if leg.dialog is not None and leg.dialog.matches(resp):
                if leg.last_ack is not None and leg.last_ack_cseq == resp.cseq.num:
                    self._out.append(Send(leg.last_ack, self._leg_dest(leg)))
                return
        self._ack_and_bye(call, attempt, resp)

    def _on_cancel(self, req: Request, key: TransactionKey | None) -> None:
        target = self.layer.cancel_target(req)
        call = self.by_server_key.get(target) if target is not None else None
        if call is None:
            self._respond(key, req, 481)
            return
        self._current = call
        self._respond(key, req, 200)
        if not isinstance(call, Call) or call.final_sent or call.ended:
            return  # too late: the final response already left (9.2)
        call.cancelled = True
        self._terminate(call, "caller_cancel", "caller", status_to_caller=487, sip_status=487)


def _leg_text(leg: Leg, probes: int) -> str:
    """One leg's refresh set-up, for the call's analysis record."""
    if leg.has_timer:
        return f"{leg.role} leg session timer {leg.interval} s, refresher {refresher_label(leg)}"
    return f"{leg.role} leg without timer" + (f", OPTIONS probe every {probes} s" if probes else "")
