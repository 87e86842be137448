"""Header multi-map and grammar helpers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.sip.message import (
    CSeq,
    Headers,
    Request,
    SipSyntaxError,
    canonical_name,
    parse_auth_params,
    parse_cseq,
    parse_min_se,
    parse_name_addr,
    parse_session_expires,
    parse_token_list,
    parse_uri,
    parse_via,
    split_commas,
)


@pytest.mark.parametrize(
    ("compact", "full"),
    [
        ("i", "Call-ID"),
        ("f", "From"),
        ("t", "To"),
        ("v", "Via"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("x", "Session-Expires"),
        ("s", "Subject"),
        ("o", "Event"),
        ("e", "Content-Encoding"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("u", "Allow-Events"),
        ("I", "Call-ID"),
    ],
)
def test_compact_forms(compact: str, full: str) -> None:
    assert canonical_name(compact) == full


def test_canonical_spellings() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("CSEQ") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("min-se") == "Min-SE"
    assert canonical_name("x-custom-thing") == "X-Custom-Thing"


def test_headers_multimap_keeps_order_and_is_case_insensitive() -> None:
    h = Headers()
    h.add("via", "a")
    h.add("To", "t")
    h.add("v", "b")
    assert h.get_all("VIA") == ["a", "b"]
    assert h.get("Via") == "a"
    assert "v" in h and "Route" not in h
    h.prepend("Via", "top")
    assert h.get_all("Via") == ["top", "a", "b"]
    assert h.items()[0] == ("Via", "top")
    h.set("via", "only")
    assert h.get_all("Via") == ["only"]
    assert [n for n, _ in h] == ["Via", "To"]
    assert h.remove("to") == 1 and len(h) == 1
    assert h.remove_first("Via") == "only" and len(h) == 0
    assert h.get("Via", "dflt") == "dflt"


def test_headers_equality_and_copy() -> None:
    h = Headers([("From", "a"), ("To", "b")])
    c = h.copy()
    assert c == h
    c.add("X", "y")
    assert c != h


def test_split_commas_respects_quotes_and_brackets() -> None:
    value = '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>, sip:l@z'
    assert split_commas(value) == ['"Doe, John" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>", "sip:l@z"]


@pytest.mark.parametrize("value", ["UDP", "udp", "Udp"])
def test_uri_transport_param_is_case_insensitive(value: str) -> None:
    uri = parse_uri(f"sip:alice@192.0.2.1:5062;transport={value};lr")
    assert uri.transport == "udp"
    assert uri.user == "alice" and uri.host == "192.0.2.1" and uri.port == 5062
    assert uri.lr
    assert str(uri) == f"sip:alice@192.0.2.1:5062;transport={value};lr"


def test_uri_variants() -> None:
    u = parse_uri("sips:bob:secret@[2001:db8::1]:5061;maddr=10.0.0.1?subject=hi")
    assert u.scheme == "sips" and u.password == "secret" and u.host == "[2001:db8::1]"
    assert u.port == 5061 and u.params == {"maddr": "10.0.0.1"} and u.headers == "subject=hi"
    assert str(u) == "sips:bob:secret@[2001:db8::1]:5061;maddr=10.0.0.1?subject=hi"
    tel = parse_uri("tel:+1-201-555-0123")
    assert tel.scheme == "tel" and str(tel) == "tel:+1-201-555-0123"
    assert parse_uri("sip:example.com").user is None
    assert parse_uri("SIP:x@Example.COM").scheme == "sip"


@pytest.mark.parametrize(
    "bad", ["", "nocolon", "sip:", "sip:a@b:0", "sip:a@b:70000", "sip:a@ho st", "1sip:x"]
)
def test_bad_uris(bad: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse_uri(bad)


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com;transport=TCP>;tag=abc;x')
    assert na.display == 'Alice "A"'
    assert na.uri.transport == "tcp"
    assert na.tag == "abc" and na.params["x"] is None
    bare = parse_name_addr("sip:bob@example.com;tag=77")
    assert bare.tag == "77" and bare.uri.params == {}
    token_display = parse_name_addr("Bob <sip:bob@example.com>")
    assert token_display.display == "Bob"
    assert parse_name_addr("*").wildcard
    assert str(parse_name_addr('"A" <sip:a@b>;tag=1')) == '"A" <sip:a@b>;tag=1'
    with pytest.raises(SipSyntaxError):
        parse_name_addr("<sip:a@b")


def test_via_parsing() -> None:
    via = parse_via("SIP/2.0/udp 192.0.2.1:5070;branch=z9hG4bKabc;rport=5071;received=198.51.100.2")
    assert via.transport == "UDP"
    assert via.host == "192.0.2.1" and via.port == 5070
    assert via.branch == "z9hG4bKabc" and via.is_rfc3261_branch
    assert via.rport == 5071 and via.received == "198.51.100.2"
    assert via.sent_by == ("192.0.2.1", 5070)
    empty_rport = parse_via("SIP/2.0/TLS Host.Example.com;rport;branch=old")
    assert empty_rport.rport is True
    assert empty_rport.sent_by == ("host.example.com", 5061)
    assert not empty_rport.is_rfc3261_branch
    assert parse_via("SIP/2.0/UDP h;branch=z9hG4bK1").rport is None
    spaced = parse_via("SIP / 2.0 / UDP host.example.com : 5090 ;branch=z9hG4bK2")
    assert spaced.port == 5090 and spaced.branch == "z9hG4bK2"
    assert str(parse_via("SIP/2.0/UDP h:1;branch=z9hG4bK1;rport")) == "SIP/2.0/UDP h:1;branch=z9hG4bK1;rport"


@pytest.mark.parametrize(
    "bad", ["", "SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:port", "SIP/2.0/UDP h x"]
)
def test_bad_vias(bad: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse_via(bad)


def test_cseq() -> None:
    assert parse_cseq("  0042   INVITE ") == parse_cseq("42 INVITE")
    assert str(parse_cseq("1 BYE")) == "1 BYE"
    for bad in ["INVITE", "1", "-1 INVITE", f"{2**31} INVITE", "1 INV ITE"]:
        with pytest.raises(SipSyntaxError):
            parse_cseq(bad)


_CSEQ_REGEX = re.compile(r"^\s*(\d{1,10})\s+([A-Za-z0-9.!%*_+`'~\-]+)\s*$")  # what parse_cseq was


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=" \t\r\n\x0b\x1c\u00a0\u2003019\u0663\u00b2-INVITEBYEack!~.%", max_size=24),
    st.builds(lambda lead, num, gap, method, tail: f"{lead}{num}{gap}{method}{tail}",
              st.sampled_from(["", " ", "\t", "\u00a0"]), st.integers(0, 10**11).map(str),
              st.sampled_from(["", " ", "  ", "\t", "\u2003"]),
              st.sampled_from(["INVITE", "BYE", "X-Custom.1", "bad@", "in vite", "Ack"]),
              st.sampled_from(["", " ", "\r\n", "x"])),
))
def test_cseq_reads_exactly_what_the_regex_it_replaced_read(value: str) -> None:
    m = _CSEQ_REGEX.match(value)
    expected = None if m is None or int(m.group(1)) >= 2**31 else CSeq(int(m.group(1)), m.group(2))
    try:
        got: CSeq | None = parse_cseq(value)
    except SipSyntaxError:
        got = None
    assert got == expected


def test_session_expires_and_min_se() -> None:
    se = parse_session_expires("1800;refresher=UAC")
    assert se.delta == 1800 and se.refresher == "uac"
    assert str(se) == "1800;refresher=uac"
    assert parse_session_expires(" 90 ").refresher is None
    assert parse_session_expires("600;foo=bar").delta == 600
    with pytest.raises(SipSyntaxError):
        parse_session_expires("600;refresher=proxy")
    with pytest.raises(SipSyntaxError):
        parse_session_expires("abc")
    assert parse_min_se("90") == 90
    assert parse_min_se(" 120;ext=1") == 120
    with pytest.raises(SipSyntaxError):
        parse_min_se("")


def test_token_lists() -> None:
    assert parse_token_list(["timer, 100rel", "Replaces", ""]) == ["timer", "100rel", "replaces"]


def test_auth_params() -> None:
    scheme, params = parse_auth_params(
        'Digest realm="atlanta.example.com", NONCE="ab,c", qop="auth,auth-int", algorithm=MD5, stale=FALSE'
    )
    assert scheme == "Digest"
    assert params == {
        "realm": "atlanta.example.com",
        "nonce": "ab,c",
        "qop": "auth,auth-int",
        "algorithm": "MD5",
        "stale": "FALSE",
    }


def test_request_convenience_accessors() -> None:
    req = Request(
        "INVITE",
        "sip:b@example.com",
        [
            ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
            ("From", "<sip:a@example.com>;tag=f"),
            ("To", "<sip:b@example.com>"),
            ("Call-ID", "c"),
            ("CSeq", "5 INVITE"),
            ("Max-Forwards", "12"),
            ("Contact", "<sip:a@192.0.2.1>"),
        ],
    )
    assert req.max_forwards == 12
    assert req.cseq.num == 5
    assert req.from_.tag == "f" and req.to.tag is None
    assert req.contacts[0].uri.host == "192.0.2.1"
    assert req.parsed_uri.user == "b"


def test_replace_first_stamps_the_top_via_and_keeps_the_other_fields_parsed() -> None:
    req = Request("BYE", "sip:b@example.com", [
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
        ("Via", "SIP/2.0/UDP p;branch=z9hG4bK0"),
        ("From", "<sip:a@example.com>;tag=f"),
        ("To", "<sip:b@example.com>;tag=t"),
        ("Call-ID", "c"),
        ("CSeq", "2 BYE"),
    ])
    before = req.from_, req.cseq, req.vias  # parsed and cached, as the parser leaves a message
    assert req.headers.replace_first("Via", "SIP/2.0/UDP h;branch=z9hG4bK1;received=192.0.2.7;rport=5070")
    assert req.from_ is before[0] and req.cseq is before[1]  # not parsed again
    assert req.top_via.params["received"] == "192.0.2.7"  # the Via is read anew
    assert [v.host for v in req.vias] == ["h", "p"] and req.vias[0].params["rport"] == "5070"
    assert [n for n, _ in req.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq"]
    assert not req.headers.replace_first("Route", "<sip:x>") and "Route" not in req.headers
