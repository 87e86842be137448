"""Sans-I/O B2BUA call flows: set-up, answer, hang-up in both directions, CANCEL, failover, errors."""

from __future__ import annotations

import pytest
from test_b2bua_core_harness import (
    CALLER,
    GW1,
    GW2,
    SDP_A,
    SDP_B,
    Call,
    Harness,
    answer,
    caller_invite,
    labels,
    make_config,
    only,
    select,
)

from b2bua.core import CoreConfig
from b2bua.sip.message import Request
from sipledger.config import ConfigError


def test_normal_call_caller_hangs_up_with_independent_legs() -> None:
    h = Harness()
    invite = caller_invite()
    out = h.feed(invite)
    assert labels(out) == ["100 INVITE -> 10.0.0.1", "INVITE -> 10.0.0.2"]
    carrier_invite = only(out, GW1, method="INVITE")
    # Topology hiding: nothing of the caller's leg identity crosses over.
    assert carrier_invite.call_id != invite.call_id
    assert "10.0.0.1" not in str(carrier_invite.headers)
    assert carrier_invite.from_.tag != invite.from_.tag
    assert carrier_invite.body == SDP_A
    assert carrier_invite.headers.get("Max-Forwards") == "69"
    assert h.types() == ["call.setup", "call.routed"]
    routed = h.event("call.routed")
    assert (routed["vendor"], routed["gateway"], routed["prefix"], routed["attempt"]) == (
        "carrier-one",
        "10.0.0.2:5060",
        "1555",
        1,
    )

    assert h.feed(answer(carrier_invite, 100), GW1) == []  # 100 is hop-by-hop, never relayed
    out = h.feed(answer(carrier_invite, 180), GW1)
    ringing = only(out, CALLER, status=180)
    assert ringing.call_id == invite.call_id and ringing.to.tag
    out = h.feed(answer(carrier_invite, 200, body=SDP_B), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2", "200 INVITE -> 10.0.0.1"]
    ok = only(out, CALLER, status=200)
    assert ok.body == SDP_B and ok.to.tag == ringing.to.tag
    assert "b2bua@" in (ok.headers.get("Contact") or "")
    assert h.types() == ["call.setup", "call.routed", "call.progress", "call.answered"]

    # Without the ACK the 2xx is retransmitted; the ACK stops it.
    out = h.advance(0.6)
    assert labels(out) == ["200 INVITE -> 10.0.0.1"]
    from test_b2bua_core_harness import caller_dialog, carrier_dialog

    cd = caller_dialog(invite, ok)
    h.feed(cd.create_ack(branch="z9hG4bKa1"))
    assert h.advance(5) == []

    out = h.feed(cd.create_bye(branch="z9hG4bKb1"))
    assert labels(out) == ["200 BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    bye = only(out, GW1, method="BYE")
    assert bye.call_id == carrier_invite.call_id
    h.feed(answer(bye, 200), GW1)
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"], term["sip_status"]) == ("normal_caller_bye", "caller", None)
    assert h.call_timers() == [] and h.core.active_calls == 0
    # A second BYE for the finished dialog is 481; the carrier's late BYE too.
    out = h.feed(cd.create_bye(branch="z9hG4bKb2"))
    assert labels(out) == ["481 BYE -> 10.0.0.1"]
    out = h.feed(carrier_dialog(carrier_invite).create_bye(branch="z9hG4bKgb"), GW1)
    assert labels(out) == ["481 BYE -> 10.0.0.2"]


def test_far_end_bye_on_a_live_call_gets_200_never_481() -> None:
    h = Harness()
    c = Call(h)
    # Even with a CSeq the dialog would call out of order, a BYE of a live call is accepted.
    bye = c.carrier.create_bye(branch="z9hG4bKgb1")
    out = h.feed(bye, GW1)
    assert labels(out) == ["200 BYE -> 10.0.0.2", "BYE -> 10.0.0.1"]
    caller_bye = only(out, CALLER, method="BYE")
    assert caller_bye.call_id == c.invite.call_id and caller_bye.from_.tag == c.ok.to.tag
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"]) == ("normal_callee_bye", "callee")
    # A retransmitted BYE is absorbed by its transaction: 200 again, not 481.
    out = h.feed(bye, GW1)
    assert labels(out) == ["200 BYE -> 10.0.0.2"]


def test_cancel_while_ringing_and_a_crossing_200_is_acked_and_hung_up() -> None:
    h = Harness()
    invite = caller_invite()
    out = h.feed(invite)
    ci = only(out, GW1, method="INVITE")
    h.feed(answer(ci, 180), GW1)
    cancel = Request(
        "CANCEL",
        invite.uri,
        [
            ("Via", invite.headers.get("Via") or ""),
            ("Max-Forwards", "70"),
            ("From", invite.headers.get("From") or ""),
            ("To", invite.headers.get("To") or ""),
            ("Call-ID", invite.call_id or ""),
            ("CSeq", "1 CANCEL"),
        ],
    )
    out = h.feed(cancel)
    assert labels(out) == ["200 CANCEL -> 10.0.0.1", "487 INVITE -> 10.0.0.1", "CANCEL -> 10.0.0.2"]
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"], term["sip_status"]) == ("caller_cancel", "caller", 487)
    # The carrier answered before seeing the CANCEL: we ACK that 200 and BYE it.
    out = h.feed(answer(ci, 200, body=SDP_B), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2", "BYE -> 10.0.0.2"]
    # Its retransmission only gets the ACK again, and nothing reaches the caller.
    out = h.feed(answer(ci, 200, body=SDP_B), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2"]
    assert h.types().count("call.terminated") == 1


def test_cancel_before_any_provisional_waits_for_one() -> None:
    h = Harness()
    invite = caller_invite()
    ci = only(h.feed(invite), GW1, method="INVITE")
    cancel = Request(
        "CANCEL",
        invite.uri,
        [
            ("Via", invite.headers.get("Via") or ""),
            ("From", invite.headers.get("From") or ""),
            ("To", invite.headers.get("To") or ""),
            ("Call-ID", invite.call_id or ""),
            ("CSeq", "1 CANCEL"),
        ],
    )
    out = h.feed(cancel)
    assert labels(out) == ["200 CANCEL -> 10.0.0.1", "487 INVITE -> 10.0.0.1"]
    out = h.feed(answer(ci, 180), GW1)
    assert labels(out) == ["CANCEL -> 10.0.0.2"]


def test_failover_to_the_second_gateway_on_503() -> None:
    h = Harness()
    out = h.feed(caller_invite())
    first = only(out, GW1, method="INVITE")
    out = h.feed(answer(first, 503), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2", "INVITE -> 10.0.0.3"]
    second = only(out, GW2, method="INVITE")
    assert second.call_id != first.call_id
    assert [e["attempt"] for e in h.events if e["type"] == "call.routed"] == [1, 2]
    out = h.feed(answer(second, 200, body=SDP_B, contact="<sip:gw@10.0.0.3:5060>"), GW2)
    assert labels(out) == ["ACK -> 10.0.0.3", "200 INVITE -> 10.0.0.1"]


def test_busy_is_relayed_and_other_rejections_keep_their_status() -> None:
    h = Harness()
    ci = only(h.feed(caller_invite(callee="16661230000")), GW1, method="INVITE")
    out = h.feed(answer(ci, 486), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2", "486 INVITE -> 10.0.0.1"]
    assert h.event("call.terminated")["reason"] == "busy"

    h = Harness()
    ci = only(h.feed(caller_invite(callee="16661230000")), GW1, method="INVITE")
    out = h.feed(answer(ci, 503), GW1)  # last gateway: relayed
    assert labels(out) == ["ACK -> 10.0.0.2", "503 INVITE -> 10.0.0.1"]
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"], term["sip_status"]) == ("rejected", "callee", 503)


def test_no_route_is_404_with_events() -> None:
    h = Harness()
    out = h.feed(caller_invite(callee="4420000"))
    assert labels(out) == ["100 INVITE -> 10.0.0.1", "404 INVITE -> 10.0.0.1"]
    assert only(out, status=404).reason == "No Route"
    assert h.types() == ["call.setup", "call.terminated"]
    assert h.event("call.terminated")["reason"] == "no_route"


def test_invite_timeout_fails_over_then_answers_408() -> None:
    h = Harness({"sip": {"invite_timeout": 2.0}})
    h.feed(caller_invite())
    out = h.advance(2.01)
    assert select(out, GW2, method="INVITE")
    retrans_to_gw1 = len(select(h.advance(0.0), GW1, method="INVITE"))
    assert retrans_to_gw1 == 0
    out = h.advance(2.0)
    assert select(out, CALLER, status=408)
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"], term["sip_status"]) == ("response_timeout", "system", 408)
    # Nothing keeps retransmitting to the abandoned gateways.
    assert select(h.advance(60), method="INVITE") == []


def test_call_progress_timeout_cancels_the_carrier_and_answers_408() -> None:
    h = Harness({"sip": {"call_progress_timeout": 3.0}})
    ci = only(h.feed(caller_invite(callee="16661230000")), GW1, method="INVITE")
    h.feed(answer(ci, 180), GW1)
    out = h.advance(3.0)
    assert labels(out) == ["408 INVITE -> 10.0.0.1", "CANCEL -> 10.0.0.2"]
    assert h.event("call.terminated")["reason"] == "call_progress_timeout"
    out = h.feed(answer(ci, 487), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2"]


def test_reinvite_with_sdp_is_relayed_end_to_end() -> None:
    h = Harness()
    c = Call(h)
    new_sdp = SDP_A.replace(b"4000", b"4002")
    reinvite = c.caller.create_reinvite(branch="z9hG4bKri1", body=new_sdp)
    out = h.feed(reinvite)
    assert labels(out) == ["100 INVITE -> 10.0.0.1", "INVITE -> 10.0.0.2"]
    relayed = only(out, GW1, method="INVITE")
    assert relayed.body == new_sdp and relayed.call_id == c.out_invite.call_id
    c.carrier.validate_request(relayed)
    answer_sdp = SDP_B.replace(b"6000", b"6002")
    out = h.feed(answer(relayed, 200, body=answer_sdp), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2", "200 INVITE -> 10.0.0.1"]
    assert only(out, CALLER, status=200).body == answer_sdp


def test_info_is_relayed_and_update_without_body_is_answered_locally() -> None:
    h = Harness()
    c = Call(h)
    info = c.caller.create_info(
        branch="z9hG4bKi1", body=b"Signal=5\r\n", content_type="application/dtmf-relay"
    )
    out = h.feed(info)
    relayed = only(out, GW1, method="INFO")
    assert relayed.body == b"Signal=5\r\n"
    out = h.feed(answer(relayed, 200), GW1)
    assert labels(out) == ["200 INFO -> 10.0.0.1"]
    out = h.feed(c.caller.create_update(branch="z9hG4bKu1", content_type=None))
    assert labels(out) == ["200 UPDATE -> 10.0.0.1"]


def test_out_of_dialog_options_answered_locally_and_max_forwards_zero_is_483() -> None:
    h = Harness()
    opts = Request(
        "OPTIONS",
        "sip:10.0.0.9",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKo1"),
            ("From", "<sip:a@10.0.0.1>;tag=1"),
            ("To", "<sip:10.0.0.9>"),
            ("Call-ID", "o1"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    ok = only(h.feed(opts), status=200)
    assert "UPDATE" in ok.headers.get_all("Allow") and ok.headers.get("Supported") == "timer"
    out = h.feed(caller_invite(max_forwards=0))
    assert select(out, status=483)
    assert h.events == []


def test_responses_follow_received_and_rport() -> None:
    h = Harness()
    from b2bua.actions import Address

    nat = Address("10.0.0.1", 40000, "udp")
    out = h.feed(caller_invite(), nat)
    trying = [m for m, d in out if d == nat]
    assert trying and "rport=40000" in (trying[0].headers.get("Via") or "")


def test_malformed_request_gets_400_and_garbage_is_dropped() -> None:
    h = Harness()
    bad = (
        b"INVITE sip:1555@10.0.0.9 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKx\r\n"
        b"From: <sip:a@10.0.0.1>;tag=1\r\nTo: <sip:b@10.0.0.9>\r\nCall-ID: bad1\r\nCSeq: 1 BYE\r\n\r\n"
    )
    out = h.feed(bad)
    assert labels(out) == ["400 BYE -> 10.0.0.1"]
    assert h.feed(b"\x00\x01garbage\r\n\r\n") == []
    assert h.core.stats["parse_errors"] == 2 and h.core.active_calls == 0


class _BrokenOnce(dict):  # type: ignore[type-arg]
    """A table that fails the first time an entry is stored: an internal error in the middle of a step.
    (The core's classes are compiled to native classes: their methods cannot be patched, their tables
    can be swapped for a dict subclass.)"""

    armed = True

    def __setitem__(self, key: object, value: object) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("boom")
        super().__setitem__(key, value)


def test_an_internal_error_neither_crashes_nor_leaves_the_call_stuck() -> None:
    h = Harness()
    ci = only(h.feed(caller_invite()), GW1, method="INVITE")
    h.core.dialogs = _BrokenOnce(h.core.dialogs)  # the 180's early dialog is the next entry stored
    out = h.feed(answer(ci, 180), GW1)
    assert h.core.stats["internal_errors"] == 1
    assert select(out, CALLER, status=500) and select(out, GW1, method="CANCEL")
    assert h.event("call.terminated")["reason"] == "rejected"
    assert h.core.active_calls == 0 and any(log.level == "error" for log in h.logs)


def test_delayed_offer_the_callers_ack_carries_the_answer_to_the_carrier() -> None:
    from test_b2bua_core_harness import caller_dialog

    h = Harness()
    invite = caller_invite(body=b"")
    carrier_invite = only(h.feed(invite), GW1, method="INVITE")
    assert carrier_invite.body == b""
    out = h.feed(answer(carrier_invite, 200, body=SDP_B), GW1)
    assert labels(out) == ["200 INVITE -> 10.0.0.1"]  # no ACK to the carrier before the caller's answer
    ok = only(out, CALLER, status=200)
    ack = caller_dialog(invite, ok).create_ack(branch="z9hG4bKa9", body=SDP_A, content_type="application/sdp")
    out = h.feed(ack)
    carrier_ack = only(out, GW1, method="ACK")
    assert carrier_ack.body == SDP_A and carrier_ack.call_id == carrier_invite.call_id


@pytest.mark.parametrize(("sip", "host"), [
    ({"listen_host": "0.0.0.0", "advertised_host": "203.0.113.5"}, "203.0.113.5"),
    ({"listen_host": "::", "advertised_host": "2001:db8::5"}, "[2001:db8::5]"),
    ({}, "127.0.0.1"),  # no advertised host: the bound one
])
def test_every_address_of_ours_in_sip_headers_is_the_advertised_one(sip: dict[str, str], host: str) -> None:
    # Bound to every address (a container, 0.0.0.0): peers must still be told one they can reach.
    h = Harness({"sip": sip})
    invite = caller_invite()
    carrier_invite = only(h.feed(invite), GW1, method="INVITE")
    assert carrier_invite.headers.get("Via").split()[1].split(";")[0] == f"{host}:5060"
    assert carrier_invite.headers.get("Contact") == f"<sip:b2bua@{host}:5060>"
    assert carrier_invite.from_.uri.host == host and carrier_invite.call_id.endswith(f"@{host}")
    h.feed(answer(carrier_invite, 180), GW1)
    ok = only(h.feed(answer(carrier_invite, 200, body=SDP_B), GW1), CALLER, status=200)
    assert ok.headers.get("Contact") == f"<sip:b2bua@{host}:5060>"
    assert "0.0.0.0" not in str(carrier_invite.headers) + str(ok.headers)


@pytest.mark.parametrize("sip", [{"listen_host": "0.0.0.0"}, {"listen_host": "::"},
                                 {"listen_host": "0.0.0.0", "advertised_host": "0.0.0.0"}])
def test_a_wildcard_bind_without_a_reachable_address_is_refused(sip: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"set sip\.advertised_host"):
        CoreConfig.from_config(make_config({"sip": sip}))


def test_a_retransmitted_2xx_is_acked_until_its_transaction_ends_then_the_ack_is_not_kept() -> None:
    """13.2.2.4: each retransmission of the carrier's 2xx gets the ACK again, for the 64*T1 the carrier
    retransmits it (RFC 6026 timer M); after that a held call does not keep the ACK's bytes."""
    h = Harness()
    c = Call(h)
    ok = answer(c.out_invite, 200, body=SDP_B)
    first = only(h.feed(ok, GW1), GW1, method="ACK")
    assert first.cseq.num == c.out_invite.cseq.num
    call = h.core.calls[c.call_id]
    assert call.carrier.last_ack is not None
    h.advance(40.0)
    assert call.carrier.last_ack is None and call.attempt is not None and call.attempt.key is None
    assert h.core.calls[c.call_id] is call  # the call itself is up as before
