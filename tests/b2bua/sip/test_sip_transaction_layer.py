"""Transaction matching (17.1.3 / 17.2.3), CANCEL handling and table housekeeping."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from b2bua.sip.message import Request, Response
from b2bua.sip.serializer import build_response, serialize
from b2bua.sip.transaction import (
    CancelTimer,
    DeliverRequest,
    DeliverResponse,
    InviteServerTransaction,
    StartTimer,
    Terminated,
    TimerConfig,
    TransactionTimeout,
    Transmit,
    TransportError,
    build_ack_for_non2xx,
    build_cancel,
)
from b2bua.sip.transaction_layer import (
    NEVER,
    LayerAction,
    TimedTransactionLayer,
    TimerQueue,
    TransactionKey,
    TransactionLayer,
    server_key,
)


def req(
    method: str, branch: str, *, host: str = "192.0.2.1", port: int | None = 5060, cseq: int = 1
) -> Request:
    sent_by = host if port is None else f"{host}:{port}"
    return Request(
        method,
        "sip:bob@example.com",
        [
            ("Via", f"SIP/2.0/UDP {sent_by};branch={branch}"),
            ("From", "<sip:alice@example.com>;tag=ft"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "layer@192.0.2.1"),
            ("CSeq", f"{cseq} {method}"),
        ],
    )


def kinds(actions: list[LayerAction]) -> list[type]:
    return [type(a.action) for a in actions]


def test_branch_generation_is_rfc3261_and_seedable() -> None:
    a = TransactionLayer(rng=random.Random(7))
    b = TransactionLayer(rng=random.Random(7))
    branches = [a.new_branch() for _ in range(50)]
    assert branches == [b.new_branch() for _ in range(50)]
    assert all(x.startswith("z9hG4bK") and len(x) > 7 + 16 for x in branches)
    assert len(set(branches)) == 50
    assert TransactionLayer().new_tag() != TransactionLayer().new_tag()


def test_new_request_creates_server_transaction_and_retransmission_is_absorbed() -> None:
    layer = TransactionLayer()
    invite = req("INVITE", "z9hG4bKi1")
    first = layer.receive_request(invite, 0.0)
    assert kinds(first) == [Transmit, DeliverRequest]  # 100 Trying then the TU
    key = first[0].key
    assert key is not None and len(layer) == 1
    again = layer.receive_request(invite, 0.2)
    assert kinds(again) == [Transmit]
    assert again[0].key == key


def test_matching_uses_sent_by_and_method() -> None:
    layer = TransactionLayer()
    layer.receive_request(req("INVITE", "z9hG4bKsame"), 0.0)
    # Same branch from a different sent-by is a different transaction (17.2.3).
    other = layer.receive_request(req("INVITE", "z9hG4bKsame", host="192.0.2.99"), 0.0)
    assert DeliverRequest in kinds(other)
    # Default port is filled in: "host" and "host:5060" match.
    retrans = layer.receive_request(req("INVITE", "z9hG4bKsame", port=None), 0.1)
    assert kinds(retrans) == [Transmit]
    assert len(layer) == 2


def test_cancel_gets_its_own_transaction_and_finds_the_invite() -> None:
    layer = TransactionLayer()
    invite = req("INVITE", "z9hG4bKc1")
    inv_key = layer.receive_request(invite, 0.0)[0].key
    cancel = build_cancel(invite)
    assert layer.cancel_target(cancel) == inv_key
    out = layer.receive_request(cancel, 0.5)
    assert kinds(out) == [DeliverRequest]  # not absorbed as an INVITE retransmission
    cancel_key = out[0].key
    assert cancel_key != inv_key and cancel_key is not None and cancel_key.method == "CANCEL"
    # TU: 200 to CANCEL, 487 to INVITE.
    assert Transmit in kinds(layer.send_response(cancel_key, build_response(cancel, 200, to_tag="x"), 0.6))
    assert Transmit in kinds(layer.send_response(inv_key, build_response(invite, 487, to_tag="x"), 0.6))
    # The non-2xx ACK matches the INVITE transaction and is absorbed there.
    ack = build_ack_for_non2xx(invite, build_response(invite, 487, to_tag="x"))
    assert DeliverRequest not in kinds(layer.receive_request(ack, 0.7))
    assert isinstance(layer.get(inv_key), InviteServerTransaction)


def test_cancel_without_invite_has_no_target() -> None:
    layer = TransactionLayer()
    assert layer.cancel_target(build_cancel(req("INVITE", "z9hG4bKnone"))) is None


def test_ack_for_2xx_goes_to_tu() -> None:
    layer = TransactionLayer()
    invite = req("INVITE", "z9hG4bKa1")
    key = layer.receive_request(invite, 0.0)[0].key
    assert key is not None
    layer.send_response(key, build_response(invite, 200, to_tag="t"), 0.1)
    ack = req("ACK", "z9hG4bKdifferent")  # 2xx ACK: new branch
    out = layer.receive_request(ack, 0.2)
    assert out == [LayerAction(None, DeliverRequest(ack))]


def test_client_side_response_routing_and_stray_responses() -> None:
    layer = TransactionLayer(rng=random.Random(1))
    invite = req("INVITE", layer.new_branch())
    key, out = layer.send_request(invite, 0.0)
    assert key == TransactionKey("client", invite.top_via.branch or "", "", 0, "INVITE")
    assert kinds(out) == [Transmit, StartTimer, StartTimer]
    ringing = build_response(invite, 180, to_tag="r")
    assert kinds(layer.receive_response(ringing, 0.1)) == [CancelTimer, CancelTimer, DeliverResponse]
    # Same branch but CSeq method CANCEL: belongs to a different (absent) transaction -> stray.
    cancel_resp = build_response(build_cancel(invite), 200, to_tag="r")
    assert layer.receive_response(cancel_resp, 0.2) == [LayerAction(None, DeliverResponse(cancel_resp))]
    busy = build_response(invite, 486, to_tag="r")
    actions = layer.receive_response(busy, 0.3)
    assert Transmit in kinds(actions)  # the ACK
    assert key in layer.transactions


def test_terminated_transactions_are_removed_and_late_timers_ignored() -> None:
    layer = TransactionLayer(timers=TimerConfig(t1=0.1))
    bye = req("BYE", "z9hG4bKb1")
    key, _ = layer.send_request(bye, 0.0)
    assert key is not None
    layer.receive_response(build_response(bye, 200, to_tag="t"), 0.05)
    out = layer.timer_fired(key, "K", 5.05)
    assert Terminated in kinds(out)
    assert len(layer) == 0
    assert layer.timer_fired(key, "E", 6.0) == []
    assert layer.transport_error(key, 6.0) == []


def test_timeout_via_layer_timer_interface() -> None:
    layer = TransactionLayer()
    opts = req("OPTIONS", "z9hG4bKo1")
    key, _ = layer.send_request(opts, 0.0, reliable=True)
    assert key is not None
    out = layer.timer_fired(key, "F", 32.0)
    assert [a.key for a in out] == [key] * len(out)
    assert len(layer) == 0


def test_ack_is_sent_statelessly_and_branchless_requests_rejected() -> None:
    layer = TransactionLayer()
    key, out = layer.send_request(req("ACK", "z9hG4bKack"), 0.0)
    assert key is None and kinds(out) == [Transmit]
    with pytest.raises(ValueError, match="branch"):
        layer.send_request(req("OPTIONS", "oldbranch"), 0.0)
    layer.send_request(req("OPTIONS", "z9hG4bKdup"), 0.0)
    with pytest.raises(ValueError, match="duplicate"):
        layer.send_request(req("OPTIONS", "z9hG4bKdup"), 0.0)
    with pytest.raises(KeyError):
        layer.send_response(
            TransactionKey("server", "x", "h", 1, "BYE"), build_response(req("BYE", "x"), 200), 0
        )


def test_rfc2543_requests_without_magic_cookie_still_match() -> None:
    layer = TransactionLayer()
    invite = req("INVITE", "1234")
    key = server_key(invite)
    assert key.branch.startswith("2543|")
    layer.receive_request(invite, 0.0)
    assert kinds(layer.receive_request(invite, 0.5)) == [Transmit]
    busy = build_response(invite, 486, to_tag="z")
    layer.send_response(key, busy, 1.0)
    ack = build_ack_for_non2xx(invite, busy)
    assert server_key(ack) == key
    assert DeliverRequest not in kinds(layer.receive_request(ack, 1.1))


def test_timer_queue_drives_the_layer_end_to_end() -> None:
    layer = TransactionLayer(rng=random.Random(5))
    queue = TimerQueue()
    invite = req("INVITE", layer.new_branch())
    _, out = layer.send_request(invite, 0.0)
    queue.apply(out)
    sent_at = [0.0]
    timeouts: list[float] = []
    now = 0.0
    while (deadline := queue.next_deadline()) is not None:
        now = deadline
        for k, name in queue.pop_due(now):
            assert k is not None
            actions = layer.timer_fired(k, name, now)
            queue.apply(actions)
            sent_at += [now for a in actions if isinstance(a.action, Transmit)]
            timeouts += [now for a in actions if isinstance(a.action, TransactionTimeout)]
    assert sent_at == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timeouts == [32.0]
    assert len(layer) == 0 and len(queue) == 0


def test_timer_queue_replace_and_cancel() -> None:
    queue = TimerQueue()
    k = TransactionKey("client", "b", "", 0, "BYE")
    queue.schedule(k, "E", 1.0)
    queue.schedule(k, "E", 2.0)  # restart replaces
    queue.schedule(k, "F", 1.5)
    queue.schedule(None, "x", 0.5)
    queue.cancel(None, "x")
    assert queue.next_deadline() == 1.5
    assert queue.pop_due(1.9) == [(k, "F")]
    assert queue.pop_due(5.0) == [(k, "E")]
    assert queue.next_deadline() is None


# -- TimedTransactionLayer: the same transactions, its timers kept in its own deadline queue ----------

TIMER_ACTIONS = (StartTimer, CancelTimer)
STEP = 0.05  # seconds of simulated time per step
LAST_STEP = 800  # 40 s


def first_line(message: Request | Response) -> str:
    return serialize(message).split(b"\r\n", 1)[0].decode()


def no_timer_actions(actions: list[LayerAction]) -> list[LayerAction]:
    """What a TimedTransactionLayer method returned, checked to hold no timer action."""
    assert not [a for a in actions if isinstance(a.action, TIMER_ACTIONS)], actions
    return actions


Event = tuple[int, TransactionKey | None, str, str]  # step, key, action type, Transmit's first line


class Scenario:
    """Scripted inputs (by step) for either layer. Each step fires the due timers first, then the
    step's inputs; every non-timer action is recorded with its step.

    client INVITE ic1: 100, 180, 200 (Accepted, timer M), a retransmitted 200 passed to the TU;
    client INVITE ic2: never answered (timer A doubling from T1, then timer B);
    client BYE: one retransmission (E), 200 (Completed, timer K);
    server BYE: answered 200 (timer J);
    server INVITE: its retransmission answered with the 100 again, 486 retransmitted by G, ACK
    (Confirmed, timer I).
    """

    def __init__(self, layer: TransactionLayer) -> None:
        self.layer = layer
        self.events: list[Event] = []
        self.keys: dict[str, TransactionKey] = {}
        self.requests: dict[str, Request] = {}
        self.script: dict[int, Callable[[float], list[LayerAction]]] = {
            0: lambda now: self.send("ic1", "INVITE", now),
            2: lambda now: self.answer("ic1", 100, now),
            4: lambda now: self.send("ic2", "INVITE", now),
            6: lambda now: self.answer("ic1", 180, now),
            20: lambda now: self.answer("ic1", 200, now),
            30: lambda now: self.answer("ic1", 200, now),  # retransmitted 2xx: Accepted passes it on
            40: lambda now: self.send("bye", "BYE", now),
            52: lambda now: self.answer("bye", 200, now),
            60: lambda now: self.arrive("uas_bye", req("BYE", "z9hG4bKuasbye", host="192.0.2.7"), now),
            64: lambda now: self.respond("uas_bye", 200, now),
            80: lambda now: self.arrive("uas_inv", req("INVITE", "z9hG4bKuasinv", host="192.0.2.8"), now),
            84: lambda now: self.arrive("uas_inv", self.requests["uas_inv"], now),  # retransmission
            90: lambda now: self.respond("uas_inv", 486, now),
            130: lambda now: self.ack("uas_inv", now),
        }

    def send(self, name: str, method: str, now: float) -> list[LayerAction]:
        request = req(method, self.layer.new_branch(), host="192.0.2.2")
        self.requests[name] = request
        key, out = self.layer.send_request(request, now)
        assert key is not None
        self.keys[name] = key
        return out

    def answer(self, name: str, status: int, now: float) -> list[LayerAction]:
        response = build_response(self.requests[name], status, to_tag=None if status == 100 else "callee")
        return self.layer.receive_response(response, now)

    def arrive(self, name: str, request: Request, now: float) -> list[LayerAction]:
        self.requests[name] = request
        out = self.layer.receive_request(request, now)
        key = out[0].key
        assert key is not None
        self.keys[name] = key
        return out

    def respond(self, name: str, status: int, now: float) -> list[LayerAction]:
        response = build_response(self.requests[name], status, to_tag="us")
        return self.layer.send_response(self.keys[name], response, now)

    def ack(self, name: str, now: float) -> list[LayerAction]:
        invite = self.requests[name]
        ack = build_ack_for_non2xx(invite, build_response(invite, 486, to_tag="us"))
        return self.layer.receive_request(ack, now)

    def record(self, step: int, actions: list[LayerAction]) -> list[LayerAction]:
        for item in actions:
            action = item.action
            if isinstance(action, TIMER_ACTIONS):
                continue
            line = first_line(action.message) if isinstance(action, Transmit) else ""
            self.events.append((step, item.key, type(action).__name__, line))
        return actions

    def run(
        self, fire_due: Callable[[int, float], None], after_input: Callable[[list[LayerAction]], None]
    ) -> None:
        for step in range(LAST_STEP + 1):
            now = step * STEP
            fire_due(step, now)
            if (inputs := self.script.get(step)) is not None:
                after_input(self.record(step, inputs(now)))


def run_plain(seed: int) -> Scenario:
    """The plain layer with its timer actions in a TimerQueue, each due one given to timer_fired."""
    scenario = Scenario(TransactionLayer(rng=random.Random(seed)))
    queue = TimerQueue()

    def fire_due(step: int, now: float) -> None:
        for key, name in queue.pop_due(now):
            assert key is not None
            queue.apply(scenario.record(step, scenario.layer.timer_fired(key, name, now)))

    scenario.run(fire_due, queue.apply)
    assert len(queue) == 0
    return scenario


def run_timed(seed: int) -> tuple[Scenario, list[int]]:
    """The timed layer used as the B2BUA core uses it: one wake-up of its own, moved earlier when the
    layer's hint is, the hint set back to NEVER after each step; ``expire`` only at that wake-up."""
    layer = TimedTransactionLayer(rng=random.Random(seed))
    scenario = Scenario(layer)
    wake = NEVER
    woken: list[int] = []

    def take_hint() -> None:
        nonlocal wake
        if layer.wake_hint < wake and layer.pending_timers:
            wake = layer.wake_hint
        layer.wake_hint = NEVER

    def fire_due(step: int, now: float) -> None:
        nonlocal wake
        if now >= wake:
            wake = NEVER
            woken.append(step)
            no_timer_actions(scenario.record(step, layer.expire(now)))
            take_hint()

    def after_input(actions: list[LayerAction]) -> None:
        no_timer_actions(actions)
        take_hint()

    scenario.run(fire_due, after_input)
    assert wake == NEVER and layer.wake_hint == NEVER
    return scenario, woken


def test_timed_layer_acts_like_the_plain_layer_driven_by_a_timer_queue() -> None:
    plain = run_plain(seed=11)
    timed, woken = run_timed(seed=11)
    assert timed.keys == plain.keys  # the same branches from the same rng
    assert timed.events == plain.events
    assert len(plain.layer) == 0 and len(timed.layer) == 0
    assert isinstance(timed.layer, TimedTransactionLayer) and timed.layer.pending_timers == 0

    # The script did what it says (so the comparison is not of two empty lists).
    events = plain.events
    ic1, ic2, bye = plain.keys["ic1"], plain.keys["ic2"], plain.keys["bye"]
    uas_bye, uas_inv = plain.keys["uas_bye"], plain.keys["uas_inv"]
    # ic2, never answered: sent at 0.2 s, then 0.5, 1, 2, 4, 8, 16 s later (timer A), timer B at 32.2 s.
    sent = [s for s, k, kind, _ in events if k == ic2 and kind == "Transmit"]
    assert sent == [4, 14, 34, 74, 154, 314, 634]
    assert [(s, kind) for s, k, kind, _ in events if k == ic2 and kind != "Transmit"] == [
        (644, "TransactionTimeout"), (644, "Terminated")
    ]
    assert [(s, kind) for s, k, kind, _ in events if k == ic1] == [
        (0, "Transmit"), (2, "DeliverResponse"), (6, "DeliverResponse"), (20, "DeliverResponse"),
        (30, "DeliverResponse"), (660, "Terminated"),  # timer M: 1.0 + 32 s
    ]
    # BYE client: retransmitted at 2.5 s (timer E), 200 at 2.6 s, timer K 5 s later.
    assert [(s, kind) for s, k, kind, _ in events if k == bye] == [
        (40, "Transmit"), (50, "Transmit"), (52, "DeliverResponse"), (152, "Terminated")
    ]
    assert [(s, kind, line) for s, k, kind, line in events if k == uas_bye] == [
        (60, "DeliverRequest", ""), (64, "Transmit", "SIP/2.0 200 OK"), (704, "Terminated", "")
    ]
    # INVITE server: 100 Trying, the INVITE to the TU, the 100 again for the retransmission, 486 at
    # 4.5 s and its retransmissions by timer G (5.0 and 6.0 s), ACK at 6.5 s, timer I 5 s later.
    assert [(s, kind, line) for s, k, kind, line in events if k == uas_inv] == [
        (80, "Transmit", "SIP/2.0 100 Trying"), (80, "DeliverRequest", ""),
        (84, "Transmit", "SIP/2.0 100 Trying"), (90, "Transmit", "SIP/2.0 486 Busy Here"),
        (100, "Transmit", "SIP/2.0 486 Busy Here"), (120, "Transmit", "SIP/2.0 486 Busy Here"),
        (230, "Terminated", ""),
    ]
    # The timed layer was woken at each step a timer was due, and twice for a timer cancelled after its
    # wake-up was asked for (ic1's A by the 100 at 0.1 s, the BYE's second E by its 200 at 2.6 s).
    due_steps = [14, 34, 50, 74, 100, 120, 152, 154, 230, 314, 634, 644, 660, 704]
    assert woken == sorted([*due_steps, 10, 70])


def earliest_armed(layer: TransactionLayer) -> float:
    return min((at for tx in layer.transactions.values() for at in tx.armed_timers.values()), default=NEVER)


def test_wake_hint_is_the_earliest_deadline_armed_since_reset_then_the_next_one() -> None:
    layer = TimedTransactionLayer(rng=random.Random(3))
    assert layer.wake_hint == NEVER and layer.pending_timers == 0
    no_timer_actions(layer.send_request(req("INVITE", layer.new_branch()), 0.0)[1])  # A 0.5, B 32
    assert layer.wake_hint == 0.5 and layer.pending_timers == 2
    layer.wake_hint = NEVER
    no_timer_actions(layer.send_request(req("BYE", layer.new_branch()), 0.1)[1])  # E 0.6, F 32.1
    # Only what was armed since the reset: the user already has a wake-up for 0.5.
    assert layer.wake_hint == 0.6 and layer.pending_timers == 4
    layer.wake_hint = NEVER
    # A step arming nothing leaves the hint alone.
    assert no_timer_actions(layer.receive_request(req("ACK", "z9hG4bKstray"), 0.2)) != []
    assert layer.wake_hint == NEVER

    # Woken at each hint: after expire the hint is the next deadline, until there is none.
    wakes: list[float] = []
    now = 0.5
    while now != NEVER:
        layer.wake_hint = NEVER
        wakes.append(now)
        no_timer_actions(layer.expire(now))
        assert layer.wake_hint == earliest_armed(layer)
        assert layer.wake_hint > now
        now = layer.wake_hint
    # A (INVITE) doubles from 0.5 s with no cap; E (BYE) doubles from 0.5 s up to T2 (4 s); then B, F.
    assert wakes == [
        0.5, 0.6, 1.5, 1.6, 3.5, 3.6, 7.5, 7.6, 11.6, 15.5, 15.6, 19.6, 23.6, 27.6, 31.5, 31.6, 32.0, 32.1
    ]
    assert layer.pending_timers == 0 and len(layer) == 0


def test_wake_hint_for_timers_cancelled_since_finds_nothing_due() -> None:
    layer = TimedTransactionLayer(rng=random.Random(4))
    invite = req("INVITE", layer.new_branch())
    layer.send_request(invite, 0.0)
    assert layer.wake_hint == 0.5
    layer.wake_hint = NEVER  # the user's wake-up is at 0.5
    out = no_timer_actions(layer.receive_response(build_response(invite, 180, to_tag="r"), 0.1))
    assert kinds(out) == [DeliverResponse]  # A and B cancelled, no timer left
    assert layer.wake_hint == NEVER and layer.pending_timers == 0
    assert layer.expire(0.5) == [] and layer.wake_hint == NEVER
    out = no_timer_actions(layer.receive_response(build_response(invite, 200, to_tag="r"), 1.0))
    assert kinds(out) == [DeliverResponse] and layer.wake_hint == 33.0  # timer M
    layer.wake_hint = NEVER
    assert layer.expire(32.9) == [] and layer.wake_hint == 33.0  # nothing due yet: the next deadline
    layer.wake_hint = NEVER
    assert kinds(layer.expire(33.0)) == [Terminated] and layer.wake_hint == NEVER and len(layer) == 0


def test_abandon_forgets_a_transaction_and_its_timers_at_once() -> None:
    layer = TimedTransactionLayer(rng=random.Random(6))
    bye = req("BYE", layer.new_branch())
    bye_key, _ = layer.send_request(bye, 0.0)  # E and F: stays
    assert bye_key is not None
    baseline = layer.pending_timers
    assert baseline == 2

    invite = req("INVITE", layer.new_branch())
    client_key_, _ = layer.send_request(invite, 0.0)  # A and B
    assert client_key_ is not None and layer.pending_timers == baseline + 2
    server_invite = req("INVITE", "z9hG4bKabandoned", host="192.0.2.9")
    server_key_ = layer.receive_request(server_invite, 0.0)[0].key
    assert server_key_ is not None
    layer.send_response(server_key_, build_response(server_invite, 486, to_tag="us"), 0.1)  # G and H
    assert layer.pending_timers == baseline + 4 and len(layer) == 3

    assert layer.abandon(client_key_) is True
    assert layer.get(client_key_) is None and layer.pending_timers == baseline + 2
    assert layer.abandon(server_key_) is True
    assert layer.get(server_key_) is None and layer.pending_timers == baseline and len(layer) == 1
    # Gone already, or never there.
    assert layer.abandon(client_key_) is False
    assert layer.abandon(TransactionKey("client", "z9hG4bKnever", "", 0, "INVITE")) is False
    assert layer.pending_timers == baseline

    # A late answer for the abandoned INVITE is a stray now; no timer fires for either of them.
    late = build_response(invite, 200, to_tag="late")
    assert layer.receive_response(late, 1.0) == [LayerAction(None, DeliverResponse(late))]
    out = no_timer_actions(layer.expire(1000.0))
    assert out and {a.key for a in out} == {bye_key}  # only the BYE: retransmitted by E, then timer F
    assert kinds(out)[-2:] == [TransactionTimeout, Terminated]
    assert layer.pending_timers == 0 and len(layer) == 0


def test_no_method_of_the_timed_layer_returns_timer_actions() -> None:
    """Every input of both sides, a transport error and each timer's expiry: the timers stay inside."""
    layer = TimedTransactionLayer(rng=random.Random(8), timers=TimerConfig(t1=0.1))
    seen: list[LayerAction] = []

    def check(actions: list[LayerAction]) -> list[LayerAction]:
        seen.extend(no_timer_actions(actions))
        return actions

    invite = req("INVITE", layer.new_branch())
    invite_key, out = layer.send_request(invite, 0.0)
    check(out)
    assert invite_key is not None
    check(layer.send_request(req("ACK", layer.new_branch()), 0.0)[1])
    options = req("OPTIONS", layer.new_branch())
    options_key, out = layer.send_request(options, 0.0)
    check(out)
    assert options_key is not None
    # The inherited timer_fired goes through the same filter (A re-armed in the layer's queue).
    assert kinds(check(layer.timer_fired(invite_key, "A", 0.1))) == [Transmit]
    check(layer.receive_response(build_response(invite, 100), 0.15))
    check(layer.receive_response(build_response(invite, 404, to_tag="x"), 0.16))  # ACK, timer D
    check(layer.receive_response(build_response(invite, 404, to_tag="x"), 0.17))  # ACK again
    check(layer.receive_response(build_response(req("INVITE", "z9hG4bKstray"), 200, to_tag="s"), 0.17))
    uas_invite = req("INVITE", "z9hG4bKuas", host="192.0.2.10")
    uas_key = check(layer.receive_request(uas_invite, 0.2))[0].key
    assert uas_key is not None
    check(layer.send_response(uas_key, build_response(uas_invite, 180, to_tag="us"), 0.2))
    check(layer.send_response(uas_key, build_response(uas_invite, 200, to_tag="us"), 0.25))  # timer L
    check(layer.send_response(uas_key, build_response(uas_invite, 200, to_tag="us"), 0.3))  # 2xx again
    uas_bye = req("BYE", "z9hG4bKuasbye", host="192.0.2.10")
    uas_bye_key = check(layer.receive_request(uas_bye, 0.3))[0].key
    assert uas_bye_key is not None
    check(layer.send_response(uas_bye_key, build_response(uas_bye, 200, to_tag="us"), 0.3))  # timer J
    check(layer.receive_request(uas_bye, 0.4))  # retransmission: the 200 again
    check(layer.transport_error(options_key, 0.5))  # cancels E and F
    for step in range(10, 801):
        check(layer.expire(step * 0.05))
    assert len(layer) == 0 and layer.pending_timers == 0
    assert {type(a.action) for a in seen} == {
        Transmit, DeliverRequest, DeliverResponse, TransportError, Terminated
    }


def test_a_timer_fired_by_hand_that_ends_its_transaction_leaves_no_entry() -> None:
    """``timer_fired`` called directly (``expire`` is the usual way): timer B ends the transaction, and
    its own entry leaves the queue with it (the transaction had already forgotten that timer)."""
    layer = TimedTransactionLayer(rng=random.Random(9))
    key, _ = layer.send_request(req("INVITE", layer.new_branch()), 0.0)
    assert key is not None and layer.pending_timers == 2  # A and B
    out = no_timer_actions(layer.timer_fired(key, "B", 32.0))
    assert kinds(out) == [TransactionTimeout, Terminated]
    assert len(layer) == 0 and layer.pending_timers == 0

