"""RFC 3261 §12 dialogs: creation, CSeq rules, route sets, in-dialog requests, termination."""

from __future__ import annotations

import pytest

from b2bua.sip.dialog import Dialog, DialogState, DialogTerminatedError, dialog_id_for_request
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import parse_message
from b2bua.sip.serializer import build_response, serialize
from b2bua.sip.session_timer import SessionTimer


def invite(cseq: int = 10) -> Request:
    return Request(
        "INVITE",
        "sip:bob@biloxi.example.com",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKd1"),
            ("Max-Forwards", "70"),
            ("From", '"Alice" <sip:alice@atlanta.example.com>;tag=alice-tag'),
            ("To", "Bob <sip:bob@biloxi.example.com>"),
            ("Call-ID", "dlg-1@192.0.2.1"),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", "<sip:alice@192.0.2.1:5060>"),
            ("Record-Route", "<sip:p1.example.com;lr>"),
            ("Record-Route", "<sip:p2.example.com;lr>"),
        ],
    )


def uac_response(status: int, *, record_route: list[str] | None = None) -> Response:
    resp = build_response(invite(), status, to_tag="bob-tag")
    for rr in (
        record_route if record_route is not None else ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    ):
        resp.headers.add("Record-Route", rr)
    resp.headers.add("Contact", "<sip:bob@198.51.100.5:5070;transport=UDP>")
    return resp


def uac_dialog(status: int = 200, **kw: list[str]) -> Dialog:
    return Dialog.uac_from_response(invite(), uac_response(status, **kw), via_sent_by="192.0.2.1:5060")


def test_uac_dialog_from_2xx() -> None:
    d = uac_dialog()
    assert d.state is DialogState.CONFIRMED and d.is_uac
    assert d.id.call_id == "dlg-1@192.0.2.1"
    assert (d.local_tag, d.remote_tag) == ("alice-tag", "bob-tag")
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]  # reversed for the UAC
    assert d.remote_target == "sip:bob@198.51.100.5:5070;transport=UDP"
    assert d.local_seq == 10 and d.remote_seq is None


def test_uac_early_dialog_from_tagged_1xx_then_confirmed() -> None:
    d = uac_dialog(180)
    assert d.state is DialogState.EARLY
    d.on_response(invite(), uac_response(200))
    assert d.state is DialogState.CONFIRMED


def test_early_dialog_terminated_by_non2xx() -> None:
    d = uac_dialog(183)
    d.on_response(invite(), uac_response(487))
    assert d.state is DialogState.TERMINATED


def test_no_dialog_from_100_or_untagged_or_error() -> None:
    with pytest.raises(ValueError):
        Dialog.uac_from_response(invite(), build_response(invite(), 100))
    with pytest.raises(ValueError):
        Dialog.uac_from_response(invite(), build_response(invite(), 180))
    with pytest.raises(ValueError):
        Dialog.uac_from_response(invite(), build_response(invite(), 486, to_tag="x"))


def test_uac_builds_bye_with_routes_and_incremented_cseq() -> None:
    d = uac_dialog()
    bye = d.create_bye(branch="z9hG4bKbye1")
    assert bye.method == "BYE"
    assert bye.uri == "sip:bob@198.51.100.5:5070;transport=UDP"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert bye.cseq.num == 11 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "alice-tag" and bye.from_.display == "Alice"
    assert bye.to.tag == "bob-tag"
    assert bye.top_via.branch == "z9hG4bKbye1"
    assert bye.call_id == "dlg-1@192.0.2.1"
    # What we build must survive our own parser.
    assert parse_message(serialize(bye)) is not None


def test_ack_for_2xx_reuses_invite_cseq_with_new_branch() -> None:
    d = uac_dialog()
    ack = d.create_ack(branch="z9hG4bKack1")
    assert ack.cseq.num == 10 and ack.cseq.method == "ACK"
    assert ack.top_via.branch == "z9hG4bKack1"
    assert d.local_seq == 10  # ACK does not consume a sequence number
    reinvite = d.create_reinvite(branch="z9hG4bKre1", body=b"v=0\r\n")
    assert reinvite.cseq.num == 11
    assert reinvite.headers.get("Contact") == "<sip:alice@192.0.2.1:5060>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert d.create_ack(branch="z9hG4bKack2").cseq.num == 11  # ACK for the re-INVITE's 2xx


@pytest.mark.parametrize(
    ("method", "builder"),
    [("UPDATE", "create_update"), ("OPTIONS", "create_options"), ("INFO", "create_info")],
)
def test_other_in_dialog_requests(method: str, builder: str) -> None:
    d = uac_dialog()
    r = getattr(d, builder)(branch="z9hG4bKx")
    assert r.method == method and r.cseq.num == 11 and r.cseq.method == method
    assert ("Contact" in r.headers) is (method == "UPDATE")  # target-refresh requests carry Contact


def test_strict_routing() -> None:
    d = uac_dialog(record_route=["<sip:strict.example.com;maddr=10.0.0.9>", "<sip:p1.example.com;lr>"])
    bye = d.create_bye(branch="z9hG4bKs")
    # First route (after reversal) is loose here; put the strict one first to exercise 12.2.1.1.
    assert bye.uri == d.remote_target
    d.route_set = ["<sip:strict.example.com;maddr=10.0.0.9>", "<sip:p1.example.com;lr>"]
    bye = d.create_bye(branch="z9hG4bKs2")
    assert bye.uri == "sip:strict.example.com;maddr=10.0.0.9"
    assert bye.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:bob@198.51.100.5:5070;transport=UDP>",
    ]


def test_uas_dialog_and_remote_cseq_rules() -> None:
    inv = invite(cseq=100)
    d = Dialog.uas_from_request(
        inv, "bob-tag", local_contact="<sip:bob@198.51.100.5>", via_sent_by="198.51.100.5"
    )
    assert d.state is DialogState.EARLY and not d.is_uac
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]  # not reversed for UAS
    assert d.remote_target == "sip:alice@192.0.2.1:5060"
    assert (d.local_tag, d.remote_tag) == ("bob-tag", "alice-tag")
    d.confirm()
    assert d.state is DialogState.CONFIRMED

    def in_dialog(method: str, num: int) -> Request:
        r = Request(
            method,
            "sip:bob@198.51.100.5",
            [
                ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKq"),
                ("From", '"Alice" <sip:alice@atlanta.example.com>;tag=alice-tag'),
                ("To", "Bob <sip:bob@biloxi.example.com>;tag=bob-tag"),
                ("Call-ID", "dlg-1@192.0.2.1"),
                ("CSeq", f"{num} {method}"),
            ],
        )
        return r

    assert d.matches(in_dialog("BYE", 1))
    assert dialog_id_for_request(in_dialog("BYE", 1)) == d.id
    assert d.validate_request(in_dialog("ACK", 100)) is None
    assert d.validate_request(in_dialog("INFO", 99)) == 500  # lower CSeq: out of order (12.2.2)
    assert d.validate_request(in_dialog("INFO", 101)) is None
    assert d.remote_seq == 101
    assert d.validate_request(in_dialog("INFO", 100)) == 500
    refresh = in_dialog("UPDATE", 150)
    refresh.headers.add("Contact", "<sip:alice@203.0.113.9:5090>")
    assert d.validate_request(refresh) is None
    assert d.remote_target == "sip:alice@203.0.113.9:5090"  # target refresh
    # Our first request starts our own CSeq space.
    bye = d.create_bye(branch="z9hG4bKu1")
    assert bye.cseq.num == 1
    assert bye.from_.tag == "bob-tag" and bye.to.tag == "alice-tag"
    assert bye.uri == "sip:alice@203.0.113.9:5090"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]


def test_terminated_dialog_refuses_everything_including_timer_fires() -> None:
    d = uac_dialog()
    timer = SessionTimer(90, we_refresh=True)
    timer.start(0.0)
    d.attach_timer(timer)
    d.terminate()
    assert d.is_terminated
    # The refresh deadline was at 45 s; firing after the dialog ended must do nothing.
    assert timer.fire(45.0) is None
    assert timer.fire(1000.0) is None
    with pytest.raises(DialogTerminatedError):
        d.create_reinvite(branch="z9hG4bKlate")
    with pytest.raises(DialogTerminatedError):
        d.create_bye(branch="z9hG4bKlate")
    assert d.validate_request(invite(11)) == 481
    late = SessionTimer(90, we_refresh=False)
    late.start(0.0)
    d.attach_timer(late)  # attaching to an ended dialog stops it at once
    assert late.fire(100.0) is None


def test_481_or_408_to_in_dialog_request_terminates() -> None:
    d = uac_dialog()
    bye = d.create_options(branch="z9hG4bKo")
    d.on_response(bye, build_response(bye, 481))
    assert d.is_terminated


def test_reinvite_2xx_refreshes_target() -> None:
    d = uac_dialog()
    re = d.create_reinvite(branch="z9hG4bKr")
    ok = build_response(re, 200)
    ok.headers.add("Contact", "<sip:bob@203.0.113.50>")
    d.on_response(re, ok)
    assert d.remote_target == "sip:bob@203.0.113.50"
