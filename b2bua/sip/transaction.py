"""RFC 3261 §17 transaction state machines (plus RFC 6026 Accepted states) as pure objects.

Each transaction consumes inputs (``send_request``, ``receive_response``, ``receive_request``,
``send_response``, ``timer_fired``, ``transport_error``) and returns a list of actions for the
adapter to perform. Timers are named after the RFC letters; a ``StartTimer`` for a name that is
already scheduled replaces it. A timer firing that the transaction no longer has armed is ignored,
so adapters never have to be precise about cancellation races.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from b2bua.sip.message import Headers, Request, Response, identity_copy
from b2bua.sip.serializer import build_response, serialize

# ---------------------------------------------------------------------------------------------
# Configuration and actions
# ---------------------------------------------------------------------------------------------
# Actions are never changed once made, but are not frozen dataclasses: a frozen dataclass's
# __init__ goes through object.__setattr__ per field, and the layer makes several per message.


@dataclass(frozen=True)
class TimerConfig:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Timer D only has a lower bound in RFC 3261 (32 s on unreliable transports).
    timer_d: float = 32.0

    @classmethod
    def from_resend_interval_ms(cls, resend_interval_ms: float, **overrides: float) -> TimerConfig:
        return cls(t1=resend_interval_ms / 1000.0, **overrides)

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J, L, M."""
        return 64 * self.t1


DEFAULT_TIMERS = TimerConfig()


@dataclass(slots=True, unsafe_hash=True)
class Transmit:
    message: Request | Response

    def to_bytes(self) -> bytes:
        return serialize(self.message)


@dataclass(slots=True, unsafe_hash=True)
class StartTimer:
    name: str
    at: float  # absolute time, same clock as the ``now`` values passed in


@dataclass(slots=True, unsafe_hash=True)
class CancelTimer:
    name: str


@dataclass(slots=True, unsafe_hash=True)
class DeliverResponse:
    response: Response


@dataclass(slots=True, unsafe_hash=True)
class DeliverRequest:
    request: Request


@dataclass(slots=True, unsafe_hash=True)
class TransactionTimeout:
    reason: str = "timeout"


@dataclass(slots=True, unsafe_hash=True)
class TransportError:
    reason: str = "transport error"


@dataclass(slots=True, unsafe_hash=True)
class Terminated:
    pass


Action = (
    Transmit
    | StartTimer
    | CancelTimer
    | DeliverResponse
    | DeliverRequest
    | TransactionTimeout
    | TransportError
    | Terminated
)


class TxState(enum.Enum):
    INITIAL = "initial"
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026
    TERMINATED = "terminated"


class TransactionStateError(Exception):
    """The TU asked for something the current state does not allow (a programming error)."""


# ---------------------------------------------------------------------------------------------
# Message helpers tied to transactions
# ---------------------------------------------------------------------------------------------


def build_ack_for_non2xx(invite: Request, response: Response) -> Request:
    """RFC 3261 17.1.1.3: the ACK the INVITE client transaction sends for a 300-699."""
    h = Headers()
    top_via = invite.headers.get("Via")
    if top_via is not None:
        h.add("Via", top_via)
    for value in invite.headers.get_all("Route"):
        h.add("Route", value)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or invite.headers.get("To") or "")
    h.add("Call-ID", invite.headers.get("Call-ID") or "")
    h.add("CSeq", f"{invite.cseq.num} ACK")
    return Request("ACK", invite.uri, h)


def build_cancel(invite: Request) -> Request:
    """RFC 3261 9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE."""
    h = Headers()
    top_via = invite.headers.get("Via")
    if top_via is not None:
        h.add("Via", top_via)
    for value in invite.headers.get_all("Route"):
        h.add("Route", value)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", invite.headers.get("To") or "")
    h.add("Call-ID", invite.headers.get("Call-ID") or "")
    h.add("CSeq", f"{invite.cseq.num} CANCEL")
    return Request("CANCEL", invite.uri, h)


def ack_matches_2xx(ack: Request, response: Response) -> bool:
    """An ACK for a 2xx is matched by dialog and CSeq number (13.2.2.4 / 17.2.3 leave it to the TU)."""
    if ack.method != "ACK":
        return False
    try:
        return (
            ack.call_id == response.call_id
            and ack.from_.tag == response.from_.tag
            and ack.to.tag == response.to.tag
            and ack.cseq.num == response.cseq.num
        )
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Base machinery
# ---------------------------------------------------------------------------------------------


class Transaction:
    # Slots here and in each subclass: a busy server holds two transactions per fresh call for 32 s.
    __slots__ = ("_armed", "last_response", "reliable", "request", "state", "timers")
    is_server: bool = False
    is_invite: bool = False

    def __init__(self, request: Request, *, reliable: bool = False, timers: TimerConfig = DEFAULT_TIMERS):
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = TxState.INITIAL
        self.last_response: Response | None = None
        self._armed: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED

    @property
    def armed_timers(self) -> dict[str, float]:
        return dict(self._armed)

    def _send_first(self, state: TxState, retransmit: str, interval: float, timeout: str,
                    now: float) -> list[Action]:
        """A client transaction's first send: the retransmit timer (unreliable transports only) and
        the overall timeout (B for INVITE, F otherwise), both 64*T1 by default."""
        if self.state is not TxState.INITIAL:
            raise TransactionStateError("request already sent")
        self.state = state
        out: list[Action] = [Transmit(self.request)]
        if not self.reliable:
            out.append(self._start(retransmit, now + interval))
        out.append(self._start(timeout, now + self.timers.timeout))
        return out

    def _start(self, name: str, at: float) -> StartTimer:
        self._armed[name] = at
        return StartTimer(name, at)

    def _cancel(self, *names: str) -> list[Action]:
        out: list[Action] = []
        for name in names:
            if self._armed.pop(name, None) is not None:
                out.append(CancelTimer(name))
        return out

    def _terminate(self) -> list[Action]:
        out: list[Action] = [CancelTimer(name) for name in self._armed]
        self._armed.clear()
        self.state = TxState.TERMINATED
        out.append(Terminated())
        return out

    def timer_fired(self, name: str, now: float) -> list[Action]:
        if self.state is TxState.TERMINATED or name not in self._armed:
            return []
        # Schedule follow-ups from the deadline, not from ``now``, so a late event loop does not
        # stretch the whole retransmission sequence.
        due = self._armed.pop(name)
        return self._on_timer(name, due, now)

    def _on_timer(self, name: str, due: float, now: float) -> list[Action]:
        return []

    def transport_error(self, now: float, reason: str = "transport error") -> list[Action]:
        """RFC 3261 17.1.4 / 17.2.4: a send failure terminates the transaction and informs the TU."""
        if self.state is TxState.TERMINATED:
            return []
        return [TransportError(reason), *self._terminate()]


# ---------------------------------------------------------------------------------------------
# Client transactions
# ---------------------------------------------------------------------------------------------


class InviteClientTransaction(Transaction):
    """Figure 5 (timers A, B, D) with the RFC 6026 Accepted state (timer M) when ``rfc6026``."""
    __slots__ = ("_a_interval", "ack", "rfc6026")

    is_invite = True

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        rfc6026: bool = True,
    ):
        super().__init__(request, reliable=reliable, timers=timers)
        self.rfc6026 = rfc6026
        self.ack: Request | None = None
        self._a_interval = timers.t1

    def send_request(self, now: float) -> list[Action]:
        return self._send_first(TxState.CALLING, "A", self._a_interval, "B", now)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        state = self.state
        status = response.status
        if state in (TxState.CALLING, TxState.PROCEEDING):
            if status < 200:
                self.state = TxState.PROCEEDING
                # Figure 5: once a provisional arrives, retransmissions stop and timer B no longer
                # applies; the TU owns the overall INVITE timeout (Timer C / its own policy).
                return [*self._cancel("A", "B"), DeliverResponse(response)]
            if status < 300:
                out = [*self._cancel("A", "B"), DeliverResponse(response)]
                if self.rfc6026:
                    self.state = TxState.ACCEPTED
                    # Accepted only passes further 2xx to the TU for 32 s (timer M): of the request it
                    # needs no more than its identity (the TU holds what it needs itself).
                    self.request = identity_copy(self.request)
                    out.append(self._start("M", now + self.timers.timeout))
                    return out
                return [*out, *self._terminate()]
            self.state = TxState.COMPLETED
            self.ack = build_ack_for_non2xx(self.request, response)
            self.request = identity_copy(self.request)  # Completed resends only the ACK (timer D)
            out = [*self._cancel("A", "B"), Transmit(self.ack), DeliverResponse(response)]
            if self.reliable:
                return [*out, *self._terminate()]
            out.append(self._start("D", now + self.timers.timer_d))
            return out
        if state is TxState.COMPLETED and status >= 300 and self.ack is not None:
            # Retransmitted final response: our ACK was lost, resend it; the TU already knows.
            return [Transmit(self.ack)]
        if state is TxState.ACCEPTED and 200 <= status < 300:
            # RFC 6026 7.2: further 2xx (retransmissions or forks) go to the TU, which ACKs them.
            return [DeliverResponse(response)]
        return []

    def _on_timer(self, name: str, due: float, now: float) -> list[Action]:
        if name == "A" and self.state is TxState.CALLING:
            self._a_interval *= 2  # no T2 cap for INVITE (17.1.1.2)
            return [Transmit(self.request), self._start("A", due + self._a_interval)]
        if name == "B" and self.state is TxState.CALLING:
            return [TransactionTimeout("timer B"), *self._terminate()]
        if name in ("D", "M"):
            return self._terminate()
        return []


class NonInviteClientTransaction(Transaction):
    """Figure 6 (timers E, F, K)."""
    __slots__ = ("_e_interval",)

    def __init__(self, request: Request, *, reliable: bool = False, timers: TimerConfig = DEFAULT_TIMERS):
        super().__init__(request, reliable=reliable, timers=timers)
        self._e_interval = timers.t1

    def send_request(self, now: float) -> list[Action]:
        return self._send_first(TxState.TRYING, "E", self._e_interval, "F", now)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return []  # Completed absorbs retransmitted finals
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [DeliverResponse(response)]
        self.state = TxState.COMPLETED
        self.last_response = response
        out = [*self._cancel("E", "F"), DeliverResponse(response)]
        if self.reliable:
            return [*out, *self._terminate()]
        out.append(self._start("K", now + self.timers.t4))
        return out

    def _on_timer(self, name: str, due: float, now: float) -> list[Action]:
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            if self.state is TxState.TRYING:
                self._e_interval = min(2 * self._e_interval, self.timers.t2)
            else:
                self._e_interval = self.timers.t2
            return [Transmit(self.request), self._start("E", due + self._e_interval)]
        if name == "F" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            return [TransactionTimeout("timer F"), *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


# ---------------------------------------------------------------------------------------------
# Server transactions
# ---------------------------------------------------------------------------------------------


class InviteServerTransaction(Transaction):
    """Figure 7 (timers G, H, I) with the RFC 6026 Accepted state (timer L) when ``rfc6026``.

    With ``auto_trying`` the 100 Trying goes out as soon as the INVITE arrives, which satisfies the
    17.2.1 "within 200 ms" rule without the adapter needing a timer for it.
    """
    __slots__ = ("_g_interval", "auto_trying", "rfc6026")

    is_server = True
    is_invite = True

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        rfc6026: bool = True,
        auto_trying: bool = True,
    ):
        super().__init__(request, reliable=reliable, timers=timers)
        self.rfc6026 = rfc6026
        self.auto_trying = auto_trying
        self._g_interval = timers.t1

    def receive_request(self, request: Request, now: float) -> list[Action]:
        state = self.state
        if state is TxState.INITIAL:
            self.state = TxState.PROCEEDING
            out: list[Action] = []
            if self.auto_trying:
                self.last_response = build_response(request, 100)
                out.append(Transmit(self.last_response))
            out.append(DeliverRequest(request))
            return out
        if request.method == "ACK":
            if state is TxState.COMPLETED:
                self.state = TxState.CONFIRMED
                out = self._cancel("G", "H")
                if self.reliable:
                    return [*out, *self._terminate()]
                out.append(self._start("I", now + self.timers.t4))
                return out
            if state is TxState.ACCEPTED:
                # RFC 6026 8.6: an ACK matching the Accepted transaction belongs to the TU.
                return [DeliverRequest(request)]
            return []
        # A retransmitted INVITE: answer with the latest response, never bother the TU again.
        if state in (TxState.PROCEEDING, TxState.COMPLETED) and self.last_response is not None:
            return [Transmit(self.last_response)]
        return []

    def send_response(self, response: Response, now: float) -> list[Action]:
        state = self.state
        status = response.status
        if state is TxState.PROCEEDING:
            if status < 200:
                self.last_response = response
                return [Transmit(response)]
            if status < 300:
                self.last_response = response
                if self.rfc6026:
                    self.state = TxState.ACCEPTED
                    # Accepted answers no retransmitted INVITE itself (the TU retransmits its 2xx,
                    # 13.3.1.4), so for the 32 s of timer L it keeps neither the 2xx nor more of the
                    # request than its identity: a server holding thousands of fresh calls holds these.
                    self.last_response = None
                    self.request = identity_copy(self.request)
                    return [Transmit(response), self._start("L", now + self.timers.timeout)]
                return [Transmit(response), *self._terminate()]
            self.last_response = response
            self.state = TxState.COMPLETED
            out: list[Action] = [Transmit(response)]
            if not self.reliable:
                out.append(self._start("G", now + self._g_interval))
            out.append(self._start("H", now + self.timers.timeout))
            return out
        if state is TxState.ACCEPTED and 200 <= status < 300:
            # The TU retransmits its 2xx until ACK (13.3.1.4); let those through the transaction.
            return [Transmit(response)]
        raise TransactionStateError(f"cannot send {status} in state {state.value}")

    def _on_timer(self, name: str, due: float, now: float) -> list[Action]:
        if name == "G" and self.state is TxState.COMPLETED and self.last_response is not None:
            self._g_interval = min(2 * self._g_interval, self.timers.t2)
            return [Transmit(self.last_response), self._start("G", due + self._g_interval)]
        if name == "H" and self.state is TxState.COMPLETED:
            return [TransactionTimeout("timer H: no ACK"), *self._terminate()]
        if name in ("I", "L"):
            return self._terminate()
        return []


class NonInviteServerTransaction(Transaction):
    """Figure 8 (timer J)."""
    __slots__ = ()

    is_server = True

    def receive_request(self, request: Request, now: float) -> list[Action]:
        if self.state is TxState.INITIAL:
            self.state = TxState.TRYING
            return [DeliverRequest(request)]
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self.last_response is not None:
            return [Transmit(self.last_response)]
        return []  # Trying: the TU has not answered yet; the retransmission is simply absorbed

    def send_response(self, response: Response, now: float) -> list[Action]:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            raise TransactionStateError(f"cannot send {response.status} in state {self.state.value}")
        self.last_response = response
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [Transmit(response)]
        self.state = TxState.COMPLETED
        if self.reliable:
            return [Transmit(response), *self._terminate()]
        return [Transmit(response), self._start("J", now + self.timers.timeout)]

    def _on_timer(self, name: str, due: float, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction


# ---------------------------------------------------------------------------------------------
# 2xx retransmission (a UAS core duty, 13.3.1.4)
# ---------------------------------------------------------------------------------------------


class Invite2xxRetransmitter:
    """Retransmits a 2xx to INVITE until the ACK arrives.

    The INVITE server transaction is gone (or Accepted) once the 2xx is sent, so the UAS core must
    do this itself: interval starts at T1, doubles up to T2, and after 64*T1 the core gets
    ``TransactionTimeout("no ACK")`` and should end the dialog with a BYE (13.3.1.4).
    """

    # Final: class constants (compiled by mypyc, a plain class attribute would be an instance field).
    RETRANSMIT: Final = "2xx-retransmit"
    GIVE_UP: Final = "2xx-timeout"

    def __init__(self, response: Response, timers: TimerConfig = DEFAULT_TIMERS):
        self.response = response
        self.timers = timers
        self._interval = timers.t1
        self._armed: dict[str, float] = {}
        self.acked = False
        self.done = False

    def start(self, now: float) -> list[Action]:
        self._armed = {self.RETRANSMIT: now + self._interval, self.GIVE_UP: now + self.timers.timeout}
        return [
            Transmit(self.response),
            StartTimer(self.RETRANSMIT, self._armed[self.RETRANSMIT]),
            StartTimer(self.GIVE_UP, self._armed[self.GIVE_UP]),
        ]

    def timer_fired(self, name: str, now: float) -> list[Action]:
        if self.done or name not in self._armed:
            return []
        due = self._armed.pop(name)
        if name == self.RETRANSMIT:
            self._interval = min(2 * self._interval, self.timers.t2)
            self._armed[name] = due + self._interval
            return [Transmit(self.response), StartTimer(name, self._armed[name])]
        return [TransactionTimeout("no ACK"), *self._finish()]

    def matches_ack(self, ack: Request) -> bool:
        return ack_matches_2xx(ack, self.response)

    def ack_received(self, ack: Request, now: float) -> list[Action]:
        """Stop retransmitting if ``ack`` belongs to our 2xx; returns [] for unrelated ACKs."""
        if self.done or not self.matches_ack(ack):
            return []
        self.acked = True
        return self._finish()

    def stop(self) -> list[Action]:
        return [] if self.done else self._finish()

    def _finish(self) -> list[Action]:
        out: list[Action] = [CancelTimer(name) for name in self._armed]
        self._armed.clear()
        self.done = True
        out.append(Terminated())
        return out
