"""Routes messages to transactions (RFC 3261 17.1.3 / 17.2.3) and owns the transaction table.

The layer never reads a clock. ``TransactionLayer`` returns ``StartTimer`` actions with absolute
deadlines tagged with the transaction key, and its user calls ``timer_fired(key, name, now)`` when one
is due. ``TimedTransactionLayer`` (the B2BUA's) keeps those timers in its own deadline queue instead:
its user only learns the earliest deadline (``wake_hint``) and calls ``expire(now)`` then.
"""

from __future__ import annotations

import heapq
import random
from typing import NamedTuple, cast

from b2bua.sip.deadlines import DeadlineQueue
from b2bua.sip.message import MAGIC_COOKIE, Request, Response, SipSyntaxError
from b2bua.sip.randomness import UrandomPool
from b2bua.sip.transaction import (
    DEFAULT_TIMERS,
    Action,
    CancelTimer,
    DeliverRequest,
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    StartTimer,
    Terminated,
    TimerConfig,
    Transaction,
    Transmit,
)


class TransactionKey(NamedTuple):
    """Matching key. Client keys leave host/port empty: 17.1.3 matches on branch + CSeq method.

    A NamedTuple: made for every message and hashed on every table lookup, both in C."""

    kind: str  # "client" | "server"
    branch: str
    host: str
    port: int
    method: str


class LayerAction(NamedTuple):
    """An action plus the transaction it came from (None for stateless pass-through)."""

    key: TransactionKey | None
    action: Action


def client_key(message: Request | Response) -> TransactionKey:
    """Key of the client transaction a response (or our own request) belongs to."""
    branch = message.top_via.branch or ""
    method = message.cseq.method
    return TransactionKey("client", branch, "", 0, method)


def server_key(request: Request) -> TransactionKey:
    """17.2.3 key. ACK maps to the INVITE transaction; CANCEL keeps its own method, so it gets its
    own transaction while sharing the INVITE's branch."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    host, port = via.sent_by
    if via.is_rfc3261_branch:
        return TransactionKey("server", via.branch or "", host, port, method)
    # RFC 2543 peers: no usable branch, so fall back to the fields 17.2.3 lists. The To tag is left
    # out on purpose: the ACK carries the tag we added while the INVITE did not.
    from_tag = request.from_.tag or ""
    legacy = f"2543|{request.call_id}|{from_tag}|{request.cseq.num}|{request.uri}|{via.branch or ''}"
    return TransactionKey("server", legacy, host, port, method)


class TransactionLayer:
    def __init__(
        self,
        *,
        timers: TimerConfig = DEFAULT_TIMERS,
        rng: random.Random | None = None,
        rfc6026: bool = True,
        auto_trying: bool = True,
    ) -> None:
        self.timers = timers
        self.rng = rng if rng is not None else UrandomPool()
        self.rfc6026 = rfc6026
        self.auto_trying = auto_trying
        self.transactions: dict[TransactionKey, Transaction] = {}

    # -- identifiers --------------------------------------------------------------------------

    def new_branch(self) -> str:
        return f"{MAGIC_COOKIE}{self.rng.getrandbits(80):020x}"

    def new_tag(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    # -- table --------------------------------------------------------------------------------

    def get(self, key: TransactionKey) -> Transaction | None:
        return self.transactions.get(key)

    def __len__(self) -> int:
        return len(self.transactions)

    def _wrap(self, key: TransactionKey | None, actions: list[Action]) -> list[LayerAction]:
        if key is not None and any(isinstance(a, Terminated) for a in actions):
            self.transactions.pop(key, None)
        return [LayerAction(key, a) for a in actions]

    # -- client side --------------------------------------------------------------------------

    def send_request(
        self, request: Request, now: float, *, reliable: bool = False
    ) -> tuple[TransactionKey | None, list[LayerAction]]:
        """Start a client transaction. ACK is not a transaction (2xx ACKs are end-to-end) and is
        simply transmitted."""
        if request.method == "ACK":
            return None, [LayerAction(None, Transmit(request))]
        via = request.top_via
        if not via.is_rfc3261_branch:
            raise ValueError("outgoing requests need a z9hG4bK branch; use new_branch()")
        key = client_key(request)
        if key in self.transactions:
            raise ValueError(f"duplicate client transaction {key}")
        tx: InviteClientTransaction | NonInviteClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(request, reliable=reliable, timers=self.timers, rfc6026=self.rfc6026)
        else:
            tx = NonInviteClientTransaction(request, reliable=reliable, timers=self.timers)
        self.transactions[key] = tx
        return key, self._wrap(key, tx.send_request(now))

    def receive_response(self, response: Response, now: float) -> list[LayerAction]:
        try:
            key = client_key(response)
        except SipSyntaxError:
            return []
        tx = self.transactions.get(key)
        if isinstance(tx, InviteClientTransaction | NonInviteClientTransaction):
            return self._wrap(key, tx.receive_response(response, now))
        # 18.1.2: unmatched responses go to the core (e.g. 2xx retransmissions that need re-ACKing).
        return [LayerAction(None, DeliverResponse(response))]

    # -- server side --------------------------------------------------------------------------

    def receive_request(self, request: Request, now: float, *, reliable: bool = False) -> list[LayerAction]:
        key = server_key(request)
        tx = self.transactions.get(key)
        if isinstance(tx, InviteServerTransaction | NonInviteServerTransaction):
            return self._wrap(key, tx.receive_request(request, now))
        if request.method == "ACK":
            # No INVITE transaction: this is the ACK for a 2xx, which belongs to the dialog.
            return [LayerAction(None, DeliverRequest(request))]
        new_tx: InviteServerTransaction | NonInviteServerTransaction
        if request.method == "INVITE":
            new_tx = InviteServerTransaction(
                request,
                reliable=reliable,
                timers=self.timers,
                rfc6026=self.rfc6026,
                auto_trying=self.auto_trying,
            )
        else:
            new_tx = NonInviteServerTransaction(request, reliable=reliable, timers=self.timers)
        self.transactions[key] = new_tx
        return self._wrap(key, new_tx.receive_request(request, now))

    def cancel_target(self, cancel: Request) -> TransactionKey | None:
        """9.2: the INVITE server transaction a CANCEL refers to (same key, method INVITE)."""
        key = server_key(cancel)
        invite_key = TransactionKey(key.kind, key.branch, key.host, key.port, "INVITE")
        return invite_key if isinstance(self.transactions.get(invite_key), InviteServerTransaction) else None

    def send_response(self, key: TransactionKey, response: Response, now: float) -> list[LayerAction]:
        tx = self.transactions.get(key)
        if not isinstance(tx, InviteServerTransaction | NonInviteServerTransaction):
            raise KeyError(f"no server transaction {key}")
        return self._wrap(key, tx.send_response(response, now))

    # -- timers and transport -----------------------------------------------------------------

    def timer_fired(self, key: TransactionKey, name: str, now: float) -> list[LayerAction]:
        tx = self.transactions.get(key)
        if tx is None:
            return []  # the transaction ended after the timer was scheduled
        return self._wrap(key, tx.timer_fired(name, now))

    def transport_error(
        self, key: TransactionKey, now: float, reason: str = "transport error"
    ) -> list[LayerAction]:
        tx = self.transactions.get(key)
        if tx is None:
            return []
        return self._wrap(key, tx.transport_error(now, reason))


NEVER = float("inf")


class TimedTransactionLayer(TransactionLayer):
    """A transaction layer that keeps its transactions' timers itself.

    A call through the B2BUA arms or cancels 13 transaction timers (A, B, E, F, J, K, L, M) and four of
    them fire 5-32 s after the call ended (K, J, L, M) only to forget the transaction. Returned as
    actions, each one crossed the core, the adapter and the adapter's queue in interpreted code; here
    they stay in a deadline queue compiled with this module. What comes out of every method is the
    plain layer's actions minus the timer ones, in the same order.

    The user arms one wake-up of its own at ``wake_hint`` (the earliest deadline armed since it last
    set the hint back to ``NEVER``) and calls ``expire(now)`` when it comes. A wake-up for a timer
    cancelled since just finds nothing due; ``expire`` puts the next deadline in the hint.
    """

    def __init__(self, *, timers: TimerConfig = DEFAULT_TIMERS, rng: random.Random | None = None) -> None:
        super().__init__(timers=timers, rng=rng)  # RFC 6026 and an automatic 100 Trying, as the B2BUA runs
        self.deadlines = DeadlineQueue()  # keys: (transaction key, timer name)
        self.wake_hint = NEVER

    def _wrap(self, key: TransactionKey | None, actions: list[Action]) -> list[LayerAction]:
        out: list[LayerAction] = []
        for a in actions:
            if isinstance(a, StartTimer):
                self.deadlines.set((key, a.name), a.at)
                if a.at < self.wake_hint:
                    self.wake_hint = a.at
            elif isinstance(a, CancelTimer):
                self.deadlines.cancel((key, a.name))
            else:
                if isinstance(a, Terminated) and key is not None:
                    self.transactions.pop(key, None)  # its timers were cancelled just before
                out.append(LayerAction(key, a))
        return out

    def timer_fired(self, key: TransactionKey, name: str, now: float) -> list[LayerAction]:
        """One timer fired by hand (``expire`` fires them all): it leaves the queue first, so that a
        timer ending its transaction leaves nothing behind."""
        self.deadlines.cancel((key, name))
        return super().timer_fired(key, name, now)

    def expire(self, now: float) -> list[LayerAction]:
        """Fire every timer due at ``now``, in deadline order; the actions of all of them."""
        out: list[LayerAction] = []
        for due in self.deadlines.pop_due(now):
            key, name = cast(tuple[TransactionKey, str], due)
            tx = self.transactions.get(key)
            if tx is not None:
                out.extend(self._wrap(key, tx.timer_fired(name, now)))
        deadline = self.deadlines.next_deadline()
        if deadline is not None and deadline < self.wake_hint:
            self.wake_hint = deadline
        return out

    def abandon(self, key: TransactionKey) -> bool:
        """Forget a transaction and its timers at once, with no action (False if it was not there)."""
        tx = self.transactions.pop(key, None)
        if tx is None:
            return False
        for name in tx.armed_timers:
            self.deadlines.cancel((key, name))
        return True

    @property
    def pending_timers(self) -> int:
        return len(self.deadlines)


class TimerQueue:
    """A small pure deadline queue an adapter can feed with the layer's timer actions.

    ``apply`` consumes StartTimer/CancelTimer (a restart replaces the old deadline), ``pop_due``
    returns the (key, name) pairs whose deadline has passed, in deadline order. Cancelled entries
    are dropped lazily, so cancelling is O(1).
    """

    def __init__(self) -> None:
        self._deadlines: dict[tuple[TransactionKey | None, str], float] = {}
        self._heap: list[tuple[float, int, TransactionKey | None, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._deadlines)

    def apply(self, actions: list[LayerAction]) -> None:
        for item in actions:
            action = item.action
            if isinstance(action, StartTimer):
                self.schedule(item.key, action.name, action.at)
            elif isinstance(action, CancelTimer):
                self.cancel(item.key, action.name)

    def schedule(self, key: TransactionKey | None, name: str, at: float) -> None:
        self._deadlines[(key, name)] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key, name))

    def cancel(self, key: TransactionKey | None, name: str) -> None:
        self._deadlines.pop((key, name), None)

    def _discard_stale(self) -> None:
        while self._heap:
            at, _, key, name = self._heap[0]
            if self._deadlines.get((key, name)) == at:
                return
            heapq.heappop(self._heap)

    def next_deadline(self) -> float | None:
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[TransactionKey | None, str]]:
        due: list[tuple[TransactionKey | None, str]] = []
        while True:
            self._discard_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key, name = heapq.heappop(self._heap)
            del self._deadlines[(key, name)]
            due.append((key, name))
