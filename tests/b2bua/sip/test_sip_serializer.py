"""Serialisation and RFC 3261 8.2.6 response construction."""

from __future__ import annotations

import pytest

from b2bua.sip.message import Request, Response
from b2bua.sip.parser import ParseError, parse_message
from b2bua.sip.serializer import build_response, reason_phrase, response_from_parse_error, serialize


def make_invite() -> Request:
    return Request(
        "INVITE",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1"),
            ("Via", "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKa1;received=198.51.100.7"),
            ("Record-Route", "<sip:proxy.example.com;lr>"),
            ("Max-Forwards", "69"),
            ("From", '"Alice" <sip:alice@example.com>;tag=ftag'),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1@192.0.2.1"),
            ("CSeq", "1 INVITE"),
            ("Timestamp", "54"),
            ("Content-Length", "999"),
        ],
        b"v=0\r\n",
    )


def test_content_length_is_always_correct() -> None:
    req = make_invite()
    wire = serialize(req)
    assert b"Content-Length: 5\r\n" in wire
    assert b"999" not in wire
    assert wire.endswith(b"\r\n\r\nv=0\r\n")
    no_cl = Request("OPTIONS", "sip:x@y", [("Call-ID", "1")])
    assert serialize(no_cl).endswith(b"Call-ID: 1\r\nContent-Length: 0\r\n\r\n")


def test_start_lines() -> None:
    assert serialize(make_invite()).startswith(b"INVITE sip:bob@example.com SIP/2.0\r\n")
    assert serialize(Response(486, "")).startswith(b"SIP/2.0 486 Busy Here\r\n")
    assert serialize(Response(299, "")).startswith(b"SIP/2.0 299 OK\r\n")
    assert reason_phrase(422) == "Session Interval Too Small"


def test_build_response_copies_rfc3261_fields() -> None:
    req = make_invite()
    resp = build_response(req, 180, to_tag="totag")
    assert resp.status == 180 and resp.reason == "Ringing"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")  # order kept, received kept
    assert resp.headers.get("From") == req.headers.get("From")
    assert resp.headers.get("To") == "<sip:bob@example.com>;tag=totag"
    assert resp.headers.get("Call-ID") == "call-1@192.0.2.1"
    assert resp.headers.get("CSeq") == "1 INVITE"
    assert "Record-Route" not in resp.headers
    assert "Timestamp" not in resp.headers
    assert "Max-Forwards" not in resp.headers


def test_build_response_100_has_no_tag_but_timestamp() -> None:
    resp = build_response(make_invite(), 100, to_tag="ignored")
    assert resp.headers.get("To") == "<sip:bob@example.com>"
    assert resp.headers.get("Timestamp") == "54"


def test_build_response_keeps_existing_to_tag_and_copies_record_route() -> None:
    req = make_invite()
    req.headers.set("To", "<sip:bob@example.com>;tag=existing")
    resp = build_response(req, 200, to_tag="new", copy_record_route=True, headers=[("Contact", "<sip:b@h>")])
    assert resp.headers.get("To") == "<sip:bob@example.com>;tag=existing"
    assert resp.headers.get_all("Record-Route") == ["<sip:proxy.example.com;lr>"]
    assert resp.headers.get("Contact") == "<sip:b@h>"


def test_response_round_trip() -> None:
    resp = build_response(make_invite(), 200, to_tag="t", body=b"sdp")
    parsed = parse_message(serialize(resp))
    assert isinstance(parsed, Response)
    assert (parsed.status, parsed.reason, parsed.body) == (200, "OK", b"sdp")
    assert [h for h in parsed.headers if h[0] != "Content-Length"] == resp.headers.items()
    assert parsed.headers.get("Content-Length") == "3"


def test_400_from_parse_error_echoes_fields() -> None:
    raw = serialize(make_invite()).replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    resp = response_from_parse_error(info.value, to_tag="bad1")
    assert resp is not None
    assert resp.status == 400
    assert resp.reason.startswith("Bad Request (")
    assert len(resp.headers.get_all("Via")) == 2
    assert resp.headers.get("Call-ID") == "call-1@192.0.2.1"
    assert resp.headers.get("CSeq") == "1 BYE"
    assert resp.headers.get("To") == "<sip:bob@example.com>;tag=bad1"
    # The answer itself must be a well-formed response.
    assert isinstance(parse_message(serialize(resp)), Response)


def test_no_400_for_responses_or_without_via() -> None:
    assert response_from_parse_error(ParseError("x", is_request=False, partial={"Via": ["v"]})) is None
    assert response_from_parse_error(ParseError("x", is_request=True, partial={"Call-ID": ["c"]})) is None
    assert response_from_parse_error(ParseError("x", is_request=None)) is None


def test_reason_phrase_of_400_is_single_line() -> None:
    err = ParseError(
        "bad\r\nInjected: header", is_request=True, partial={"Via": ["SIP/2.0/UDP h;branch=z9hG4bK1"]}
    )
    resp = response_from_parse_error(err)
    assert resp is not None and "\n" not in resp.reason and "\r" not in resp.reason
