"""An asyncio UDP SIP endpoint around the sans-I/O core.

The core (``b2bua.sip``) never touches sockets or clocks: it returns actions. This module is the
only place in the simulator that performs them: it owns one UDP socket, one ``TransactionLayer``,
one ``TimerQueue`` driven by a single timer task, and a table that routes every delivered message
to the call object that owns its Call-ID. Calls never see bytes, sockets or timer bookkeeping.

The clock is ``loop.time()`` everywhere, so deadlines computed by the core and the ``now`` values
passed back into it always share one origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, Self

from b2bua.sip.message import Request, Response, SipSyntaxError, parse_name_addr, parse_uri
from b2bua.sip.parser import ParseError, parse_message
from b2bua.sip.serializer import build_response, serialize
from b2bua.sip.transaction import (
    Action,
    CancelTimer,
    DeliverRequest,
    DeliverResponse,
    StartTimer,
    Terminated,
    TimerConfig,
    TransactionStateError,
    TransactionTimeout,
    Transmit,
    TransportError,
)
from b2bua.sip.transaction_layer import (
    LayerAction,
    TimerQueue,
    TransactionKey,
    TransactionLayer,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

Addr = tuple[str, int]

# Scaled-down RFC 3261 timers: loopback never loses datagrams, so retransmissions only matter for
# peers that went silent, and a demo cannot wait 32 s (64*T1 with T1=500 ms) for each of those.
SIM_TIMERS = TimerConfig(t1=0.25, t2=2.0, t4=2.5, timer_d=5.0)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"


class CallHandler(Protocol):
    """What a call object registered for a Call-ID receives from the endpoint."""

    def on_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None: ...

    def on_response(self, response: Response, key: TransactionKey | None) -> None: ...


NewRequestHandler = Callable[[Request, "TransactionKey | None", Addr], None]
Observer = Callable[[Request | Response, Addr], None]
Machine = Callable[[str, float], list[Action]]


@dataclass
class ClientTransaction:
    """Handle of one request we sent: provisional responses go to ``on_provisional`` as they come,
    ``final`` resolves with the final response, or None on timeout/transport error (``error``)."""

    key: TransactionKey | None
    request: Request
    final: asyncio.Future[Response | None]
    on_provisional: Callable[[Response], None] | None = None
    # Called synchronously with the final response, before ``final`` resolves: a UAC must have its
    # dialog (and ACK) in place before any request the peer sends right after its 2xx is handled,
    # and a future's waiter only runs after the datagrams already read in the same loop turn.
    on_final: Callable[[Response], None] | None = None
    error: str | None = None


@dataclass
class EndpointStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    bad_datagrams: int = 0
    handler_errors: int = 0
    unmatched: int = 0
    dropped_silenced: int = 0


@dataclass
class _MachineState:
    """A sans-I/O object with named timers living outside the layer (the UAS 2xx retransmitter)."""

    fire: Machine
    dest: Addr
    on_timeout: Callable[[str], None] | None
    names: set[str] = field(default_factory=set)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.endpoint._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is gone: the transaction timers already cover it.
        log.debug("%s: socket error %s", self.endpoint.name, exc)


class SipEndpoint:
    """One UDP SIP endpoint on ``host:port`` (0 = any free port)."""

    def __init__(
        self,
        name: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timers: TimerConfig = SIM_TIMERS,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self._requested_port = port
        self.timers = timers
        self.rng = rng if rng is not None else random.Random()
        # Transaction users decide when to send 100 Trying: a "no_answer" carrier must stay mute.
        self.layer = TransactionLayer(timers=timers, rng=self.rng, auto_trying=False)
        self.stats = EndpointStats()
        self.on_new_request: NewRequestHandler | None = None
        self._timerq = TimerQueue()
        self._handlers: dict[str, CallHandler] = {}
        self._silenced: dict[str, Observer] = {}
        self._dest: dict[TransactionKey, Addr] = {}
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._machines: dict[TransactionKey, _MachineState] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._port = 0
        self._seq = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> SipEndpoint:
        if self._transport is not None:
            return self
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self._requested_port)
        )
        self._transport = transport
        self._port = int(transport.get_extra_info("sockname")[1])
        self._timer_task = loop.create_task(self._timer_loop(), name=f"sip-timers-{self.name}")
        log.debug("%s listening on %s:%d", self.name, self.host, self._port)
        return self

    async def close(self) -> None:
        """Stop the timer task and close the socket; pending client transactions resolve to None."""
        task, self._timer_task = self._timer_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for tx in list(self._clients.values()):
            if not tx.final.done():
                tx.error = "endpoint closed"
                tx.final.set_result(None)
        self._clients.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> SipEndpoint:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._transport is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> Addr:
        return (self.host, self._port)

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self._port}"

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- identifiers --------------------------------------------------------------------------

    def new_branch(self) -> str:
        return self.layer.new_branch()

    def new_tag(self) -> str:
        return self.layer.new_tag()

    def new_call_id(self) -> str:
        # Never from the (possibly seeded) rng: two demo runs with one seed must not reuse Call-IDs,
        # which end up as keys in the event log and the CDR store.
        self._seq += 1
        return f"{secrets.token_hex(8)}-{self._seq}@{self.name}"

    def contact(self, user: str) -> str:
        return f"<sip:{user}@{self.sent_by}>"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {self.sent_by};branch={branch};rport"

    # -- call table ---------------------------------------------------------------------------

    def register(self, call_id: str, handler: CallHandler) -> None:
        self._handlers[call_id] = handler
        self._silenced.pop(call_id, None)

    def unregister(self, call_id: str, handler: CallHandler | None = None) -> None:
        if handler is None or self._handlers.get(call_id) is handler:
            self._handlers.pop(call_id, None)
        self._silenced.pop(call_id, None)

    def silence(self, call_id: str, observer: Observer) -> None:
        """Make the endpoint behave, for this Call-ID only, like a device that vanished: datagrams are
        shown to ``observer`` and then dropped before the transaction layer, so nothing is answered,
        acknowledged or retransmitted."""
        self._handlers.pop(call_id, None)
        self._silenced[call_id] = observer

    # -- sending ------------------------------------------------------------------------------

    def send_request(
        self,
        request: Request,
        dest: Addr | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_final: Callable[[Response], None] | None = None,
    ) -> ClientTransaction:
        """Start a client transaction (or just transmit an ACK). ``dest`` defaults to the next hop
        from the top Route or the Request-URI."""
        target = dest or next_hop(request)
        loop = asyncio.get_running_loop()
        handle = ClientTransaction(None, request, loop.create_future(), on_provisional, on_final)
        if request.method == "ACK":
            self._transmit(request, target)
            handle.final.set_result(None)
            return handle
        key = client_key(request)
        handle.key = key
        self._dest[key] = target
        self._clients[key] = handle
        try:
            _, actions = self.layer.send_request(request, self.now())
        except ValueError as exc:
            self._dest.pop(key, None)
            self._clients.pop(key, None)
            handle.error = str(exc)
            handle.final.set_result(None)
            return handle
        self._perform(actions, target)
        return handle

    async def request(
        self,
        request: Request,
        dest: Addr | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Response | None:
        """Send ``request`` and wait for its final response (None: timed out / failed)."""
        return await self.send_request(request, dest, on_provisional=on_provisional).final

    def send_stateless(self, message: Request | Response, dest: Addr) -> None:
        """Transmit outside any transaction (2xx ACKs, re-ACKs of retransmitted 2xx)."""
        self._transmit(message, dest)

    def respond(self, key: TransactionKey | None, response: Response) -> bool:
        """Answer through the server transaction ``key``; False when it no longer exists."""
        if key is None:
            return False
        try:
            actions = self.layer.send_response(key, response, self.now())
        except (KeyError, TransactionStateError) as exc:
            log.debug("%s: cannot send %d: %s", self.name, response.status, exc)
            return False
        self._perform(actions, self._dest.get(key))
        return True

    def reply(
        self,
        request: Request,
        key: TransactionKey | None,
        status: int,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        response = build_response(request, status, to_tag=to_tag, headers=headers or [], body=body)
        self.respond(key, response)
        return response

    # -- out-of-layer state machines ----------------------------------------------------------

    def start_machine(
        self,
        key: TransactionKey,
        fire: Machine,
        start_actions: list[Action],
        dest: Addr,
        *,
        on_timeout: Callable[[str], None] | None = None,
        skip_first_transmit: bool = False,
    ) -> None:
        """Drive a core object with its own named timers (``Invite2xxRetransmitter``) from this
        endpoint's timer task. ``skip_first_transmit``: the first copy already went out through
        the transaction layer."""
        self._machines[key] = _MachineState(fire, dest, on_timeout)
        actions = list(start_actions)
        if skip_first_transmit:
            for i, action in enumerate(actions):
                if isinstance(action, Transmit):
                    del actions[i]
                    break
        self.feed_machine(key, actions)

    def feed_machine(self, key: TransactionKey, actions: list[Action]) -> None:
        state = self._machines.get(key)
        if state is None:
            return
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action.message, state.dest)
            elif isinstance(action, StartTimer):
                state.names.add(action.name)
                self._timerq.schedule(key, action.name, action.at)
            elif isinstance(action, CancelTimer):
                state.names.discard(action.name)
                self._timerq.cancel(key, action.name)
            elif isinstance(action, TransactionTimeout | TransportError):
                if state.on_timeout is not None:
                    self._safe(state.on_timeout, action.reason)
            elif isinstance(action, Terminated):
                for name in state.names:
                    self._timerq.cancel(key, name)
                self._machines.pop(key, None)
                break
        self._wake.set()

    # -- internals: receive -------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: Addr) -> None:
        self.stats.datagrams_in += 1
        try:
            message = parse_message(data)
        except ParseError as exc:
            self.stats.bad_datagrams += 1
            log.warning("%s: dropped bad datagram from %s:%d: %s", self.name, *source, exc.reason)
            return
        except Exception:  # the parser is total by design; this is belt and braces
            self.stats.bad_datagrams += 1
            log.exception("%s: parser crashed on a datagram from %s:%d", self.name, *source)
            return
        if message is None:
            return  # keep-alive CRLF
        try:
            call_id = message.call_id or ""
            observer = self._silenced.get(call_id)
            if observer is not None:
                self.stats.dropped_silenced += 1
                observer(message, source)
                return
            if isinstance(message, Request):
                self._receive_request(message, source)
            else:
                self._receive_response(message)
        except (SipSyntaxError, ValueError) as exc:
            # Parsed but semantically broken (e.g. an unparsable Via): drop, never crash the loop.
            self.stats.bad_datagrams += 1
            log.warning("%s: dropped malformed message from %s:%d: %s", self.name, *source, exc)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: error handling a message from %s:%d", self.name, *source)

    def _receive_request(self, request: Request, source: Addr) -> None:
        key = server_key(request)
        if request.method != "ACK" and key not in self._dest:
            # Responses go back where the request came from (RFC 3581 symmetric response routing).
            self._dest[key] = source
        actions = self.layer.receive_request(request, self.now())
        self._perform(actions, source, source=source)

    def _receive_response(self, response: Response) -> None:
        actions = self.layer.receive_response(response, self.now())
        self._perform(actions, None)

    # -- internals: actions -------------------------------------------------------------------

    def _perform(
        self, actions: list[LayerAction], fallback: Addr | None, *, source: Addr | None = None
    ) -> None:
        for item in actions:
            action = item.action
            key = item.key
            if isinstance(action, Transmit):
                dest = self._dest.get(key, fallback) if key is not None else fallback
                if dest is None:
                    log.warning("%s: no destination for %s", self.name, _first_line(action.message))
                else:
                    self._transmit(action.message, dest)
            elif isinstance(action, StartTimer):
                self._timerq.schedule(key, action.name, action.at)
                self._wake.set()
            elif isinstance(action, CancelTimer):
                self._timerq.cancel(key, action.name)
            elif isinstance(action, DeliverRequest):
                self._deliver_request(action.request, key, source or fallback or ("0.0.0.0", 0))
            elif isinstance(action, DeliverResponse):
                self._deliver_response(action.response, key)
            elif isinstance(action, TransactionTimeout | TransportError):
                self._fail_client(key, action.reason)
            elif isinstance(action, Terminated) and key is not None:
                self._dest.pop(key, None)
                self._fail_client(key, "transaction terminated")
                self._clients.pop(key, None)

    def _fail_client(self, key: TransactionKey | None, reason: str) -> None:
        handle = self._clients.get(key) if key is not None else None
        if handle is not None and not handle.final.done():
            handle.error = reason
            handle.final.set_result(None)

    def _deliver_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        handler = self._handlers.get(request.call_id or "")
        if handler is not None:
            handler.on_request(request, key, source)
            return
        if request.method == "ACK":
            return  # an ACK for a call we forgot: nothing to answer
        if not request.to.tag and self.on_new_request is not None and request.method == "INVITE":
            self.on_new_request(request, key, source)
            return
        self.stats.unmatched += 1
        if not request.to.tag and request.method == "OPTIONS":
            # Out-of-dialog OPTIONS is a reachability probe (gateway monitoring): we are up.
            self.reply(request, key, 200, to_tag=self.new_tag(), headers=[("Allow", ALLOW)])
        elif not request.to.tag and request.method == "INVITE":
            self.reply(request, key, 480, to_tag=self.new_tag())
        else:
            self.reply(request, key, 481)

    def _deliver_response(self, response: Response, key: TransactionKey | None) -> None:
        handle = self._clients.get(key) if key is not None else None
        if handle is not None and not handle.final.done():
            if response.status < 200:
                if handle.on_provisional is not None:
                    self._safe(handle.on_provisional, response)
            else:
                if handle.on_final is not None:
                    self._safe(handle.on_final, response)
                handle.final.set_result(response)
            return
        # Not for a waiting transaction: a 2xx retransmission (the call re-ACKs it) or a stray.
        handler = self._handlers.get(response.call_id or "")
        if handler is not None:
            handler.on_response(response, key)
        else:
            self.stats.unmatched += 1

    def _transmit(self, message: Request | Response, dest: Addr) -> None:
        if self._transport is None:
            return
        try:
            self._transport.sendto(serialize(message), dest)
            self.stats.datagrams_out += 1
        except OSError as exc:
            log.warning("%s: send to %s:%d failed: %s", self.name, dest[0], dest[1], exc)

    def _safe(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: callback failed", self.name)

    # -- internals: timers --------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Sleep until the earliest deadline (or until a new timer is armed), then fire what is due."""
        while True:
            deadline = self._timerq.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            for key, name in self._timerq.pop_due(self.now()):
                try:
                    self._fire(key, name)
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("%s: timer %s failed", self.name, name)

    def _fire(self, key: TransactionKey | None, name: str) -> None:
        if key is None:
            return
        machine = self._machines.get(key)
        if machine is not None:
            machine.names.discard(name)
            self.feed_machine(key, machine.fire(name, self.now()))
            return
        self._perform(self.layer.timer_fired(key, name, self.now()), self._dest.get(key))


def next_hop(request: Request) -> Addr:
    """Where a request goes: the first Route if any (loose routing), else the Request-URI."""
    route = request.headers.get("Route")
    uri = parse_name_addr(route).uri if route else parse_uri(request.uri)
    return uri.host.strip("[]"), uri.port or 5060


def _first_line(message: Request | Response) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.uri}"
    return f"{message.status} {message.reason}"


class EndpointRole:
    """A caller or carrier built on one endpoint: its address, and ``async with`` for start/close."""

    endpoint: SipEndpoint

    async def start(self) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def address(self) -> Addr:
        return self.endpoint.address
