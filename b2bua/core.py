"""The sans-I/O B2BUA controller: two independent SIP legs per call, RFC 4028 per leg, events, enforcement.

``B2BUACore`` never reads a clock, opens a socket or publishes anything: ``receive``/``timer_fired``/
``terminate_command`` get ``now`` (seconds, any monotonic origin) and return a list of actions
(``b2bua.actions``) that the adapter performs in order. Because one thread runs the core and the
actions come out in decision order, two messages of one dialog can never leave out of order (a 180
overtaking its 200 was a real bug elsewhere).

This module only ties the concepts together: it takes each input (a message, a parse error, a
timer, a command), hands it to the transaction layer and routes what comes out to the concept
that owns it. Each concept is a module of its own, found by name:

* ``call_setup.py``       the caller's INVITE: admission, routing, carrier attempts, failover, answer;
* ``relay.py``            in-dialog requests: relayed re-offers and INFO, locally answered refreshes, ACKs;
* ``session_refresh.py``  RFC 4028 per leg on top of ``sip/session_timer.py``: refreshes, expiries;
* ``liveness.py``         OPTIONS probes of legs without session timers;
* ``termination.py``      BYE on both legs, end reasons, tombstones, the safety-net sweep;
* ``commands.py``         the pipeline's commands: terminate, takeover (``takeover.py``), release;
* ``credit.py``           prepaid accounts: the credit limit priced at setup, refusals, balance records;
* ``gateway_probes.py``   OPTIONS probes of the routing gateways (``gateway_health.py``), skipping down ones;
* ``core_state.py``       what they share: the call and transaction tables and the plumbing
                          (sending, answering, timers, events);
* ``core_config.py``      the core's configuration and the constants of what we advertise.

The concept classes stand in one line of single inheritance, ``CoreState`` <- ``Credit`` <-
``CallSetup`` <- ``InDialogRelay`` <- ``SessionRefresh`` <- ``Liveness`` <- ``Termination`` <-
``Commands`` <- ``GatewayProbes`` <- ``B2BUACore``, because mypyc compiles them (``b2bua/native.py``)
into native classes, whose attributes are C struct fields, and a native class has one base. The order
means nothing: no concept overrides another's method (tests/b2bua/test_core_split.py holds that), each
only implements the hooks ``CoreState`` declares.

Topology hiding: the carrier leg gets its own Call-ID, tags, CSeq, Via and Contact; only the
caller/callee numbers and the session descriptions cross from one leg to the other.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from b2bua.actions import Action, Address, PublishTrace, SetTimer
from b2bua.call import Call
from b2bua.core_config import (
    ALLOW,
    END_REASONS,
    SUPPORTED,
    SWEEP_KEY,
    TX_TIMERS_KEY,
    CoreConfig,
    contact_host,
)
from b2bua.core_state import (
    describe,
    replace_top_via,
)
from b2bua.gateway_probes import GW_TIMER, GatewayProbes
from b2bua.sip.message import (
    Request,
    Response,
    SipSyntaxError,
    Via,
    parse_via,
)
from b2bua.sip.parser import ParseError
from b2bua.sip.response_route import response_address, stamp_via
from b2bua.sip.serializer import build_response, response_from_parse_error
from b2bua.sip.transaction_layer import TransactionKey, server_key

__all__ = ["ALLOW", "END_REASONS", "SUPPORTED", "B2BUACore", "CoreConfig", "contact_host"]


class B2BUACore(GatewayProbes):
    """The controller: public entry points and the routing of each input to its concept."""

    def start(self, now: float) -> list[Action]:
        """Arm the safety-net sweep and the gateway probes; call once when the adapter starts."""
        return self._guard(self._start, now, None, lambda: "start")

    def _start(self) -> None:
        self._out.append(SetTimer(SWEEP_KEY, self._now + self.cfg.sweep_interval))
        self._start_gateway_probes()

    def receive(self, message: Request | Response | ParseError, source: Address, now: float) -> list[Action]:
        self._begin(now, source)
        try:
            self._on_message(message, source, now)
        except Exception as exc:
            self._failed(exc, describe(message))
        if self.trace is not None:
            self.trace.step_done()
        return self._done()

    def timer_fired(self, key: Hashable, now: float) -> list[Action]:
        self._begin(now, None)
        try:
            self._on_timer(key)
        except Exception as exc:
            self._failed(exc, f"timer {key!r}")
        return self._done()

    def terminate_command(self, cmd: dict[str, Any], now: float) -> list[Action]:
        return self._guard(lambda: self._on_command(cmd), now, None, lambda: f"command {cmd!r}"[:300])

    def balance_record(self, record: dict[str, Any], now: float) -> list[Action]:
        """An account.balance record of the pipeline (b2bua/credit.py)."""
        return self._guard(lambda: self._on_balance(record), now, None, lambda: f"balance {record!r}"[:300])

    def _on_message(self, message: Request | Response | ParseError, source: Address, now: float) -> None:
        if isinstance(message, ParseError):
            self._on_parse_error(message, source)
            return
        if self.trace is not None:
            self.trace.seen_in(message, source, now)
        try:
            if isinstance(message, Request):
                self._on_request(message, source)
            else:
                self._on_response(message)
        except SipSyntaxError as exc:
            # A header read only when needed (Contact, Session-Expires, a URI...) was malformed:
            # that is bad input from the peer, answered like any other, not a fault of ours.
            self._on_malformed(message, source, exc)

    def _on_parse_error(self, err: ParseError, source: Address) -> None:
        self.stats["parse_errors"] += 1
        resp = response_from_parse_error(err, to_tag=self.layer.new_tag())
        if resp is None:
            self._log_limited("drop", "warning", f"dropped unparsable message from {source}: {err.reason}")
            return
        try:
            via: Via | None = parse_via(resp.headers.get("Via") or "")
        except SipSyntaxError:
            via = None
        if via is not None:
            replace_top_via(resp, stamp_via(via, source))
        self._log_limited(str(resp.status), "info",
                          f"{resp.status} to {source} for a malformed request: {err.reason}")
        self._send(resp, response_address(via, source))

    def _on_malformed(self, message: Request | Response, source: Address, exc: SipSyntaxError) -> None:
        self.stats["parse_errors"] += 1
        if isinstance(message, Response) or message.method == "ACK":
            self._log_limited("drop", "warning",
                              f"dropped malformed {describe(message)} from {source}: {exc}")
            return
        call = self._current
        if isinstance(call, Call) and not call.ended and not call.answered:
            self._terminate(call, "rejected", "system", status_to_caller=400, sip_status=400,
                            detail=f"malformed request: {exc}"[:500])
            return
        self._log_limited("400", "info", f"400 to {source} for a malformed {message.method}: {exc}")
        try:
            key = server_key(message)
            if self.layer.get(key) is not None:
                self._respond(key, message, 400, "Bad Request")
                return
            resp = build_response(message, 400, "Bad Request", to_tag=self.layer.new_tag())
            dest = response_address(message.top_via, source)
        except (SipSyntaxError, ValueError, KeyError) as again:
            self._log_limited("drop", "warning", f"cannot even answer {source}: {again}")
            return
        self._send(resp, dest)

    def _on_request(self, req: Request, source: Address) -> None:
        via = stamp_via(req.top_via, source)
        replace_top_via(req, via)
        key = server_key(req)
        old = self.layer.get(key)
        if old is not None and old.request.cseq.num != req.cseq.num:
            # Same branch, different CSeq: a peer reusing its branch for a new request (SIPp loops
            # do). 17.2.3 would call it a retransmission and replay a stale answer forever.
            if req.method == "ACK":
                self._on_ack(req)
                return
            self._abandon_transaction(key)
        if req.method != "ACK":
            self.tx_dest.setdefault(key, response_address(via, source))
        reliable = source.transport == "tcp"
        self._apply(self.layer.receive_request(req, self._now, reliable=reliable))

    def _on_response(self, resp: Response) -> None:
        self._apply(self.layer.receive_response(resp, self._now))

    def _on_tu_request(self, req: Request, key: TransactionKey | None) -> None:
        method = req.method
        self._keep_tx = False
        if method == "ACK":
            self._on_ack(req)
            return
        initial_invite = method == "INVITE" and not req.to.tag
        if initial_invite:
            # 8.2.1: authentication comes first, so the INVITE's own checks run after admission.
            self._on_initial_invite(req, key)
        elif method == "CANCEL":
            self._on_cancel(req, key)
        elif (bad := self._conformance(req)) is not None:
            self._reject(key, req, bad)
        elif method == "OPTIONS" and not req.to.tag:
            self._respond(key, req, 200, headers=[("Allow", ALLOW), ("Supported", SUPPORTED),
                                                   ("Accept", "application/sdp")])
        elif method == "BYE":
            self._on_bye(req, key)
        else:
            self._on_in_dialog(req, key)
        if key is not None and self._current is None and not self._keep_tx:
            # Answered without any call (a challenge, a refusal, OPTIONS, an unknown dialog): keep no
            # transaction, as a stateless UAS (8.2.7), so unauthenticated traffic leaves no state
            # behind; a retransmission is simply answered again.
            self._abandon_transaction(key)

    def _on_tu_response(self, resp: Response, key: TransactionKey | None) -> None:
        if key is None:
            self._on_stray_response(resp)
            return
        if key in self.gateway_table.in_flight:
            self._on_gateway_probe_response(key, resp)
            return
        taking = self.takeover_tx.get(key)
        if taking is not None:
            if resp.is_final:
                self._takeover_answered(taking[0], taking[1], resp.status)
            return
        owner = self.tx_owner.get(key)
        if owner is None:
            return
        call = self._current = owner.call
        if owner.purpose == "invite" and owner.attempt is not None:
            self._on_carrier_invite_response(call, owner.attempt, resp)
        elif owner.purpose == "late_bye":
            if resp.is_success:
                self._log("info", f"late answer of call {call.id} hung up")
        elif not isinstance(call, Call):
            return  # only the purposes above are moved onto a tombstone (Termination._bury)
        elif owner.purpose == "refresh":
            self._on_refresh_response(call, owner.role, key, resp)
        elif owner.purpose == "probe":
            self._on_probe_response(call, owner.role, key, resp)
        elif owner.purpose == "relay":
            self._on_relay_response(call, key, resp)

    def _on_tx_timeout(self, key: TransactionKey) -> None:
        if key in self.gateway_table.in_flight:  # before our own probe deadline (a TCP send failed)
            self._gateway_probe_lost(key, "probe_timeout")
            return
        taking = self.takeover_tx.pop(key, None)
        if taking is not None:
            self._takeover_answered(taking[0], taking[1], None)
            return
        owner = self.tx_owner.get(key)
        if owner is None:
            return
        call = self._current = owner.call
        if not isinstance(call, Call):
            return  # a tombstone: the call is over, nothing waits for this transaction any more
        if owner.purpose == "invite" and owner.attempt is not None:
            if owner.attempt is call.attempt and not owner.attempt.final and not call.ended:
                self._on_attempt_timeout(call)
        elif owner.purpose == "refresh":
            leg = call.leg(owner.role)
            if leg.refresh_key == key and not call.ended:
                method = leg.refresh_method
                leg.refresh_key = None
                self._refresh_failed(call, owner.role, method, None, "timeout")
        elif owner.purpose == "probe":
            leg = call.leg(owner.role)
            if leg.probe_key == key and not call.ended:
                leg.probe_key = None
                self._probe_failed(call, owner.role, None, "timeout")
        elif owner.purpose == "relay":
            relay = self.relays.pop(key, None)
            if relay is not None and not call.ended:
                other = call.other(relay.origin)
                other.invite_busy = call.leg(relay.origin).invite_busy = False
                self._respond(relay.server_key, relay.request, 408)
                if relay.request.method in ("INVITE", "UPDATE"):
                    self._refresh_failed(call, other.role, relay.request.method, None, "timeout")

    def _on_timer(self, key: Hashable) -> None:
        if not isinstance(key, tuple) or not key:
            return
        kind = key[0]
        if key == TX_TIMERS_KEY:
            self._expire_transactions()
        elif kind == "call" and len(key) == 3:
            call = self.calls.get(key[1])
            name = key[2]
            if call is None or call.ended or name not in call.timers:
                return  # the call ended after the timer was set: nothing may happen any more
            self._current = call
            call.timers.remove(name)
            self._on_call_timer(call, name)
        elif kind == GW_TIMER and len(key) == 3:
            self._on_gateway_timer(key[1], key[2])
        elif kind == "trace" and len(key) == 2:
            record = self.trace.flush(key[1]) if self.trace is not None else None
            if record is not None:
                self._out.append(PublishTrace(record))
        elif key == SWEEP_KEY:
            self._out.append(SetTimer(SWEEP_KEY, self._now + self.cfg.sweep_interval))
            self._sweep()

    def _on_call_timer(self, call: Call, name: str) -> None:
        if name == "invite_timeout":
            self._on_attempt_timeout(call)
        elif name == "progress":
            attempt = call.attempt
            if attempt is not None and not attempt.final and not call.answered:
                self._terminate(call, "call_progress_timeout", "system", status_to_caller=408, sip_status=408,
                                detail=f"no answer within {self.cfg.call_progress_timeout:g} s of ringing")
        elif name.startswith("st:"):
            self._on_session_timer(call, name[3:])  # type: ignore[arg-type]
        elif name.startswith("probe:"):
            self._send_probe(call, name[6:])  # type: ignore[arg-type]
        elif name == "limit":
            if (trace := self._traced(call.id)) is not None:
                source = ("max_call_duration" if call.limit_reason == "max_duration_limit"
                          else "no_timer_max_duration")
                trace.memo(call.id, self._now, f"limit fired: {call.limit_reason} after "
                           f"{self._now - (call.answered_at or call.created_at):.1f} s (timers.{source}): "
                           "BYE on both legs")
            self._terminate(call, call.limit_reason or "max_duration_limit", "system",
                            detail="call duration limit reached")
        elif name.startswith("2xx:"):
            _, role, rname = name.split(":", 2)
            leg = call.leg(role)  # type: ignore[arg-type]
            if leg.retransmitter is not None:
                self._apply_rt(call, role, leg.retransmitter.timer_fired(rname, self._now))  # type: ignore[arg-type]
