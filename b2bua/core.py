"""The sans-I/O B2BUA: two independent SIP legs per call, RFC 4028 per leg, events, enforcement.

``B2BUACore`` owns the transaction layer and every call. It never reads a clock, opens a socket or
publishes anything: ``receive``/``timer_fired``/``terminate_command`` get ``now`` (seconds, any
monotonic origin) and return a list of actions (``b2bua.actions``) that the adapter performs in
order. Because one thread runs the core and the actions come out in decision order, two messages
of one dialog can never leave out of order (a 180 overtaking its 200 was a real bug elsewhere).

Topology hiding: the carrier leg gets its own Call-ID, tags, CSeq, Via and Contact; only the
caller/callee numbers and the session descriptions cross from one leg to the other.
"""

from __future__ import annotations

import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from b2bua.actions import Action, Address, CancelTimer, Emit, Log, Send, SetTimer
from b2bua.admission import Admission, Admit, Challenge, Refuse
from b2bua.call import Attempt, Call, CallState, EndedAttempt, EndedCall, Leg, LegRole, Relay
from b2bua.call_events import format_ts
from b2bua.call_metrics import CallMetrics
from b2bua.refusals import RefusalCounter
from b2bua.routing import RouteTable, should_fail_over
from b2bua.sip.conformance import Rejection, check_body, check_method, check_require, check_uri_scheme
from b2bua.sip.dialog import Dialog, DialogId, DialogState, dialog_id_for_request
from b2bua.sip.message import (
    Headers,
    Request,
    Response,
    SipSyntaxError,
    Via,
    parse_name_addr,
    parse_session_expires,
    parse_token_list,
    parse_uri,
    parse_via,
    uri_host,
)
from b2bua.sip.parser import ParseError
from b2bua.sip.response_route import response_address, stamp_via
from b2bua.sip.serializer import build_response, response_from_parse_error, serialize
from b2bua.sip.session_timer import (
    SessionTimer,
    SessionTimerConfig,
    UacNegotiation,
    UasDecision,
    negotiate_uas,
    supports_timer,
)
from b2bua.sip.transaction import (
    Action as TxAction,
)
from b2bua.sip.transaction import (
    CancelTimer as TxCancelTimer,
)
from b2bua.sip.transaction import (
    DeliverRequest,
    DeliverResponse,
    Invite2xxRetransmitter,
    StartTimer,
    Terminated,
    TimerConfig,
    TransactionTimeout,
    Transmit,
    TransportError,
    build_ack_for_non2xx,
    build_cancel,
)
from b2bua.sip.transaction_layer import LayerAction, TransactionKey, TransactionLayer, server_key
from b2bua.takeover import LEGS, Takeover, destination_of, dialog_state, reason_header
from schemas.validation import ContractError, validate_command
from sipledger.config import Config, ConfigError

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
IMPLEMENTED = frozenset(m.strip() for m in ALLOW.split(","))
SUPPORTED = "timer"
END_REASONS = frozenset(
    {
        "normal_caller_bye", "normal_callee_bye", "caller_cancel", "busy", "no_route", "response_timeout",
        "call_progress_timeout", "session_expired", "session_refresh_failed", "liveness_probe_failed",
        "no_timer_limit", "max_duration_limit", "pipeline_terminate", "orphaned", "auth_failed",
        "call_limit_exceeded", "rejected",
    }
)  # fmt: skip
INITIATOR = {"caller": "caller", "carrier": "callee"}
SWEEP_KEY: tuple[str] = ("sweep",)


_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def contact_host(cfg: Config) -> str:
    """The host this B2BUA writes into Via, Contact, From and Call-ID: ``sip.advertised_host``, else
    ``sip.listen_host``. ConfigError when that is a wildcard bind: peers would send in-dialog requests
    (the BYE that ends a call) to 0.0.0.0."""
    host = cfg.sip.advertised_host or cfg.sip.listen_host
    if host in _WILDCARD_HOSTS:
        key = "sip.advertised_host" if cfg.sip.advertised_host else "sip.listen_host"
        raise ConfigError(key, f"{host!r} is no address peers can send requests to: set sip.advertised_host "
                          "to the address they reach this B2BUA at")
    return uri_host(host)


@dataclass(frozen=True)
class CoreConfig:
    node_id: str = "node-1"
    local_host: str = "127.0.0.1"
    local_port: int = 5060
    timers: TimerConfig = field(default_factory=TimerConfig)
    invite_timeout: float = 32.0
    call_progress_timeout: float = 120.0
    refresh_method: str = "update"
    session: SessionTimerConfig = field(default_factory=SessionTimerConfig)
    no_timer_max_duration: int = 7200
    max_call_duration: int = 0
    liveness_probe_interval: int = 0
    # Safety net: how often stuck calls are looked for, and how long ended calls stay known for
    # late retransmissions (a late 2xx after a CANCEL still gets its ACK and BYE).
    sweep_interval: float = 10.0

    @property
    def linger(self) -> float:
        return self.timers.timeout + 5.0

    @classmethod
    def from_config(cls, cfg: Config, local_port: int | None = None) -> CoreConfig:
        t = cfg.timers
        segment = float(t.session_update_segment)
        return cls(
            node_id=cfg.node.id,
            local_host=contact_host(cfg),
            local_port=cfg.sip.listen_port if local_port is None else local_port,
            timers=TimerConfig.from_resend_interval_ms(cfg.sip.resend_interval_ms),
            invite_timeout=cfg.sip.invite_timeout,
            call_progress_timeout=cfg.sip.call_progress_timeout,
            refresh_method=cfg.sip.refresh_method,
            session=SessionTimerConfig(
                session_ttl=t.session_ttl,
                min_se=t.min_se,
                # A segment of 1 would put the refresh at the expiry itself; the SessionTimer refuses it.
                update_segment=segment if segment > 1 else 2.0,
                early_hangup=float(t.session_timeout_early_hangup),
                # A carrier whose 2xx says nothing about timers is not refreshed (many reject UPDATE);
                # liveness probes cover such legs instead.
                refresh_without_peer_support=False,
            ),
            no_timer_max_duration=t.no_timer_max_duration,
            max_call_duration=t.max_call_duration,
            liveness_probe_interval=t.liveness_probe_interval,
        )


# Client transactions whose handlers work with a tombstone once the call ended (see ``_bury``).
_TOMBSTONE_PURPOSES = frozenset({"invite", "cancel", "bye", "late_bye"})


@dataclass(slots=True)
class _Owner:
    """Which call (and why) a client transaction belongs to."""

    call: Call | EndedCall
    role: LegRole
    purpose: str  # invite | cancel | bye | refresh | probe | relay | late_bye
    attempt: Attempt | EndedAttempt | None = None


class B2BUACore:
    def __init__(
        self,
        config: CoreConfig,
        admission: Admission,
        routes: RouteTable,
        *,
        rng: Any = None,
        wall_offset: float = 0.0,
        new_call_id: Callable[[], str] | None = None,
    ) -> None:
        self.cfg = config
        self.admission = admission
        self.routes = routes
        self.layer = TransactionLayer(timers=config.timers, rng=rng)
        # ``now`` + wall_offset = Unix time; only used to stamp expires_at in events.
        self.wall_offset = wall_offset
        self._new_call_id = new_call_id or (lambda: str(uuid.uuid4()))
        self.calls: dict[str, Call] = {}
        # Ended calls become small tombstones (``EndedCall``), expired in end order from a queue.
        self.ended: dict[str, EndedCall] = {}
        self._ended_queue: deque[EndedCall] = deque()
        self.dialogs: dict[DialogId, tuple[Call, LegRole]] = {}
        self.by_server_key: dict[TransactionKey, Call | EndedCall] = {}
        self.uac_callids: dict[str, Call | EndedCall] = {}
        self.tx_dest: dict[TransactionKey, Address] = {}
        self.tx_owner: dict[TransactionKey, _Owner] = {}
        self.relays: dict[TransactionKey, Relay] = {}
        # Lost nodes' calls this node is ending (call.takeover): the BYE transactions and the calls.
        self.takeover_tx: dict[TransactionKey, tuple[Takeover, str]] = {}
        self.taken_over: OrderedDict[str, Takeover | None] = OrderedDict()  # call id -> in flight / done
        self.stats: dict[str, int] = {
            "calls": 0, "refused": 0, "refused_unadmitted": 0, "challenged": 0, "parse_errors": 0,
            "internal_errors": 0, "commands_applied": 0, "commands_ignored": 0, "safety_net": 0,
            "takeovers": 0, "releases": 0,
        }  # fmt: skip
        self.metrics = CallMetrics()
        # Refusals of unadmitted traffic, per cause and per source (bounded); no call events for them.
        self.refusals = RefusalCounter(admission.cfg.refusal_max_sources, admission.cfg.refusal_log_interval)
        self._keep_tx = False
        self._commands_seen: OrderedDict[str, None] = OrderedDict()
        self._log_window: dict[str, list[float]] = {}
        self._out: list[Action] = []
        self._now = 0.0
        self._source: Address | None = None
        self._current: Call | None = None
        # Client transactions started by the current entry point (their owners may need re-pointing
        # at a tombstone when the call ends in the same step, e.g. the BYE of a hang-up).
        self._step_keys: list[TransactionKey] = []

    # =========================================================================================
    # Public entry points
    # =========================================================================================

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    @property
    def sent_by(self) -> str:
        return f"{self.cfg.local_host}:{self.cfg.local_port}"

    def start(self, now: float) -> list[Action]:
        """Arm the safety-net sweep; call once when the adapter starts."""
        return [SetTimer(SWEEP_KEY, now + self.cfg.sweep_interval)]

    def receive(self, message: Request | Response | ParseError, source: Address, now: float) -> list[Action]:
        def run() -> None:
            if isinstance(message, ParseError):
                self._on_parse_error(message, source)
                return
            try:
                if isinstance(message, Request):
                    self._on_request(message, source)
                else:
                    self._on_response(message)
            except SipSyntaxError as exc:
                # A header read only when needed (Contact, Session-Expires, a URI...) was malformed:
                # that is bad input from the peer, answered like any other, not a fault of ours.
                self._on_malformed(message, source, exc)

        return self._guard(run, now, source, lambda: _describe(message))

    def timer_fired(self, key: Hashable, now: float) -> list[Action]:
        return self._guard(lambda: self._on_timer(key), now, None, lambda: f"timer {key!r}")

    def terminate_command(self, cmd: dict[str, Any], now: float) -> list[Action]:
        return self._guard(lambda: self._on_command(cmd), now, None, lambda: f"command {cmd!r}"[:300])

    # =========================================================================================
    # Plumbing
    # =========================================================================================

    def _guard(self, fn: Callable[[], None], now: float, source: Address | None,
               what: Callable[[], str]) -> list[Action]:
        self._out = []
        self._now = now
        self._source = source
        self._current = None
        self._step_keys = []
        try:
            fn()
        except Exception as exc:
            # One bad message must never take the node down; the actions decided before the
            # failure still go out, and the call it concerned is not left half set up.
            self.stats["internal_errors"] += 1
            tb = traceback.format_exc(limit=8)
            self._log("error", f"internal error on {what()} from {source}: {exc!r}\n{tb}")
            self._abort_current()
        out, self._out = self._out, []
        return out

    def _abort_current(self) -> None:
        call = self._current
        if call is None or call.ended or call.answered:
            return  # answered calls keep running: their timers and limits still enforce the end
        try:
            self._terminate(call, "rejected", "system", status_to_caller=500, sip_status=500,
                            detail="internal error while setting up the call")
        except Exception as exc:
            self._log("error", f"could not abort call {call.id} after an internal error: {exc!r}")
            self._force_forget(call)

    def _log(self, level: str, text: str) -> None:
        self._out.append(Log(level, text))

    def _log_limited(self, kind: str, level: str, text: str, per_10s: int = 10) -> None:
        """Hostile or broken peers can send garbage fast; keep the log readable."""
        window = self._log_window.setdefault(kind, [])
        while window and window[0] <= self._now - 10.0:
            window.pop(0)
        if len(window) < per_10s:
            window.append(self._now)
            self._log(level, text)

    def _send(self, msg: Request | Response, dest: Address) -> None:
        self._out.append(Send(serialize(msg), dest))

    def _emit(self, call_id: str, etype: str, **fields: Any) -> None:
        self._out.append(Emit(call_id, etype, fields))

    def _ts(self, t: float) -> str:
        return format_ts(t + self.wall_offset)

    def _contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:b2bua@{self.cfg.local_host}:{self.cfg.local_port}{suffix}>"

    def _arm(self, call: Call, name: str, at: float) -> None:
        call.timers.add(name)
        self._out.append(SetTimer(("call", call.id, name), at))

    def _disarm(self, call: Call, name: str) -> None:
        if name in call.timers:
            call.timers.discard(name)
            self._out.append(CancelTimer(("call", call.id, name)))

    def _apply(self, actions: Iterable[LayerAction], dest: Address | None = None) -> None:
        """Turn transaction-layer actions into adapter actions and TU callbacks, in order."""
        ended: list[TransactionKey] = []
        for item in actions:
            key, a = item.key, item.action
            if isinstance(a, Transmit):
                target = self.tx_dest.get(key) if key is not None else dest
                if target is None:
                    self._log("warning", f"no destination for {_describe(a.message)}; dropped")
                else:
                    self._send(a.message, target)
            elif isinstance(a, StartTimer):
                self._out.append(SetTimer(("tx", key, a.name), a.at))
            elif isinstance(a, TxCancelTimer):
                self._out.append(CancelTimer(("tx", key, a.name)))
            elif isinstance(a, DeliverRequest):
                self._on_tu_request(a.request, key)
            elif isinstance(a, DeliverResponse):
                self._on_tu_response(a.response, key)
            elif isinstance(a, TransactionTimeout | TransportError):
                if key is not None:
                    self._on_tx_timeout(key)
            elif isinstance(a, Terminated) and key is not None:
                ended.append(key)
        for key in ended:
            self.tx_dest.pop(key, None)
            self.tx_owner.pop(key, None)
            self.relays.pop(key, None)
            self.takeover_tx.pop(key, None)

    def _respond(self, key: TransactionKey | None, request: Request, status: int, reason: str | None = None,
                 *, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                 to_tag: str | None = None) -> Response | None:
        """Answer a request through its server transaction (a fresh To tag when it had none)."""
        if key is None:
            return None
        if to_tag is None and status > 100 and not request.to.tag:
            to_tag = self.layer.new_tag()
        resp = build_response(request, status, reason, to_tag=to_tag, headers=headers, body=body)
        try:
            self._apply(self.layer.send_response(key, resp, self._now))
        except (KeyError, RuntimeError) as exc:
            # The transaction already ended (e.g. the peer gave up); nothing left to answer.
            self._log("debug", f"cannot answer {request.method} with {status}: {exc}")
            return None
        return resp

    # =========================================================================================
    # Incoming messages
    # =========================================================================================

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
            _replace_top_via(resp, stamp_via(via, source))
        self._log_limited(str(resp.status), "info",
                          f"{resp.status} to {source} for a malformed request: {err.reason}")
        self._send(resp, response_address(via, source))

    def _on_malformed(self, message: Request | Response, source: Address, exc: SipSyntaxError) -> None:
        self.stats["parse_errors"] += 1
        if isinstance(message, Response) or message.method == "ACK":
            self._log_limited("drop", "warning",
                              f"dropped malformed {_describe(message)} from {source}: {exc}")
            return
        call = self._current
        if call is not None and not call.ended and not call.answered:
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
        _replace_top_via(req, via)
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

    def _conformance(self, req: Request, *, with_method: bool = True) -> Rejection | None:
        """RFC 3261 8.2 checks in order (b2bua.sip.conformance)."""
        return ((check_method(req, IMPLEMENTED, ALLOW) if with_method else None)
                or check_uri_scheme(req) or check_require(req, SUPPORTED.split(","))
                or check_body(req, ("application/sdp",)))

    def _reject(self, key: TransactionKey | None, req: Request, bad: Rejection) -> None:
        self._log_limited(f"reject{bad.status}", "info",
                          f"{bad.status} to {self._source} for {req.method[:32]}: {bad.why}")
        self._respond(key, req, bad.status, headers=bad.headers)

    def _on_tu_response(self, resp: Response, key: TransactionKey | None) -> None:
        if key is None:
            self._on_stray_response(resp)
            return
        taking = self.takeover_tx.get(key)
        if taking is not None:
            if resp.is_final:
                self._takeover_answered(taking[0], taking[1], resp.status)
            return
        owner = self.tx_owner.get(key)
        if owner is None:
            return
        self._current = owner.call
        if owner.purpose == "invite" and owner.attempt is not None:
            self._on_carrier_invite_response(owner.call, owner.attempt, resp)
        elif owner.purpose == "refresh":
            self._on_refresh_response(owner.call, owner.role, key, resp)
        elif owner.purpose == "probe":
            self._on_probe_response(owner.call, owner.role, key, resp)
        elif owner.purpose == "relay":
            self._on_relay_response(owner.call, key, resp)
        elif owner.purpose == "late_bye" and resp.is_success:
            self._log("info", f"late answer of call {owner.call.id} hung up")

    def _on_tx_timeout(self, key: TransactionKey) -> None:
        taking = self.takeover_tx.pop(key, None)
        if taking is not None:
            self._takeover_answered(taking[0], taking[1], None)
            return
        owner = self.tx_owner.get(key)
        if owner is None:
            return
        call = owner.call
        self._current = call
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

    # =========================================================================================
    # New calls
    # =========================================================================================

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
        refusal = self.admission.acquire(account)
        if refusal is not None:
            self._refuse(req, key, refusal, decision, source, account=account.name)
            return
        if key is None:  # pragma: no cover - an INVITE always has a server transaction
            self.admission.release(account)
            return
        call = self._create_call(req, key, account, decision, source)
        self._current = call
        route = self.routes.lookup(call.callee)
        if route is None:
            self._terminate(call, "no_route", "system", status_to_caller=404, reason_phrase="No Route",
                            sip_status=404, detail=f"no route for {call.callee}")
            return
        call.prefix, call.gateways = route.prefix, route.gateways
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
            "caller": _user(req.headers.get("From"))[:128],
            "callee": (_callee(req) or "unknown")[:128],
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
        self._emit(call_id, "call.setup", **self._setup_fields(req, refusal.account or account, source))
        self._emit(call_id, "call.terminated", reason=refusal.end_reason, initiator="system",
                   sip_status=refusal.status, detail=refusal.detail[:512])
        self._log("info", f"refused INVITE from {source}: {refusal.status} {refusal.detail}")

    def _create_call(self, req: Request, key: TransactionKey, account: Any, decision: UasDecision,
                     source: Address) -> Call:
        self.stats["calls"] += 1
        to_tag = self.layer.new_tag()
        caller = Leg("caller", source.transport, peer_source=source)
        caller.allows_update = "update" in parse_token_list(req.headers.get_all("Allow"))
        caller.dialog = Dialog.uas_from_request(req, to_tag, local_contact=self._contact(source.transport),
                                                via_sent_by=self.sent_by, transport=source.transport.upper())
        call = Call(
            id=self._new_call_id(), account=account, caller_user=_user(req.headers.get("From")),
            callee=_callee(req), source=source, created_at=self._now, invite=req, server_key=key,
            to_tag=to_tag, caller=caller, carrier=Leg("carrier", "udp"), uas_decision=decision,
        )
        self.calls[call.id] = call
        self.by_server_key[key] = call
        self.dialogs[caller.dialog.id] = (call, "caller")
        self._emit(call.id, "call.setup", **self._setup_fields(req, account.name, source))
        return call

    # =========================================================================================
    # Carrier attempts
    # =========================================================================================

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
        self._emit(call.id, "call.routed", vendor=(gw.vendor or gw.name)[:64],
                   gateway=f"{gw.host}:{gw.port}"[:128], prefix=call.prefix[:32], attempt=attempt.number)
        self._send_attempt(call, attempt)

    def _carrier_invite(self, call: Call, host: str, port: int, transport: str,
                        negotiation: UacNegotiation) -> Request:
        tparam = ";transport=tcp" if transport == "tcp" else ""
        uri = f"sip:{call.callee}@{host}:{port}{tparam}"
        src = call.invite
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
        self.tx_owner[key] = _Owner(call, "carrier", "invite", attempt)
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

    def _on_carrier_invite_response(self, call: Call, attempt: Attempt, resp: Response) -> None:
        status = resp.status
        if attempt is not call.attempt or attempt.abandoned or call.ended:
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
            self._retry_422(call, attempt)
            return
        if should_fail_over(status) and call.gateway_index + 1 < len(call.gateways):
            call.gateway_index += 1
            self._start_attempt(call)
            return
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
            if leg.last_ack is not None and leg.last_ack.cseq.num == resp.cseq.num:
                self._send(leg.last_ack, self._leg_dest(leg))
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
                                        via_sent_by=self.sent_by, transport=transport.upper())

    def _send_cancel(self, call: Call | EndedCall, attempt: Attempt | EndedAttempt) -> None:
        attempt.cancel_sent = True
        cancel = build_cancel(attempt.invite)
        key, actions = self.layer.send_request(cancel, self._now, reliable=attempt.dest.transport == "tcp")
        if key is not None:
            self.tx_dest[key] = attempt.dest
            self.tx_owner[key] = _Owner(call, "carrier", "cancel", attempt)
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
        if not call.invite.body and resp.body:
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
        ok = build_response(call.invite, 200, "OK", to_tag=call.to_tag, headers=headers, body=resp.body)
        self._send_2xx(call, "caller", call.server_key, ok)

        for role in ("caller", "carrier"):
            lg = call.leg(role)
            if lg.session is not None:
                lg.session.start(self._now)
                self._schedule_session(call, role)
            elif self.cfg.liveness_probe_interval > 0:
                self._arm(call, f"probe:{role}", self._now + self.cfg.liveness_probe_interval)
        limit, source = self._limit_for(call)
        if limit is not None:
            call.limit_at = self._now + limit
            call.limit_reason = "max_duration_limit" if source == "max_call_duration" else "no_timer_limit"
            self._arm(call, "limit", call.limit_at)
        self._emit(
            call.id, "call.answered",
            timer_mode="session_timer" if caller.has_timer else "no_timer",
            session_expires=caller.interval if caller.has_timer else None,
            refresher={r: _refresher_label(call.leg(r)) for r in ("caller", "carrier")},
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

    def _local_cseq(self, call: Call, role: LegRole) -> dict[str, Any]:
        d = call.leg(role).dialog
        return {} if d is None else {"local_cseq": max(0, d.local_seq)}

    def _limit_for(self, call: Call) -> tuple[int | None, str]:
        options: list[tuple[int, str]] = []
        if self.cfg.max_call_duration > 0:
            options.append((self.cfg.max_call_duration, "max_call_duration"))
        if not call.caller.has_timer and self.cfg.no_timer_max_duration > 0:
            options.append((self.cfg.no_timer_max_duration, "no_timer_max_duration"))
        if not options:
            return None, "none"
        return min(options)

    def _on_attempt_timeout(self, call: Call) -> None:
        """No response at all from the gateway in time: next gateway, or 408 to the caller."""
        attempt = call.attempt
        if attempt is None or call.ended or call.answered:
            return
        attempt.abandoned = True
        self._abandon_transaction(attempt.key)
        if call.cancelled:
            return
        if call.gateway_index + 1 < len(call.gateways):
            call.gateway_index += 1
            self._start_attempt(call)
            return
        self._terminate(call, "response_timeout", "system", status_to_caller=408, sip_status=408,
                        detail=f"no response from {attempt.gateway.host}:{attempt.gateway.port}")

    def _abandon_transaction(self, key: TransactionKey | None) -> None:
        """Drop a transaction and its timers: a gateway we gave up on (its late answers are then
        handled as strays), or a server transaction whose branch a peer reused for a new request."""
        if key is None:
            return
        tx = self.layer.get(key)
        if tx is None:
            return
        # Timers armed in this very step are taken back before they reach the adapter (a stateless
        # answer then costs no timer at all, which matters under a flood); older ones are cancelled.
        armed = {("tx", key, name) for name in tx.armed_timers}
        kept = [a for a in self._out if not (isinstance(a, SetTimer) and a.key in armed)]
        fresh = {a.key for a in self._out if isinstance(a, SetTimer) and a.key in armed}
        self._out = kept
        for timer in armed - fresh:
            self._out.append(CancelTimer(timer))
        self.layer.transactions.pop(key, None)
        self.tx_dest.pop(key, None)
        self.tx_owner.pop(key, None)

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
        attempt = next((a for a in reversed(call.attempts) if a.invite.call_id == resp.call_id), None)
        if attempt is None:
            return
        if not resp.is_success:
            # Our abandoned INVITE got its final answer: ACK it so the gateway stops retransmitting.
            self._send(build_ack_for_non2xx(attempt.invite, resp), attempt.dest)
            return
        if isinstance(call, Call) and not call.ended and attempt is call.attempt:
            leg = call.carrier
            if leg.dialog is not None and leg.dialog.matches(resp):
                if leg.last_ack is not None and leg.last_ack.cseq.num == resp.cseq.num:
                    self._send(leg.last_ack, self._leg_dest(leg))
                return
        self._ack_and_bye(call, attempt, resp)

    # =========================================================================================
    # CANCEL, ACK, BYE
    # =========================================================================================

    def _on_cancel(self, req: Request, key: TransactionKey | None) -> None:
        target = self.layer.cancel_target(req)
        call = self.by_server_key.get(target) if target is not None else None
        if call is None:
            self._respond(key, req, 481)
            return
        self._current = call
        self._respond(key, req, 200)
        if call.final_sent or call.ended:
            return  # too late: the final response already left (9.2)
        call.cancelled = True
        self._terminate(call, "caller_cancel", "caller", status_to_caller=487, sip_status=487)

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

    def _live_dialog(self, req: Request, key: TransactionKey | None) -> tuple[Call, LegRole] | None:
        """The live call and leg an in-dialog request belongs to; otherwise it is answered 481."""
        entry = self.dialogs.get(dialog_id_for_request(req))
        if entry is None or entry[0].ended:
            self._respond(key, req, 481)
            return None
        self._current = entry[0]
        return entry

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

    # =========================================================================================
    # In-dialog requests: refreshes, re-offers, INFO
    # =========================================================================================

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

    # =========================================================================================
    # Session timers (RFC 4028, per leg)
    # =========================================================================================

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
        # Anything else (491, 5xx, ...): RFC 4028 keeps the session until it expires; the expiry
        # guard of the SessionTimer ends the call if no later refresh succeeds.

    def _refresh_failed(self, call: Call, role: LegRole, method: str | None, status: int | None,
                        cause: str) -> None:
        if call.ended:
            return
        self.metrics.refreshes[(role, cause)] += 1
        self._emit(call.id, "session.refresh_failed", leg=role,
                   method=method if method in ("INVITE", "UPDATE") else None, status=status, cause=cause,
                   **self._local_cseq(call, role))
        self._terminate(call, "session_refresh_failed", "system", sip_status=status,
                        detail=f"{method or 'refresh'} on the {role} leg: {status or cause}")

    # =========================================================================================
    # Liveness probes (legs without session timers)
    # =========================================================================================

    def _send_probe(self, call: Call, role: LegRole) -> None:
        leg = call.leg(role)
        if leg.dialog is None or leg.dialog.is_terminated or leg.has_timer or leg.probe_key is not None:
            return
        req = leg.dialog.create_options(branch=self.layer.new_branch())
        leg.probe_key = self._send_request(call, leg, req, "probe")

    def _on_probe_response(self, call: Call, role: LegRole, key: TransactionKey, resp: Response) -> None:
        leg = call.leg(role)
        if resp.is_provisional or leg.probe_key != key or call.ended:
            return
        leg.probe_key = None
        if resp.status in (408, 481):
            self._probe_failed(call, role, resp.status, "status")
            return
        self._emit(call.id, "liveness.probe_succeeded", leg=role, status=resp.status,
                   **self._local_cseq(call, role))
        if not leg.has_timer:
            self._arm(call, f"probe:{role}", self._now + self.cfg.liveness_probe_interval)

    def _probe_failed(self, call: Call, role: LegRole, status: int | None, cause: str) -> None:
        if call.ended:
            return
        self._emit(call.id, "liveness.probe_failed", leg=role, status=status, cause=cause,
                   **self._local_cseq(call, role))
        self._terminate(call, "liveness_probe_failed", "system", sip_status=status,
                        detail=f"OPTIONS to the {role} leg: {status or cause}")

    # =========================================================================================
    # Sending in-dialog requests, ACKs and 2xx retransmission
    # =========================================================================================

    def _leg_dest(self, leg: Leg) -> Address:
        if leg.role == "caller" and leg.transport == "tcp" and leg.peer_source is not None:
            return leg.peer_source
        d = leg.dialog
        target = ""
        if d is not None:
            target = d.route_set[0] if d.route_set else d.remote_target
        if target:
            try:
                uri = parse_name_addr(target).uri if d is not None and d.route_set else parse_uri(target)
                return Address(uri.host, uri.port or 5060, uri.transport or leg.transport)
            except SipSyntaxError:
                pass
        if leg.peer_source is not None:
            return leg.peer_source
        raise ValueError(f"no destination known for the {leg.role} leg")

    def _send_request(self, call: Call | EndedCall, leg: Leg, req: Request,
                      purpose: str) -> TransactionKey | None:
        dest = self._leg_dest(leg)
        key, actions = self.layer.send_request(req, self._now, reliable=dest.transport == "tcp")
        if key is not None:
            self.tx_dest[key] = dest
            self.tx_owner[key] = _Owner(call, leg.role, purpose)
            self._step_keys.append(key)
        self._apply(actions, dest)
        return key

    def _ack(self, call: Call, role: LegRole, cseq: int, body: bytes = b"", ctype: str | None = None) -> None:
        leg = call.leg(role)
        if leg.dialog is None:
            return
        ack = leg.dialog.create_ack(branch=self.layer.new_branch(), invite_cseq=cseq, body=body,
                                    content_type=ctype if body else None)
        leg.last_ack = ack
        self._send(ack, self._leg_dest(leg))

    def _send_2xx(self, call: Call, role: LegRole, key: TransactionKey, ok: Response) -> None:
        """Send a 2xx to an INVITE and keep retransmitting it until the ACK (13.3.1.4)."""
        leg = call.leg(role)
        dest = self.tx_dest.get(key)
        try:
            self._apply(self.layer.send_response(key, ok, self._now))
        except (KeyError, RuntimeError) as exc:
            self._log("warning", f"call {call.id}: could not send 2xx on the {role} leg: {exc}")
            return
        if dest is None or (dest.transport == "tcp"):
            return  # reliable transport: no retransmissions needed
        old = leg.retransmitter
        if old is not None:
            self._apply_rt(call, role, old.stop())
        rt = Invite2xxRetransmitter(ok, self.cfg.timers)
        leg.retransmitter = rt
        leg.rt_dest = dest
        # The transaction already transmitted the 2xx; only the retransmission timers are needed.
        self._apply_rt(call, role, [a for a in rt.start(self._now) if not isinstance(a, Transmit)])

    def _apply_rt(self, call: Call, role: LegRole, actions: list[TxAction]) -> None:
        leg = call.leg(role)
        for a in actions:
            if isinstance(a, Transmit):
                if leg.rt_dest is not None:
                    self._send(a.message, leg.rt_dest)
            elif isinstance(a, StartTimer):
                self._arm(call, f"2xx:{role}:{a.name}", a.at)
            elif isinstance(a, TxCancelTimer):
                self._disarm(call, f"2xx:{role}:{a.name}")
            elif isinstance(a, TransactionTimeout):
                leg.retransmitter = None
                if role == "caller" and leg.last_ack is None and call.answered and \
                        call.invite.cseq.num == (leg.dialog.invite_cseq if leg.dialog else -1):
                    # 13.3.1.4: the 2xx was never ACKed; the caller is gone, end the call.
                    self._terminate(call, "rejected", "system", sip_status=None,
                                    detail="the caller never acknowledged the 2xx")

    # =========================================================================================
    # Ending calls
    # =========================================================================================

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
            if status_to_caller is not None and not call.final_sent:
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
        self.calls.pop(call.id, None)
        self._bury(call)
        fields: dict[str, Any] = {"reason": reason, "initiator": initiator, "sip_status": sip_status}
        if detail:
            fields["detail"] = detail[:512]
        self._emit(call.id, "call.terminated", **fields)

    def _force_forget(self, call: Call) -> None:
        """Last resort when even the clean-up failed: drop every reference so nothing fires again."""
        for name in call.timers:
            self._out.append(CancelTimer(("call", call.id, name)))
        call.timers.clear()
        call.state = CallState.ENDED
        self.calls.pop(call.id, None)
        if call.slot_held:
            call.slot_held = False
            self.admission.release(call.account)

    # =========================================================================================
    # Timers
    # =========================================================================================

    def _on_timer(self, key: Hashable) -> None:
        if not isinstance(key, tuple) or not key:
            return
        kind = key[0]
        if kind == "tx" and len(key) == 3:
            self._apply(self.layer.timer_fired(key[1], key[2], self._now))
        elif kind == "call" and len(key) == 3:
            call = self.calls.get(key[1])
            name = key[2]
            if call is None or call.ended or name not in call.timers:
                return  # the call ended after the timer was set: nothing may happen any more
            self._current = call
            call.timers.discard(name)
            self._on_call_timer(call, name)
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
            self._terminate(call, call.limit_reason or "max_duration_limit", "system",
                            detail="call duration limit reached")
        elif name.startswith("2xx:"):
            _, role, rname = name.split(":", 2)
            leg = call.leg(role)  # type: ignore[arg-type]
            if leg.retransmitter is not None:
                self._apply_rt(call, role, leg.retransmitter.timer_fired(rname, self._now))  # type: ignore[arg-type]

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
            dead[id(attempt)] = EndedAttempt(attempt.invite, attempt.dest, attempt.final, attempt.cancel_sent)
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
            if owner is not None and owner.call is call and owner.purpose in _TOMBSTONE_PURPOSES:
                was = owner.attempt
                self.tx_owner[key] = _Owner(tomb, owner.role, owner.purpose,
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

    # =========================================================================================
    # Commands
    # =========================================================================================

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
        self._terminate(call, str(reason), "system", status_to_caller=503, sip_status=None,
                        detail=f"command {command_id} from {cmd.get('issued_by', '?')}")


    # =========================================================================================
    # Takeover: ending a lost node's call as its dialog (b2bua/takeover.py)
    # =========================================================================================

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

    def _on_release(self, cmd: dict[str, Any]) -> None:
        """A call another node took over while we were cut off: forget it, sending nothing (its legs
        were ended by that node; a BYE or refresh from us now would only meet 481s)."""
        call = self.calls.get(str(cmd.get("call_id") or ""))
        if call is None or call.ended:
            self.stats["commands_ignored"] += 1
            return
        self.stats["releases"] += 1
        self._log("warning", f"call {call.id} was taken over by {cmd.get('taken_over_by')}: released")
        for role in LEGS:
            dialog = call.leg(role).dialog
            if dialog is not None:
                self.dialogs.pop(dialog.id, None)
                dialog.terminate()  # its session timer too: nothing may fire for it again
        self._force_forget(call)

def _replace_top_via(req: Request | Response, via: Via) -> None:
    out = Headers()
    done = False
    for name, value in req.headers:
        if name == "Via" and not done:
            out.add(name, str(via))
            done = True
        else:
            out.add(name, value)
    req.headers = out


def _user(value: str | None) -> str:
    if not value:
        return ""
    try:
        return parse_name_addr(value).uri.user or ""
    except SipSyntaxError:
        return ""


def _callee(req: Request) -> str:
    try:
        user = req.parsed_uri.user
    except SipSyntaxError:
        user = None
    return user or _user(req.headers.get("To"))


def _refresher_label(leg: Leg) -> str | None:
    if not leg.has_timer:
        return None
    return "b2bua" if leg.we_refresh else "peer"


def _describe(message: object) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.uri} (Call-ID {message.call_id})"
    if isinstance(message, Response):
        return f"{message.status} {message.reason} (Call-ID {message.call_id})"
    if isinstance(message, ParseError):
        return f"unparsable message ({message.reason})"
    return repr(message)[:200]
