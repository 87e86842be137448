"""What every concept of the B2BUA core shares: the tables and the plumbing.

``CoreState`` holds the calls, their tombstones, the dialog and transaction tables and the
transaction layer, and the steps every concept takes: answering through a server transaction,
sending an in-dialog request, ACKing a 2xx, retransmitting our 2xx until the ACK, arming a call
timer, emitting an event. Nothing here decides anything about a call; the concepts do
(``call_setup``, ``relay``, ``session_refresh``, ``liveness``, ``termination``, ``commands``) and
the controller (``core.B2BUACore``) ties them. No I/O: every side effect is an action in ``_out``.
"""

from __future__ import annotations

import sys
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from b2bua.actions import Action, Address, CancelTimer, Emit, Log, Send, SetTimer
from b2bua.admission import Admission
from b2bua.call import Attempt, Call, EndedAttempt, EndedCall, Leg, LegRole, Relay
from b2bua.call_events import format_ts
from b2bua.call_metrics import CallMetrics
from b2bua.core_config import (
    ALLOW,
    IMPLEMENTED,
    SUPPORTED,
    TX_TIMERS_KEY,
    CoreConfig,
)
from b2bua.credit_book import CreditBook
from b2bua.gateway_health import GatewayTable
from b2bua.refusals import RefusalCounter
from b2bua.routing import RouteTable
from b2bua.signalling_trace import SignallingRecorder
from b2bua.sip.conformance import Rejection, check_body, check_method, check_require, check_uri_scheme
from b2bua.sip.dialog import DialogId, dialog_id_for_request
from b2bua.sip.message import (
    Request,
    Response,
    SipSyntaxError,
    Via,
    parse_name_addr,
    parse_uri,
)
from b2bua.sip.parser import ParseError
from b2bua.sip.randomness import uuid4_hex
from b2bua.sip.serializer import build_response, serialize
from b2bua.sip.session_timer import (
    UasDecision,
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
    TransactionStateError,
    TransactionTimeout,
    Transmit,
    TransportError,
)
from b2bua.sip.transaction_layer import NEVER, LayerAction, TimedTransactionLayer, TransactionKey
from b2bua.takeover import Takeover
from sipledger.config import Gateway

TOMBSTONE_PURPOSES = frozenset({"invite", "cancel", "bye", "late_bye"})

@dataclass(slots=True)
class TxOwner:
    """Which call (and why) a client transaction belongs to."""

    call: Call | EndedCall
    role: LegRole
    purpose: str  # invite | cancel | bye | refresh | probe | relay | late_bye
    attempt: Attempt | EndedAttempt | None = None


def _uuid4_text() -> str:
    """``str(uuid.uuid4())`` from the urandom pool (b2bua/sip/randomness.py)."""
    h = uuid4_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class CoreState:
    """Tables and plumbing shared by the concepts (see the module docstring)."""

    def __init__(
        self,
        config: CoreConfig,
        admission: Admission,
        routes: RouteTable,
        *,
        rng: Any = None,
        wall_offset: float = 0.0,
        new_call_id: Callable[[], str] | None = None,
        credit: CreditBook | None = None,
    ) -> None:
        self.cfg = config
        self.admission = admission
        self.routes = routes
        # Prepaid accounts and the node's view of their balances (b2bua/credit.py); none by default.
        self.credit = credit if credit is not None else CreditBook()
        # Transaction timers stay in the layer's own queue; the adapter holds one wake-up for it.
        self.layer = TimedTransactionLayer(timers=config.timers, rng=rng)
        self._tx_wake = NEVER  # the deadline of that wake-up as last asked of the adapter
        # Call analysis (b2bua/signalling_trace.py): None when no call can be recorded, so the hooks cost
        # one attribute test.
        self.trace: SignallingRecorder | None = (
            SignallingRecorder(config.trace, config.node_id, Address(config.local_host, config.local_port),
                               wall_offset, self.layer.rng) if config.trace.enabled else None)
        # ``now`` + wall_offset = Unix time; only used to stamp expires_at in events.
        self.wall_offset = wall_offset
        self._new_call_id = new_call_id or _uuid4_text
        self.calls: dict[str, Call] = {}
        # Ended calls become small tombstones (``EndedCall``), expired in end order from a queue.
        self.ended: dict[str, EndedCall] = {}
        self._ended_queue: deque[EndedCall] = deque()
        self.dialogs: dict[DialogId, tuple[Call, LegRole]] = {}
        self.by_server_key: dict[TransactionKey, Call | EndedCall] = {}
        self.uac_callids: dict[str, Call | EndedCall] = {}
        self.tx_dest: dict[TransactionKey, Address] = {}
        self.tx_owner: dict[TransactionKey, TxOwner] = {}
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
        # Health of the routing gateways and their probes in flight (b2bua/gateway_probes.py).
        self.gateway_table = GatewayTable.of(routes.gateways)
        # Refusals of unadmitted traffic, per cause and per source (bounded); no call events for them.
        self.refusals = RefusalCounter(admission.cfg.refusal_max_sources, admission.cfg.refusal_log_interval)
        self._keep_tx = False
        self._commands_seen: OrderedDict[str, None] = OrderedDict()
        self._log_window: dict[str, list[float]] = {}
        self._out: list[Action] = []
        self._now = 0.0
        self._source: Address | None = None
        # The call the current input concerns; a tombstone for late messages of an ended call.
        self._current: Call | EndedCall | None = None
        # Client transactions started by the current entry point (their owners may need re-pointing
        # at a tombstone when the call ends in the same step, e.g. the BYE of a hang-up).
        self._step_keys: list[TransactionKey] = []

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    @property
    def sent_by(self) -> str:
        # Interned: every dialog of every call holds it (10,000 calls up hold one copy, not 20,000).
        return sys.intern(f"{self.cfg.local_host}:{self.cfg.local_port}")

    # Every entry point is one step: ``_begin``, the work, ``_failed`` if it raised, ``_done``. The rare
    # ones (start, commands, balances) run through ``_guard``; messages and timers, thousands a second,
    # spell the step out so that no function object is made for each.
    def _begin(self, now: float, source: Address | None) -> None:
        self._out = []
        self._now = now
        self._source = source
        self._current = None
        self._step_keys = []

    def _failed(self, exc: Exception, what: str) -> None:
        """One bad input must never take the node down; the actions decided before the failure
        still go out, and the call it concerned is not left half set up."""
        self.stats["internal_errors"] += 1
        tb = traceback.format_exc(limit=8)
        self._log("error", f"internal error on {what} from {self._source}: {exc!r}\n{tb}")
        self._abort_current()

    def _done(self) -> list[Action]:
        layer = self.layer
        hint = layer.wake_hint
        if hint < self._tx_wake and layer.pending_timers:
            self._out.append(SetTimer(TX_TIMERS_KEY, hint))
            self._tx_wake = hint
        layer.wake_hint = NEVER  # a later deadline is found by the wake-up already asked for
        out, self._out = self._out, []
        return out

    def _expire_transactions(self) -> None:
        self._tx_wake = NEVER
        self._apply(self.layer.expire(self._now))

    def _guard(self, fn: Callable[[], None], now: float, source: Address | None,
               what: Callable[[], str]) -> list[Action]:
        """``fn`` run as one step; ``what`` names the input in the log, asked only if it failed."""
        self._begin(now, source)
        try:
            fn()
        except Exception as exc:
            self._failed(exc, what())
        return self._done()

    def _abort_current(self) -> None:
        call = self._current
        if not isinstance(call, Call) or call.ended or call.answered:
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
        data = serialize(msg)
        self._out.append(Send(data, dest))
        if self.trace is not None:
            self.trace.seen_out(msg, data, dest, self._now)

    def _traced(self, call_id: str) -> SignallingRecorder | None:
        """The recorder when ``call_id`` is being recorded (memos are written only then)."""
        trace = self.trace
        return trace if trace is not None and call_id in trace.traces else None

    def _trace_end(self, call_id: str, reason: str | None, initiator: str | None, memo: str) -> None:
        """The call ended: its last memo, and its record published ``linger`` later (the 200 to our BYE,
        the caller's ACK of a failure are still to come)."""
        trace = self._traced(call_id)
        if trace is None or trace.traces[call_id].ended is not None:
            return
        trace.memo(call_id, self._now, memo)
        if trace.end(call_id, self._now, reason, initiator):
            self._out.append(SetTimer(("trace", call_id), self._now + trace.settings.linger))

    def _emit(self, call_id: str, etype: str, **fields: Any) -> None:
        self._out.append(Emit(call_id, etype, fields))

    def _ts(self, t: float) -> str:
        return format_ts(t + self.wall_offset)

    def _contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return sys.intern(f"<sip:b2bua@{self.cfg.local_host}:{self.cfg.local_port}{suffix}>")  # as sent_by

    def _arm(self, call: Call, name: str, at: float) -> None:
        name = sys.intern(name)  # "probe:caller"... held by every call's set and timer key: one copy
        if name not in call.timers:
            call.timers.append(name)
        self._out.append(SetTimer(("call", call.id, name), at))

    def _disarm(self, call: Call, name: str) -> None:
        if name in call.timers:
            call.timers.remove(name)
            self._out.append(CancelTimer(("call", call.id, name)))

    def _apply(self, actions: Iterable[LayerAction], dest: Address | None = None) -> None:
        """Turn transaction-layer actions into adapter actions and TU callbacks, in order."""
        ended: list[TransactionKey] = []
        for item in actions:
            key, a = item.key, item.action
            if isinstance(a, Transmit):
                target = self.tx_dest.get(key) if key is not None else dest
                if target is None:
                    self._log("warning", f"no destination for {describe(a.message)}; dropped")
                else:
                    self._send(a.message, target)
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
            owner = self.tx_owner.pop(key, None)
            self.relays.pop(key, None)
            self.takeover_tx.pop(key, None)
            if owner is not None and owner.purpose == "invite":
                self._invite_settled(owner)

    def _invite_settled(self, owner: TxOwner) -> None:
        """The carrier INVITE's transaction ended (64*T1 after its 2xx, RFC 6026 timer M): no 2xx of it
        is retransmitted any more, so a held call stops keeping the ACK it would have resent."""
        call, attempt = owner.call, owner.attempt
        if not isinstance(call, Call) or call.ended or not call.answered or attempt is None or \
                attempt is not call.attempt:
            return
        leg = call.carrier
        if leg.last_ack is not None and leg.last_ack_cseq == attempt.invite.cseq.num:
            leg.last_ack = None  # a later re-INVITE's ACK (another CSeq) is kept for its own 2xx
        attempt.key = None

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
        except (KeyError, TransactionStateError) as exc:
            # The transaction already ended (e.g. the peer gave up); nothing left to answer.
            self._log("debug", f"cannot answer {request.method} with {status}: {exc}")
            return None
        return resp

    def _abandon_transaction(self, key: TransactionKey | None) -> None:
        """Drop a transaction and its timers: a gateway we gave up on (its late answers are then
        handled as strays), or a server transaction whose branch a peer reused for a new request."""
        # Its timers leave the layer's queue at once: a stateless answer costs no timer at all, which
        # matters under a flood.
        if key is None or not self.layer.abandon(key):
            return
        self.tx_dest.pop(key, None)
        self.tx_owner.pop(key, None)

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
            self.tx_owner[key] = TxOwner(call, leg.role, purpose)
            self._step_keys.append(key)
        self._apply(actions, dest)
        return key

    def _ack(self, call: Call, role: LegRole, cseq: int, body: bytes = b"", ctype: str | None = None) -> None:
        leg = call.leg(role)
        if leg.dialog is None:
            return
        ack = leg.dialog.create_ack(branch=self.layer.new_branch(), invite_cseq=cseq, body=body,
                                    content_type=ctype if body else None)
        data = serialize(ack)
        leg.last_ack, leg.last_ack_cseq = data, ack.cseq.num
        dest = self._leg_dest(leg)
        self._out.append(Send(data, dest))
        if self.trace is not None:  # kept as bytes for retransmission, recorded like any message sent
            self.trace.seen_out(ack, data, dest, self._now)

    def _send_2xx(self, call: Call, role: LegRole, key: TransactionKey, ok: Response) -> None:
        """Send a 2xx to an INVITE and keep retransmitting it until the ACK (13.3.1.4)."""
        leg = call.leg(role)
        dest = self.tx_dest.get(key)
        try:
            self._apply(self.layer.send_response(key, ok, self._now))
        except (KeyError, TransactionStateError) as exc:
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
                        call.invite_cseq == (leg.dialog.invite_cseq if leg.dialog else -1):
                    # 13.3.1.4: the 2xx was never ACKed; the caller is gone, end the call.
                    self._terminate(call, "rejected", "system", sip_status=None,
                                    detail="the caller never acknowledged the 2xx")

    def _local_cseq(self, call: Call, role: LegRole) -> dict[str, Any]:
        d = call.leg(role).dialog
        return {} if d is None else {"local_cseq": max(0, d.local_seq)}

    def _conformance(self, req: Request, *, with_method: bool = True) -> Rejection | None:
        """RFC 3261 8.2 checks in order (b2bua.sip.conformance)."""
        return ((check_method(req, IMPLEMENTED, ALLOW) if with_method else None)
                or check_uri_scheme(req) or check_require(req, SUPPORTED.split(","))
                or check_body(req, ("application/sdp",)))

    def _reject(self, key: TransactionKey | None, req: Request, bad: Rejection) -> None:
        self._log_limited(f"reject{bad.status}", "info",
                          f"{bad.status} to {self._source} for {req.method[:32]}: {bad.why}")
        self._respond(key, req, bad.status, headers=bad.headers)

    def _live_dialog(self, req: Request, key: TransactionKey | None) -> tuple[Call, LegRole] | None:
        """The live call and leg an in-dialog request belongs to; otherwise it is answered 481."""
        entry = self.dialogs.get(dialog_id_for_request(req))
        if entry is None or entry[0].ended:
            self._respond(key, req, 481)
            return None
        self._current = entry[0]
        return entry

    # -----------------------------------------------------------------------------------------
    # Hooks: one concept's step that another concept takes. Each is implemented by the module named;
    # the controller (B2BUACore) inherits the implementation, so these bodies never run.
    # -----------------------------------------------------------------------------------------

    def _cancel_carrier(self, call: Call) -> None:
        """Implemented in b2bua/call_setup.py."""
        raise NotImplementedError

    def _credit_ended(self, call: Call) -> None:
        """Implemented in b2bua/credit.py."""
        raise NotImplementedError

    def _force_forget(self, call: Call) -> None:
        """Implemented in b2bua/termination.py."""
        raise NotImplementedError

    def _on_tu_request(self, req: Request, key: TransactionKey | None) -> None:
        """Implemented in b2bua/core.py."""
        raise NotImplementedError

    def _on_tu_response(self, resp: Response, key: TransactionKey | None) -> None:
        """Implemented in b2bua/core.py."""
        raise NotImplementedError

    def _on_tx_timeout(self, key: TransactionKey) -> None:
        """Implemented in b2bua/core.py."""
        raise NotImplementedError

    def _peer_refreshed(self, call: Call, role: LegRole, decision: UasDecision | None, method: str) -> None:
        """Implemented in b2bua/session_refresh.py."""
        raise NotImplementedError

    def _schedule_session(self, call: Call, role: LegRole) -> None:
        """Implemented in b2bua/session_refresh.py."""
        raise NotImplementedError

    def _terminate(self, call: Call, reason: str, initiator: str, *, status_to_caller: int | None = None,
                   reason_phrase: str | None = None, sip_status: int | None = None, detail: str | None = None,
                   except_leg: LegRole | None = None) -> None:
        """Implemented in b2bua/termination.py."""
        raise NotImplementedError

    def _we_refreshed(self, call: Call, role: LegRole, resp: Response, method: str) -> None:
        """Implemented in b2bua/session_refresh.py."""
        raise NotImplementedError

    def _start_attempt(self, call: Call) -> None:
        """Implemented in b2bua/call_setup.py."""
        raise NotImplementedError

    def _route_gateways(self, call: Call, after: int) -> int | None:
        """Implemented in b2bua/gateway_probes.py."""
        raise NotImplementedError

    def _all_gateways_down(self, call: Call) -> None:
        """Implemented in b2bua/gateway_probes.py."""
        raise NotImplementedError

    def _gateway_invite_answered(self, gw: Gateway, status: int) -> None:
        """Implemented in b2bua/gateway_probes.py."""
        raise NotImplementedError

    def _gateway_invite_timeout(self, gw: Gateway) -> None:
        """Implemented in b2bua/gateway_probes.py."""
        raise NotImplementedError


def replace_top_via(req: Request | Response, via: Via) -> None:
    req.headers.replace_first("Via", str(via))


def user_of(value: str | None) -> str:
    if not value:
        return ""
    try:
        return parse_name_addr(value).uri.user or ""
    except SipSyntaxError:
        return ""


def callee_of(req: Request) -> str:
    try:
        user = req.parsed_uri.user
    except SipSyntaxError:
        user = None
    return user or user_of(req.headers.get("To"))


def refresher_label(leg: Leg) -> str | None:
    if not leg.has_timer:
        return None
    return "b2bua" if leg.we_refresh else "peer"


def describe(message: object) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.uri} (Call-ID {message.call_id})"
    if isinstance(message, Response):
        return f"{message.status} {message.reason} (Call-ID {message.call_id})"
    if isinstance(message, ParseError):
        return f"unparsable message ({message.reason})"
    return repr(message)[:200]
