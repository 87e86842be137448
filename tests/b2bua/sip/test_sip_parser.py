"""Parser behaviour on real-world and torture-style messages (RFC 4475 flavoured, written here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b2bua.sip.message import Request, Response
from b2bua.sip.parser import ParseError, ParserLimits, StreamFramer, parse_message
from b2bua.sip.serializer import serialize


def crlf(text: str) -> bytes:
    """Tests are written with \\n line ends for readability; SIP wants CRLF."""
    return text.replace("\n", "\r\n").encode()


BASIC_INVITE = crlf(
    "INVITE sip:bob@biloxi.example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\n"
    "Max-Forwards: 70\n"
    "To: Bob <sip:bob@biloxi.example.com>\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
    "CSeq: 314159 INVITE\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: 4\n"
    "\n"
    "v=0\n"
)

BASIC_RESPONSE = crlf(
    "SIP/2.0 180 Ringing\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1\n"
    "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
    "CSeq: 314159 INVITE\n"
    "Content-Length: 0\n"
    "\n"
)

# Everything a lenient-but-correct parser must survive: compact forms, folding, whitespace around
# colons, slashes and '=', mixed-case names, leading zeros, empty values, unknown headers.
TORTURE = crlf(
    "OPTIONS sip:carol@chicago.example.com;unknownparam SIP/2.0\n"
    "tO :\n"
    " sip:carol@chicago.example.com ;   tag    = 88sja8x\n"
    'f   : "C. Harvey \\\\\\"boss\\"" <sip:harvey@example.net>\n'
    "  ;\n"
    "  tag = 2j0xz\n"
    "mAx-fOrWaRdS: 0042\n"
    "i: torture.fold.1@192.0.2.7\n"
    "cseq: 0007\n"
    "  OPTIONS\n"
    "Via  : SIP  /   2.0\n"
    " /UDP\n"
    "    192.0.2.7;branch=z9hG4bKws1\n"
    "s :\n"
    "X-Strange:   first part\n"
    "\t second part\n"
    "X-Odd-Value: ;;,,;;,;\n"
    "v:  SIP  / 2.0  / TCP     relay.example.com   ;\n"
    "  branch  =   z9hG4bKx9 ,\n"
    " SIP  /    2.0   / UDP  [2001:db8::9:1]:5070   ; branch=\n"
    " z9hG4bKz2\n"
    'm:"Quoted, \\"comma\\"" <sip:harvey@192.0.2.7;transport=UDP> ; q = 0.5 , <sip:h2@example.net>\n'
    "l: 0\n"
    "\n"
)


def test_basic_invite_fields() -> None:
    msg = parse_message(BASIC_INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:bob@biloxi.example.com"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq.num == 314159 and msg.cseq.method == "INVITE"
    assert msg.from_.tag == "1928301774"
    assert msg.from_.display == "Alice"
    assert msg.to.tag is None
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.body == b"v=0\r"  # truncated to Content-Length on a datagram
    assert msg.max_forwards == 70


def test_basic_response_fields() -> None:
    msg = parse_message(BASIC_RESPONSE)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to.tag == "a6c85cf"
    assert msg.top_via.received == "192.0.2.1"
    assert msg.body == b""


def test_reason_phrase_with_spaces_and_utf8() -> None:
    raw = BASIC_RESPONSE.replace(b"180 Ringing", "486 Busy Here – ça sonne".encode())
    msg = parse_message(raw)
    assert isinstance(msg, Response)
    assert msg.reason == "Busy Here – ça sonne"


def test_torture_message() -> None:
    msg = parse_message(TORTURE)
    assert isinstance(msg, Request)
    assert msg.method == "OPTIONS"
    assert msg.to.tag == "88sja8x"
    assert msg.to.uri.user == "carol"
    assert msg.from_.tag == "2j0xz"
    assert msg.from_.display == 'C. Harvey \\"boss"'
    assert msg.max_forwards == 42
    assert msg.call_id == "torture.fold.1@192.0.2.7"
    assert msg.cseq.num == 7 and msg.cseq.method == "OPTIONS"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("x-strange") == "first part second part"
    assert msg.headers.get("X-Odd-Value") == ";;,,;;,;"
    vias = msg.vias
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in vias] == ["z9hG4bKws1", "z9hG4bKx9", "z9hG4bKz2"]
    assert vias[1].host == "relay.example.com"
    assert vias[2].host == "[2001:db8::9:1]" and vias[2].port == 5070
    contacts = msg.contacts
    assert len(contacts) == 2
    assert contacts[0].display == 'Quoted, "comma"'
    assert contacts[0].params["q"] == "0.5"
    assert contacts[0].uri.transport == "udp"
    assert str(contacts[1].uri) == "sip:h2@example.net"


def test_uppercase_transport_param_does_not_crash() -> None:
    raw = BASIC_INVITE.replace(
        b"INVITE sip:bob@biloxi.example.com SIP", b"INVITE sip:bob@192.0.2.4:5080;transport=UDP SIP"
    )
    msg = parse_message(raw)
    assert isinstance(msg, Request)
    uri = msg.parsed_uri
    assert uri.transport == "udp"
    assert uri.port == 5080
    assert uri.params["transport"] == "UDP"  # preserved as written for re-serialisation


def test_missing_max_forwards_is_accepted_as_70() -> None:
    raw = BASIC_INVITE.replace(b"Max-Forwards: 70\r\n", b"")
    msg = parse_message(raw)
    assert isinstance(msg, Request)
    assert "Max-Forwards" not in msg.headers
    assert msg.max_forwards == 70


def test_multiple_vias_in_one_line_and_across_lines() -> None:
    raw = BASIC_RESPONSE.replace(
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n",
        b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKa, SIP/2.0/UDP p2.example.com;branch=z9hG4bKb\r\n"
        b"v: SIP/2.0/TCP p3.example.com:5090;branch=z9hG4bKc;rport=5091\r\n",
    )
    msg = parse_message(raw)
    assert msg is not None
    assert [v.host for v in msg.vias] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert msg.vias[2].rport == 5091


def test_www_authenticate_commas_are_not_split() -> None:
    raw = BASIC_RESPONSE.replace(
        b"Content-Length: 0",
        b'WWW-Authenticate: Digest realm="a, b", nonce="x", qop="auth,auth-int"\r\nContent-Length: 0',
    )
    msg = parse_message(raw)
    assert msg is not None
    assert msg.headers.get_all("WWW-Authenticate") == ['Digest realm="a, b", nonce="x", qop="auth,auth-int"']


@pytest.mark.parametrize("data", [b"\r\n\r\n", b"\r\n", b"", b"   \r\n"])
def test_keepalives_return_none(data: bytes) -> None:
    assert parse_message(data) is None


def test_leading_crlf_before_start_line_is_ignored() -> None:
    msg = parse_message(b"\r\n\r\n" + BASIC_INVITE)
    assert isinstance(msg, Request)


def test_bare_lf_line_endings_are_tolerated() -> None:
    msg = parse_message(BASIC_INVITE.replace(b"\r\n", b"\n"))
    assert isinstance(msg, Request)
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


def test_udp_body_without_content_length_is_rest_of_datagram() -> None:
    raw = BASIC_INVITE.replace(b"Content-Length: 4\r\n", b"")
    msg = parse_message(raw)
    assert msg is not None and msg.body == b"v=0\r\n"


def test_stream_requires_content_length() -> None:
    raw = BASIC_INVITE.replace(b"Content-Length: 4\r\n", b"")
    with pytest.raises(ParseError, match="Content-Length"):
        parse_message(raw, stream=True)


def test_body_shorter_than_content_length() -> None:
    raw = BASIC_INVITE.replace(b"Content-Length: 4", b"Content-Length: 400")
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    assert info.value.is_request is True
    assert set(info.value.partial) == {"Via", "From", "To", "Call-ID", "CSeq"}


@pytest.mark.parametrize(
    ("old", "new"), [(b"Content-Length: 4", "Content-Length: ²"), (b"Max-Forwards: 70", "Max-Forwards: ²")]
)
def test_non_ascii_digits_are_rejected_cleanly(old: bytes, new: str) -> None:
    with pytest.raises(ParseError, match="bad"):
        parse_message(BASIC_INVITE.replace(old, new.encode()))


def test_conflicting_content_lengths_rejected() -> None:
    raw = BASIC_INVITE.replace(b"Content-Length: 4\r\n", b"Content-Length: 4\r\nl: 5\r\n")
    with pytest.raises(ParseError, match="Content-Length"):
        parse_message(raw)


def test_cseq_method_mismatch_gives_partial_fields_for_400() -> None:
    raw = BASIC_INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    err = info.value
    assert err.is_request is True
    assert "CSeq" in err.reason
    assert err.partial["Via"] == ["SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"]
    assert err.partial["Call-ID"] == ["a84b4c76e66710@pc33.atlanta.example.com"]
    assert err.partial["CSeq"] == ["314159 BYE"]
    assert err.partial["From"][0].endswith("tag=1928301774")


@pytest.mark.parametrize("header", [b"To", b"From", b"CSeq", b"Call-ID", b"Via"])
def test_missing_mandatory_header(header: bytes) -> None:
    lines = [ln for ln in BASIC_INVITE.split(b"\r\n") if not ln.startswith(header + b":")]
    with pytest.raises(ParseError, match="missing"):
        parse_message(b"\r\n".join(lines))


def test_missing_header_in_response_is_flagged_as_response() -> None:
    raw = BASIC_RESPONSE.replace(b"CSeq: 314159 INVITE\r\n", b"")
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    assert info.value.is_request is False


@pytest.mark.parametrize(
    "start_line",
    [
        b"INVITE sip:bob@example.com SIP/7.0",
        b"INVITE  sip:bob@example.com SIP/2.0",
        b"INV(ITE sip:bob@example.com SIP/2.0",
        b"INVITE bob SIP/2.0",
        b"INVITE sip:bob@example.com:99999 SIP/2.0",
    ],
)
def test_bad_request_lines(start_line: bytes) -> None:
    raw = start_line + BASIC_INVITE[BASIC_INVITE.index(b"\r\n") :]
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    assert info.value.is_request is True
    assert "Call-ID" in info.value.partial  # still enough to answer 400


@pytest.mark.parametrize(
    "start_line", [b"SIP/2.0 99 Odd", b"SIP/2.0 700 Odd", b"SIP/2.0 abc Odd", b"SIP/3.0 200 OK"]
)
def test_bad_status_lines(start_line: bytes) -> None:
    raw = start_line + BASIC_RESPONSE[BASIC_RESPONSE.index(b"\r\n") :]
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    assert info.value.is_request is False


def test_garbage_start_line_is_unclassified() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(b"hello there\r\n\r\n")
    assert info.value.is_request is None or info.value.is_request is True


def test_unknown_method_is_parsed() -> None:
    raw = BASIC_INVITE.replace(b"INVITE sip:", b"NEWMETHOD sip:").replace(
        b"314159 INVITE", b"314159 NEWMETHOD"
    )
    msg = parse_message(raw)
    assert isinstance(msg, Request) and msg.method == "NEWMETHOD"


def test_limits_message_size() -> None:
    with pytest.raises(ParseError, match="too large"):
        parse_message(BASIC_INVITE, limits=ParserLimits(max_message_size=100))


def test_limits_header_count() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    raw = BASIC_INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + extra)
    with pytest.raises(ParseError, match="too many headers") as info:
        parse_message(raw)
    assert info.value.partial.get("Call-ID")


def test_limits_line_length() -> None:
    raw = BASIC_INVITE.replace(
        b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-Long: " + b"a" * 9000 + b"\r\n"
    )
    with pytest.raises(ParseError, match="too long"):
        parse_message(raw)


def test_non_utf8_bytes_survive_round_trip() -> None:
    raw = BASIC_INVITE.replace(b"From: Alice", b'From: "J\xe9r\xf4me"')
    msg = parse_message(raw)
    assert msg is not None
    assert parse_message(serialize(msg)) == msg


@pytest.mark.parametrize("raw", [BASIC_INVITE, BASIC_RESPONSE, TORTURE])
def test_round_trip_parse_serialize_parse(raw: bytes) -> None:
    first = parse_message(raw)
    assert first is not None
    wire = serialize(first)
    second = parse_message(wire)
    assert second == first
    assert serialize(second) == wire  # serialisation is a fixed point


# -- stream framing ---------------------------------------------------------------------------


def test_stream_framer_byte_by_byte() -> None:
    framer = StreamFramer()
    out = []
    data = BASIC_INVITE + b"\r\n\r\n" + BASIC_RESPONSE
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        out.extend(framer.messages())
    assert [type(m) for m in out] == [Request, Response]
    assert isinstance(out[0], Request) and out[0].body == b"v=0\r"
    assert framer.buffered == 0
    # The body is "v=0\r"; the leftover "\n" and the CRLFCRLF between messages contain one ping.
    assert framer.keepalives_seen == 1


def test_stream_framer_many_in_one_chunk_and_keepalives() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + BASIC_RESPONSE * 3 + b"\r\n\r\n")
    msgs = list(framer.messages())
    assert len(msgs) == 3
    assert framer.keepalives_seen == 2
    assert framer.buffered == 0
    for byte in b"\r\n\r\n":  # a ping split across four reads still counts once
        framer.feed(bytes([byte]))
        assert framer.next_message() is None
    assert framer.keepalives_seen == 3


def test_stream_framer_missing_content_length_loses_framing() -> None:
    framer = StreamFramer()
    framer.feed(BASIC_RESPONSE.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(ParseError):
        framer.next_message()
    assert framer.framing_lost
    with pytest.raises(ParseError):
        framer.feed(b"more")


def test_stream_framer_bad_message_with_known_length_is_skipped() -> None:
    framer = StreamFramer()
    bad = BASIC_RESPONSE.replace(b"CSeq: 314159 INVITE\r\n", b"")
    framer.feed(bad + BASIC_RESPONSE)
    with pytest.raises(ParseError):
        framer.next_message()
    assert not framer.framing_lost
    assert isinstance(framer.next_message(), Response)


def test_stream_framer_buffer_is_bounded() -> None:
    framer = StreamFramer(limits=ParserLimits(max_message_size=1000))
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: " + b"y" * 2000)
    with pytest.raises(ParseError, match="exceed"):
        framer.next_message()
    assert framer.buffered == 0


def test_stream_framer_rejects_huge_content_length() -> None:
    framer = StreamFramer()
    framer.feed(BASIC_RESPONSE.replace(b"Content-Length: 0", b"Content-Length: 999999"))
    with pytest.raises(ParseError, match="too large"):
        framer.next_message()


# -- properties -------------------------------------------------------------------------------

SEEDS = [BASIC_INVITE, BASIC_RESPONSE, TORTURE]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_only_raise_parse_error(data: bytes, stream: bool) -> None:
    with contextlib.suppress(ParseError):
        parse_message(data, stream=stream)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.sampled_from(b' \t\r\n:;,<>"=@/\\\x00\xff0123456789abcXYZ'))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from([b"\r\n", b",", b" ", b";", b"\r\n ", b":", b'"', b"<", b"\xc3", b"\xc2\xb2"])
            )
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 10))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@FAST
@given(mutated())
def test_mutated_messages_only_raise_parse_error_and_reparse_stably(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError as exc:
        assert exc.is_request in (True, False, None)
        return
    if msg is not None:
        # Anything we accept must serialise to something we accept again with the same content
        # (the serializer adds/rewrites Content-Length, nothing else changes), and then be stable.
        again = parse_message(serialize(msg))
        assert again is not None and again.body == msg.body
        assert [h for h in again.headers if h[0] != "Content-Length"] == [
            h for h in msg.headers if h[0] != "Content-Length"
        ]
        assert parse_message(serialize(again)) == again


@FAST
@given(mutated(), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_stream_framer_on_mutated_chunks(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer()
    pos = 0
    for size in [*cuts, len(data)]:
        chunk = data[pos : pos + size]
        pos += size
        try:
            framer.feed(chunk)
            list(framer.messages())
        except ParseError:
            if framer.framing_lost:
                return


_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), max_size=30
)


@st.composite
def generated_request(draw: st.DrawFn) -> Request:
    method = draw(_token.filter(lambda t: t.upper() != "SIP/2.0"))
    user = draw(st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=8))
    host = draw(st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]", "a-b.example.org"]))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    uri = (
        f"sip:{user}@{host}"
        + (f":{port}" if port else "")
        + draw(st.sampled_from(["", ";transport=UDP", ";lr"]))
    )
    headers = [
        ("Via", f"SIP/2.0/UDP {host};branch=z9hG4bK{draw(_token)}"),
        ("From", f"<sip:{user}@{host}>;tag={draw(_token)}"),
        ("To", f"<{uri}>"),
        ("Call-ID", draw(_token)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    for _ in range(draw(st.integers(0, 5))):
        headers.append((f"X-{draw(_token)}", draw(_value).strip()))
    body = draw(st.binary(max_size=200))
    return Request(method, uri, headers, body)


@FAST
@given(generated_request())
def test_round_trip_property(req: Request) -> None:
    wire = serialize(req)
    for stream in (False, True):
        parsed = parse_message(wire, stream=stream)
        assert isinstance(parsed, Request)
        assert parsed.method == req.method
        assert parsed.uri == req.uri
        assert parsed.body == req.body
        assert [(n, v) for n, v in parsed.headers if n != "Content-Length"] == req.headers.items()
        assert serialize(parsed) == wire


# -- stream framing with Content-Length anywhere (the framer used to miss it unless it was last) --

OPTIONS_BODY = b"v=0\r\n"


def _options(order: str, *, cl_form: str = "Content-Length: 5", call_id: str = "o1") -> bytes:
    lines = {
        "v": "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK" + call_id,
        "f": "From: <sip:a@example.com>;tag=1",
        "t": "To: <sip:b@example.com>",
        "i": "Call-ID: " + call_id,
        "c": "CSeq: 1 OPTIONS",
        "l": cl_form,
        "y": "Content-Type: application/sdp",
    }
    head = "OPTIONS sip:b@example.com SIP/2.0\r\n" + "".join(lines[k] + "\r\n" for k in order)
    return head.encode() + b"\r\n" + OPTIONS_BODY


@pytest.mark.parametrize("order", ["lvftic" + "y", "vlftic" + "y", "vftlicy", "vftiycl", "yclvfti"])
@pytest.mark.parametrize("cl_form", ["Content-Length: 5", "l: 5", "content-LENGTH  :   5",
                                     "Content-Length:\r\n  5", "L:5"])
def test_stream_framer_finds_content_length_in_any_position_and_form(order: str, cl_form: str) -> None:
    framer = StreamFramer()
    framer.feed(_options(order, cl_form=cl_form))
    msg = framer.next_message()
    assert isinstance(msg, Request) and msg.body == OPTIONS_BODY
    assert framer.buffered == 0 and not framer.in_message


def test_stream_framer_several_messages_in_one_segment_and_one_across_many() -> None:
    framer = StreamFramer()
    data = (_options("lvfticy", call_id="a") + _options("vftilcy", call_id="b")
            + _options("vfticyl", call_id="c"))
    framer.feed(data)
    assert [m.call_id for m in framer.messages()] == ["a", "b", "c"]
    one = _options("vfltic" + "y", cl_form="l:\r\n 5", call_id="d")
    got = []
    for i in range(0, len(one), 7):
        framer.feed(one[i : i + 7])
        assert framer.in_message or i + 7 >= len(one)
        got.extend(framer.messages())
    assert [m.call_id for m in got] == ["d"] and not framer.in_message


def test_stream_framer_answers_513_and_stays_in_step_after_an_oversized_message() -> None:
    framer = StreamFramer(limits=ParserLimits(max_message_size=1024))
    big = _options("lvftic", cl_form="Content-Length: 4000", call_id="big").replace(OPTIONS_BODY, b"")
    framer.feed(big + b"x" * 1000)
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert info.value.status == 513 and info.value.is_request and info.value.partial["Call-ID"] == ["big"]
    assert not framer.framing_lost
    framer.feed(b"x" * 3000 + _options("vftilcy", call_id="next"))
    assert [m.call_id for m in framer.messages()] == ["next"]


def test_stream_framer_missing_content_length_keeps_the_fields_for_the_400() -> None:
    framer = StreamFramer()
    request = BASIC_RESPONSE.replace(b"SIP/2.0 180 Ringing", b"OPTIONS sip:a@b SIP/2.0")
    framer.feed(request.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert framer.framing_lost and info.value.partial.get("Via") and info.value.status == 400


def test_oversized_datagram_is_513_with_the_fields_to_answer_it() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(BASIC_INVITE + b"x" * 3000, limits=ParserLimits(max_message_size=1024))
    err = info.value
    assert err.status == 513 and err.is_request
    assert err.partial["Call-ID"] == ["a84b4c76e66710@pc33.atlanta.example.com"]


def test_other_sip_version_is_505_and_garbage_version_400() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(BASIC_INVITE.replace(b" SIP/2.0\r\nVia", b" SIP/7.0\r\nVia"))
    assert info.value.status == 505 and info.value.partial.get("Via")
    with pytest.raises(ParseError) as info:
        parse_message(BASIC_INVITE.replace(b" SIP/2.0\r\nVia", b" HTTP/1.1\r\nVia"))
    assert info.value.status == 400


@pytest.mark.parametrize("bad", [
    b"Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK1;",
    b"Contact: \"Joe\" <sip:joe@example.org>;;;;",
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK1, ",
])
def test_empty_list_elements_and_parameters_are_syntax_errors(bad: bytes) -> None:
    raw = BASIC_INVITE.replace(b"Contact: <sip:alice@pc33.atlanta.example.com>", bad)
    with pytest.raises(ParseError):
        parse_message(raw)


@pytest.fixture
def checked_names() -> Iterator[dict[str, str]]:
    """The parser's cache of checked header names, empty for the test and emptied after it."""
    from b2bua.sip import parser

    parser._CHECKED_NAMES.clear()
    yield parser._CHECKED_NAMES
    parser._CHECKED_NAMES.clear()


def test_header_names_checked_once_are_still_refused_where_bad(checked_names: dict[str, str]) -> None:
    """Names are token-checked once and remembered (b2bua/sip/parser.py ``_CHECKED_NAMES``): what
    was remembered must not let a line without a colon, or a bad name, through afterwards."""
    spaced = BASIC_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards  : 70")
    for _ in range(2):  # the second parse reads the names from the cache
        msg = parse_message(spaced)
        assert msg is not None and msg.headers.get("Max-Forwards") == "70"
        assert checked_names.get("Max-Forwards  ") == "Max-Forwards"
    for bad in (b"Max-Forwards", b"Max-Forwards  ", b"Max Forwards: 70", b"Max@Forwards: 70"):
        for _ in range(2):
            with pytest.raises(ParseError, match="bad header line"):
                parse_message(BASIC_INVITE.replace(b"Max-Forwards: 70", bad))


def test_checked_header_names_are_bounded(checked_names: dict[str, str]) -> None:
    """Random names from hostile traffic cannot grow the cache of checked names without end: not
    in number, not in length."""
    from b2bua.sip import parser

    long_name = b"X-" + b"L" * 200
    raw = BASIC_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\n" + long_name + b": v")
    msg = parse_message(raw)
    assert msg is not None and msg.headers.get(long_name.decode()) == "v"
    assert long_name.decode() not in checked_names
    for i in range(parser._CHECKED_NAMES_MAX + 50):
        raw = BASIC_INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-R%d: v\r\n" % i)
        msg = parse_message(raw)
        assert msg is not None and msg.headers.get(f"X-R{i}") == "v"
    assert len(checked_names) == parser._CHECKED_NAMES_MAX
