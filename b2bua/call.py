"""One B2BUA call: the caller leg (we are its UAS), the carrier leg (we are its UAC), and the
bookkeeping that ties the two together. Plain state only; the behaviour lives in ``core``.

The two legs share nothing on the wire: each has its own Call-ID, tags, CSeq space, Via and
Contact (topology hiding), so every field here is per leg.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from b2bua.actions import Address
from b2bua.credit_book import Grant
from b2bua.sip.dialog import Dialog
from b2bua.sip.message import Request, Response
from b2bua.sip.session_timer import SessionTimer, UacNegotiation, UasDecision
from b2bua.sip.transaction import Invite2xxRetransmitter
from b2bua.sip.transaction_layer import TransactionKey
from sipledger.config import Account, Gateway

LegRole = Literal["caller", "carrier"]


class CallState(enum.Enum):
    ROUTING = "routing"  # carrier INVITE sent, no answer yet
    ANSWERED = "answered"  # 2xx relayed to the caller
    ENDED = "ended"  # call.terminated emitted; only late messages are still absorbed


@dataclass(slots=True)
class Leg:
    role: LegRole
    transport: str  # "udp" | "tcp"
    dialog: Dialog | None = None
    # Where the peer's requests come from; on TCP our requests go back over that connection.
    peer_source: Address | None = None
    timer_mode: Literal["timer", "no_timer"] = "no_timer"
    interval: int | None = None
    session: SessionTimer | None = None
    allows_update: bool = False
    local_sdp: bytes = b""  # the last session description we sent on this leg (refresh re-INVITEs)
    local_sdp_type: str = "application/sdp"
    refresh_key: TransactionKey | None = None  # our outstanding refresh
    refresh_method: str | None = None
    probe_key: TransactionKey | None = None
    invite_busy: bool = False  # an INVITE transaction (either direction) is open on this leg
    retransmitter: Invite2xxRetransmitter | None = None  # our 2xx to a (re-)INVITE from this peer
    # Our ACK for the peer's 2xx, as sent (re-sent for 2xx retransmissions), and its CSeq number.
    last_ack: bytes | None = None
    last_ack_cseq: int = -1
    rt_dest: Address | None = None  # where the retransmitted 2xx goes

    @property
    def has_timer(self) -> bool:
        return self.timer_mode == "timer" and self.session is not None

    @property
    def we_refresh(self) -> bool:
        return self.session is not None and self.session.we_refresh


@dataclass(slots=True)
class Attempt:
    """One INVITE towards one gateway (a 422 retry reuses the attempt with a new CSeq)."""

    number: int
    gateway: Gateway
    invite: Request
    key: TransactionKey | None
    dest: Address
    negotiation: UacNegotiation
    provisional: bool = False
    final: bool = False
    abandoned: bool = False  # given up on (timeout / cancelled); a late 2xx is ACKed and BYEd
    cancel_sent: bool = False


@dataclass(slots=True)
class Relay:
    """An in-dialog request relayed from ``origin`` to the other leg; answer maps back."""

    origin: LegRole
    server_key: TransactionKey
    request: Request
    decision: UasDecision | None


@dataclass(slots=True)
class Call:
    id: str
    account: Account
    caller_user: str
    callee: str
    source: Address
    created_at: float
    # The caller's INVITE (with our received/rport stamped on its top Via) until the call is answered;
    # then None: an answered call never answers it again (its server transaction keeps its own copy
    # for retransmissions), and dropping it saves a third of what a held call keeps.
    invite: Request | None
    server_key: TransactionKey
    to_tag: str
    caller: Leg
    carrier: Leg
    uas_decision: UasDecision
    invite_cseq: int = 0  # the caller INVITE's CSeq number (kept when the INVITE is released)
    state: CallState = CallState.ROUTING
    prefix: str = ""
    gateways: tuple[Gateway, ...] = ()
    gateway_index: int = 0
    attempt: Attempt | None = None
    attempts: list[Attempt] = field(default_factory=list)
    final_sent: bool = False  # a final response went to the caller's INVITE
    answered_at: float | None = None
    ended_at: float | None = None
    cancelled: bool = False  # the caller CANCELled or the system gave up before an answer
    slot_held: bool = True  # the account's concurrency slot, released exactly once
    # Armed call-level timer names: a list, not a set (a handful each; a set costs 216 bytes a call).
    timers: list[str] = field(default_factory=list)
    limit_reason: str | None = None
    limit_at: float | None = None
    carrier_ack_waits_for_caller: bool = False  # delayed offer: the caller's ACK has the answer
    pending_carrier_ok: Response | None = None
    late_byes: set[str] = field(default_factory=set)  # late 2xx answers (Call-ID|tag) already hung up
    progress_emitted: bool = False
    credit: Grant | None = None  # a prepaid call's limit and hold (b2bua/credit.py)

    def leg(self, role: LegRole) -> Leg:
        return self.caller if role == "caller" else self.carrier

    def other(self, role: LegRole) -> Leg:
        return self.carrier if role == "caller" else self.caller

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    @property
    def answered(self) -> bool:
        return self.state is CallState.ANSWERED


@dataclass(slots=True)
class EndedAttempt:
    """What is left of an ``Attempt`` once its call ended: enough to ACK, CANCEL or hang up a
    late answer of the carrier (its INVITE, where it went, and what was already done)."""

    invite: Request
    dest: Address
    final: bool
    cancel_sent: bool
    abandoned: bool = True


@dataclass(slots=True)
class EndedCall:
    """Tombstone of an ended call, kept for ``linger`` seconds so late messages (a CANCEL that
    crossed our final response, a late or retransmitted carrier 2xx) get the right answer. It
    holds no parsed message of the caller and no leg state, so thousands of them stay cheap for
    the garbage collector; it quacks like an ended ``Call`` where the core may still meet it."""

    id: str
    server_key: TransactionKey
    ended_at: float
    attempts: list[EndedAttempt]
    late_byes: set[str]  # shared with the Call it replaces: one late answer is hung up once

    state: CallState = CallState.ENDED
    attempt: None = None
    final_sent: bool = True
    ended: bool = True
    answered: bool = False
