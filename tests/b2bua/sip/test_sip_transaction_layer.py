"""Transaction matching (17.1.3 / 17.2.3), CANCEL handling and table housekeeping."""

from __future__ import annotations

import random

import pytest

from b2bua.sip.message import Request
from b2bua.sip.serializer import build_response
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
    build_ack_for_non2xx,
    build_cancel,
)
from b2bua.sip.transaction_layer import (
    LayerAction,
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
