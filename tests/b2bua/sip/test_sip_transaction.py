"""RFC 3261 §17 transaction machines driven by a virtual clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.sip.message import Request, Response
from b2bua.sip.serializer import build_response
from b2bua.sip.transaction import (
    Action,
    CancelTimer,
    DeliverRequest,
    DeliverResponse,
    Invite2xxRetransmitter,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    StartTimer,
    Terminated,
    TimerConfig,
    TransactionStateError,
    TransactionTimeout,
    Transmit,
    TransportError,
    TxState,
    build_ack_for_non2xx,
    build_cancel,
)


def request(method: str = "INVITE", branch: str = "z9hG4bKtx1", cseq: int = 1) -> Request:
    return Request(
        method,
        "sip:bob@example.com",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
            ("Route", "<sip:edge.example.com;lr>"),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=ftag"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "tx-call@192.0.2.1"),
            ("CSeq", f"{cseq} {method}"),
        ],
    )


def response_to(req: Request, status: int, tag: str | None = "ttag") -> Response:
    return build_response(req, status, to_tag=tag)


class VirtualClock:
    """Minimal adapter: applies timer actions, fires due timers in order, logs everything."""

    def __init__(self, tx: object) -> None:
        self.tx = tx
        self.timers: dict[str, float] = {}
        self.log: list[tuple[float, Action]] = []
        self.now = 0.0

    def apply(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, StartTimer):
                assert a.at >= self.now - 1e-9, "timers are never scheduled in the past"
                self.timers[a.name] = a.at
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.name, None)
            self.log.append((self.now, a))
        return actions

    def run_until(self, t_end: float) -> None:
        while self.timers:
            name, at = min(self.timers.items(), key=lambda kv: kv[1])
            if at > t_end:
                break
            del self.timers[name]
            self.now = at
            self.apply(self.tx.timer_fired(name, at))  # type: ignore[attr-defined]
        self.now = max(self.now, t_end)

    def at(self, t: float) -> VirtualClock:
        self.run_until(t)
        self.now = t
        return self

    def times(self, kind: type) -> list[float]:
        return [round(t, 6) for t, a in self.log if isinstance(a, kind)]

    def of(self, kind: type) -> list[Action]:
        return [a for _, a in self.log if isinstance(a, kind)]


# -- INVITE client -----------------------------------------------------------------------------


def test_invite_client_retransmits_with_doubling_and_times_out_at_64_t1() -> None:
    tx = InviteClientTransaction(request())
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert clock.times(TransactionTimeout) == [32.0]
    assert clock.times(Terminated) == [32.0]
    assert tx.state is TxState.TERMINATED
    assert not clock.timers


def test_invite_client_t1_from_config() -> None:
    timers = TimerConfig.from_resend_interval_ms(100)
    tx = InviteClientTransaction(request(), timers=timers)
    clock = VirtualClock(tx).at(10.0)
    clock.apply(tx.send_request(10.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [10.0, 10.1, 10.3, 10.7, 11.5, 13.1, 16.3]
    assert clock.times(TransactionTimeout) == [16.4]


def test_invite_client_reliable_has_no_retransmissions() -> None:
    tx = InviteClientTransaction(request(), reliable=True)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0]
    assert clock.times(TransactionTimeout) == [32.0]


def test_invite_client_provisional_stops_retransmission_and_timer_b() -> None:
    req = request()
    tx = InviteClientTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.at(0.7).apply(tx.receive_response(response_to(req, 180), 0.7))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0, 0.5]
    assert clock.of(TransactionTimeout) == []
    assert tx.state is TxState.PROCEEDING
    assert len(clock.of(DeliverResponse)) == 1


def test_invite_client_non2xx_generates_ack_and_absorbs_retransmissions() -> None:
    req = request()
    tx = InviteClientTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    busy = response_to(req, 486)
    actions = clock.at(1.0).apply(tx.receive_response(busy, 1.0))
    ack = next(a.message for a in actions if isinstance(a, Transmit))
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == req.uri
    assert ack.headers.get_all("Via") == req.headers.get_all("Via")  # same branch (17.1.1.3)
    assert ack.headers.get("To") == busy.headers.get("To")  # carries the response's tag
    assert ack.headers.get("CSeq") == "1 ACK"
    assert ack.headers.get_all("Route") == ["<sip:edge.example.com;lr>"]
    assert tx.state is TxState.COMPLETED
    # Retransmitted 486: ACK again, but the TU hears about the final response only once.
    again = clock.at(2.0).apply(tx.receive_response(busy, 2.0))
    assert [type(a) for a in again] == [Transmit]
    clock.run_until(100)
    assert len(clock.of(DeliverResponse)) == 1
    assert clock.times(Terminated) == [33.0]  # Timer D = 32 s after the 486
    assert clock.times(Transmit) == [0.0, 0.5, 1.0, 2.0]


def test_invite_client_non2xx_reliable_terminates_immediately() -> None:
    req = request()
    tx = InviteClientTransaction(req, reliable=True)
    tx.send_request(0.0)
    actions = tx.receive_response(response_to(req, 503), 0.2)
    assert isinstance(actions[-1], Terminated)
    assert any(isinstance(a, DeliverResponse) for a in actions)


def test_invite_client_2xx_accepted_state_rfc6026() -> None:
    req = request()
    tx = InviteClientTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    ok = response_to(req, 200)
    clock.at(0.2).apply(tx.receive_response(ok, 0.2))
    assert tx.state is TxState.ACCEPTED
    clock.at(1.0).apply(tx.receive_response(ok, 1.0))  # retransmitted 2xx still reaches the TU
    clock.run_until(100)
    assert len(clock.of(DeliverResponse)) == 2
    assert clock.times(Terminated) == [32.2]
    assert clock.times(Transmit) == [0.0]  # no ACK from the transaction for 2xx


def test_invite_client_2xx_plain_rfc3261_terminates() -> None:
    req = request()
    tx = InviteClientTransaction(req, rfc6026=False)
    tx.send_request(0.0)
    actions = tx.receive_response(response_to(req, 200), 0.2)
    assert [type(a) for a in actions][-1] is Terminated
    assert tx.receive_response(response_to(req, 200), 0.3) == []


def test_transport_error_terminates() -> None:
    tx = InviteClientTransaction(request())
    tx.send_request(0.0)
    actions = tx.transport_error(0.1, "ICMP unreachable")
    assert actions[0] == TransportError("ICMP unreachable")
    assert isinstance(actions[-1], Terminated)
    assert tx.transport_error(0.2) == []
    assert tx.timer_fired("A", 0.5) == []


def test_stale_timer_fire_is_ignored() -> None:
    tx = InviteClientTransaction(request())
    tx.send_request(0.0)
    assert tx.timer_fired("D", 1.0) == []
    assert tx.timer_fired("nonsense", 1.0) == []
    with pytest.raises(TransactionStateError):
        tx.send_request(1.0)


# -- non-INVITE client -------------------------------------------------------------------------


def test_non_invite_client_retransmits_capped_at_t2() -> None:
    tx = NonInviteClientTransaction(request("OPTIONS"))
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert clock.times(TransactionTimeout) == [32.0]


def test_non_invite_client_proceeding_uses_t2() -> None:
    req = request("BYE")
    tx = NonInviteClientTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.at(1.0).apply(tx.receive_response(response_to(req, 100, None), 1.0))
    clock.run_until(12)
    assert clock.times(Transmit) == [0.0, 0.5, 1.5, 5.5, 9.5]
    final = clock.at(12.0).apply(tx.receive_response(response_to(req, 200), 12.0))
    assert any(isinstance(a, DeliverResponse) for a in final)
    assert tx.receive_response(response_to(req, 200), 13.0) == []  # absorbed in Completed
    clock.run_until(100)
    assert clock.times(Terminated) == [17.0]  # Timer K = T4
    assert clock.of(TransactionTimeout) == []


def test_non_invite_client_reliable() -> None:
    req = request("BYE")
    tx = NonInviteClientTransaction(req, reliable=True)
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.at(0.1).apply(tx.receive_response(response_to(req, 200), 0.1))
    assert clock.times(Transmit) == [0.0]
    assert clock.times(Terminated) == [0.1]


# -- INVITE server -----------------------------------------------------------------------------


def test_invite_server_sends_100_and_absorbs_retransmissions() -> None:
    req = request()
    tx = InviteServerTransaction(req)
    first = tx.receive_request(req, 0.0)
    assert isinstance(first[0], Transmit) and first[0].message.status == 100  # type: ignore[union-attr]
    assert isinstance(first[1], DeliverRequest)
    again = tx.receive_request(req, 0.3)
    assert [type(a) for a in again] == [Transmit]
    ringing = response_to(req, 180)
    tx.send_response(ringing, 0.5)
    assert tx.receive_request(req, 0.6) == [Transmit(ringing)]


def test_invite_server_non2xx_retransmits_until_ack() -> None:
    req = request()
    tx = InviteServerTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.receive_request(req, 0.0))
    busy = response_to(req, 486)
    clock.at(1.0).apply(tx.send_response(busy, 1.0))
    clock.run_until(5.0)
    assert clock.times(Transmit) == [0.0, 1.0, 1.5, 2.5, 4.5]
    assert clock.at(5.0).apply(tx.receive_request(req, 5.0)) == [Transmit(busy)]  # INVITE retrans
    ack = build_ack_for_non2xx(req, busy)
    assert not [a for a in clock.at(6.0).apply(tx.receive_request(ack, 6.0)) if isinstance(a, DeliverRequest)]
    assert tx.state is TxState.CONFIRMED
    assert tx.receive_request(ack, 7.0) == []  # ACK retransmission absorbed
    assert tx.receive_request(req, 7.0) == []
    clock.run_until(100)
    assert clock.times(Terminated) == [11.0]  # Timer I = T4
    assert clock.of(TransactionTimeout) == []
    assert len(clock.of(DeliverRequest)) == 1


def test_invite_server_timer_h_without_ack() -> None:
    req = request()
    tx = InviteServerTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.receive_request(req, 0.0))
    clock.at(1.0).apply(tx.send_response(response_to(req, 603), 1.0))
    clock.run_until(100)
    # G: 1.5, 2.5, 4.5, 8.5 then capped at T2 = 4 s until H at 1 + 32.
    assert clock.times(Transmit) == [0.0, 1.0, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert clock.times(TransactionTimeout) == [33.0]
    assert clock.of(TransactionTimeout)[0].reason.startswith("timer H")  # type: ignore[union-attr]


def test_invite_server_reliable_ack_terminates() -> None:
    req = request()
    tx = InviteServerTransaction(req, reliable=True, auto_trying=False)
    assert [type(a) for a in tx.receive_request(req, 0.0)] == [DeliverRequest]
    busy = response_to(req, 486)
    out = tx.send_response(busy, 1.0)
    assert [type(a) for a in out] == [Transmit, StartTimer]  # only H on reliable transports
    done = tx.receive_request(build_ack_for_non2xx(req, busy), 1.1)
    assert isinstance(done[-1], Terminated)


def test_invite_server_2xx_accepted_state() -> None:
    req = request()
    tx = InviteServerTransaction(req)
    clock = VirtualClock(tx)
    clock.apply(tx.receive_request(req, 0.0))
    ok = response_to(req, 200)
    clock.at(1.0).apply(tx.send_response(ok, 1.0))
    assert tx.state is TxState.ACCEPTED
    assert tx.receive_request(req, 1.2) == []  # RFC 6026: retransmitted INVITE absorbed
    assert tx.send_response(ok, 1.5) == [Transmit(ok)]  # TU retransmission of the 2xx passes
    ack = request("ACK")
    assert tx.receive_request(ack, 1.6) == [DeliverRequest(ack)]
    clock.run_until(100)
    assert clock.times(Terminated) == [33.0]  # Timer L
    with pytest.raises(TransactionStateError):
        tx.send_response(response_to(req, 486), 40.0)


def test_invite_server_2xx_plain_rfc3261() -> None:
    req = request()
    tx = InviteServerTransaction(req, rfc6026=False)
    tx.receive_request(req, 0.0)
    out = tx.send_response(response_to(req, 200), 1.0)
    assert isinstance(out[-1], Terminated)


# -- non-INVITE server -------------------------------------------------------------------------


def test_non_invite_server() -> None:
    req = request("BYE")
    tx = NonInviteServerTransaction(req)
    clock = VirtualClock(tx)
    assert clock.apply(tx.receive_request(req, 0.0)) == [DeliverRequest(req)]
    assert tx.receive_request(req, 0.1) == []  # Trying: absorbed, TU not told twice
    trying = response_to(req, 100, None)
    clock.apply(tx.send_response(trying, 0.2))
    assert tx.receive_request(req, 0.3) == [Transmit(trying)]
    ok = response_to(req, 200)
    clock.at(1.0).apply(tx.send_response(ok, 1.0))
    assert tx.receive_request(req, 2.0) == [Transmit(ok)]
    with pytest.raises(TransactionStateError):
        tx.send_response(ok, 2.0)
    clock.run_until(100)
    assert clock.times(Terminated) == [33.0]  # Timer J


def test_non_invite_server_reliable_terminates_on_final() -> None:
    req = request("OPTIONS")
    tx = NonInviteServerTransaction(req, reliable=True)
    tx.receive_request(req, 0.0)
    assert isinstance(tx.send_response(response_to(req, 200), 0.1)[-1], Terminated)


# -- 2xx retransmission ------------------------------------------------------------------------


def test_2xx_retransmitter_gives_up_without_ack() -> None:
    ok = response_to(request(), 200)
    rt = Invite2xxRetransmitter(ok)
    clock = VirtualClock(rt)
    clock.apply(rt.start(0.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert clock.of(TransactionTimeout) == [TransactionTimeout("no ACK")]
    assert clock.times(TransactionTimeout) == [32.0]
    assert rt.done and not rt.acked


def test_2xx_retransmitter_stops_on_matching_ack_only() -> None:
    inv = request()
    ok = response_to(inv, 200)
    rt = Invite2xxRetransmitter(ok)
    clock = VirtualClock(rt)
    clock.apply(rt.start(0.0))
    clock.run_until(2.0)
    wrong = request("ACK", branch="z9hG4bKnew", cseq=2)
    wrong.headers.set("To", ok.headers.get("To") or "")
    assert rt.ack_received(wrong, 2.0) == []
    ack = request("ACK", branch="z9hG4bKnew", cseq=1)
    assert not rt.matches_ack(ack)  # no To tag yet: not our dialog
    ack.headers.set("To", ok.headers.get("To") or "")
    assert rt.matches_ack(ack)
    clock.apply(rt.ack_received(ack, 2.0))
    clock.run_until(100)
    assert clock.times(Transmit) == [0.0, 0.5, 1.5]
    assert rt.acked and clock.of(TransactionTimeout) == []
    assert rt.timer_fired(Invite2xxRetransmitter.RETRANSMIT, 3.5) == []


def test_build_cancel_matches_invite() -> None:
    inv = request()
    cancel = build_cancel(inv)
    assert cancel.method == "CANCEL" and cancel.uri == inv.uri
    assert cancel.headers.get_all("Via") == inv.headers.get_all("Via")
    assert cancel.headers.get("CSeq") == "1 CANCEL"
    assert cancel.headers.get("To") == inv.headers.get("To")
    assert cancel.headers.get_all("Route") == inv.headers.get_all("Route")


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(t1=st.floats(0.05, 2.0), t2_factor=st.floats(1.0, 16.0), invite=st.booleans(), reliable=st.booleans())
def test_retransmission_schedule_property(t1: float, t2_factor: float, invite: bool, reliable: bool) -> None:
    timers = TimerConfig(t1=t1, t2=t1 * t2_factor)
    req = request("INVITE" if invite else "OPTIONS")
    tx: InviteClientTransaction | NonInviteClientTransaction = (
        InviteClientTransaction(req, reliable=reliable, timers=timers)
        if invite
        else NonInviteClientTransaction(req, reliable=reliable, timers=timers)
    )
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    clock.run_until(1000 * t1)
    sends = clock.times(Transmit)
    timeout = 64 * t1
    eps = 1e-6
    assert sends[0] == 0.0
    if reliable:
        assert sends == [0.0]
    else:
        # Intervals: T1, then doubling; non-INVITE caps the interval at T2 (17.1.2.2).
        interval = t1
        for prev, cur in itertools.pairwise(sends):
            assert cur - prev == pytest.approx(interval, abs=eps)
            interval = interval * 2 if invite else min(interval * 2, timers.t2)
        assert sends[-1] <= timeout + eps
        assert sends[-1] + interval >= timeout - eps  # nothing was skipped before the timeout
    assert clock.times(TransactionTimeout) == [pytest.approx(timeout)]
    assert tx.terminated and not clock.timers


_EVENTS = st.lists(
    st.tuples(st.floats(0, 40), st.sampled_from([100, 180, 183, 200, 202, 404, 486, 503])), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, invite=st.booleans(), reliable=st.booleans())
def test_client_invariants_under_random_responses(
    events: list[tuple[float, int]], invite: bool, reliable: bool
) -> None:
    req = request("INVITE" if invite else "OPTIONS")
    tx: InviteClientTransaction | NonInviteClientTransaction = (
        InviteClientTransaction(req, reliable=reliable)
        if invite
        else NonInviteClientTransaction(req, reliable=reliable)
    )
    clock = VirtualClock(tx)
    clock.apply(tx.send_request(0.0))
    terminated_at: float | None = None
    for when, status in sorted(events):
        clock.run_until(when)
        clock.now = when
        clock.apply(tx.receive_response(response_to(req, status), when))
    clock.run_until(200)
    for t, a in clock.log:
        if isinstance(a, Terminated):
            assert terminated_at is None, "terminated twice"
            terminated_at = t
        elif terminated_at is not None:
            pytest.fail(f"{a} after termination")
    finals = [a for a in clock.of(DeliverResponse) if a.response.status >= 200]  # type: ignore[union-attr]
    got_provisional_first = bool(clock.of(DeliverResponse)) and not finals
    if invite and got_provisional_first and not clock.of(TransactionTimeout):
        # Figure 5: a provisional ends Timer B; the TU's own INVITE timeout takes over.
        assert tx.state is TxState.PROCEEDING
    else:
        assert tx.terminated
    assert not clock.timers
    non2xx_finals = [a for a in finals if a.response.status >= 300]  # type: ignore[union-attr]
    assert len(non2xx_finals) <= 1
    if not invite:
        assert len(finals) <= 1
    # Exactly one way out: a timeout only if no final response ever arrived in time.
    if clock.of(TransactionTimeout):
        assert not finals


def _full_invite() -> Request:
    inv = request()
    inv.headers.add("Contact", "<sip:alice@192.0.2.1:5060>")
    inv.headers.add("Supported", "timer")
    inv.headers.add("Content-Type", "application/sdp")
    inv.body = b"v=0\r\n"
    return inv


def test_after_the_final_answer_transactions_keep_only_the_requests_identity() -> None:
    """What an Accepted or Completed INVITE transaction holds for its 32 s is what thousands of fresh
    calls cost: the identity fields late messages are matched and answered by, no body, no Contact."""
    from b2bua.sip.message import IDENTITY_FIELDS

    def kept(tx: InviteClientTransaction | InviteServerTransaction) -> set[str]:
        assert tx.request.body == b""
        return {name for name, _ in tx.request.headers}

    server = InviteServerTransaction(_full_invite())
    server.receive_request(server.request, 0.0)
    server.send_response(response_to(server.request, 200), 0.1)
    assert server.state is TxState.ACCEPTED and kept(server) <= IDENTITY_FIELDS
    assert server.request.cseq.num == 1 and server.request.method == "INVITE"

    for status, state in ((200, TxState.ACCEPTED), (486, TxState.COMPLETED)):
        client = InviteClientTransaction(_full_invite())
        client.send_request(0.0)
        out = client.receive_response(response_to(_full_invite(), status), 0.1)
        assert client.state is state and kept(client) == {"Via", "Route", "Max-Forwards", "From", "To",
                                                          "Call-ID", "CSeq"}
        if status >= 300:  # its ACK was built from the whole request first, and is resent as it was
            ack = next(a.message for a in out if isinstance(a, Transmit))
            assert client.receive_response(response_to(_full_invite(), status), 0.2) == [Transmit(ack)]
