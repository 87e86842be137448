"""RFC 4475 (SIP torture test messages), written here from the RFC's descriptions of each message.

Each entry says whether the RFC calls the message valid or invalid and which answers are right for
this B2BUA (a UAS that routes INVITEs by user part, answers OPTIONS, and implements no REGISTER,
MESSAGE or other methods). Heads use "\\n" for readability and are sent with CRLF; "{CL}" is
replaced by the body's length. Every Via has no port (or 5060), so a UDP answer goes to the sending
address's port 5060 (RFC 3261 18.2.2 without rport): the tests send from 127.0.0.77:5060.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Torture:
    name: str
    section: str
    data: bytes
    valid: bool
    # Final statuses that are right for a request; empty for a response (nothing may answer it).
    expect: frozenset[int]
    stream_ok: bool = True  # False: cannot be framed on TCP (no Content-Length, RFC 3261 18.3)


def _msg(head: str, body: bytes = b"") -> bytes:
    text = head.replace("{CL}", str(len(body)))
    return text.replace("\n", "\r\n").encode("utf-8") + b"\r\n" + body


SDP = (
    b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
)
SDP2 = (b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=audio 49217 RTP/AVP 0\r\n")

ALL: list[Torture] = []


def _add(name: str, section: str, data: bytes, valid: bool, expect: set[int], stream_ok: bool = True) -> None:
    ALL.append(Torture(name, section, data, valid, frozenset(expect), stream_ok))


# 3.1.1.1 A short tortuous INVITE: odd whitespace, folding, compact forms, escaped quotes, unknown
# headers with unusual values. It carries a To tag, so for us it is an INVITE for an unknown dialog.
_add("wsinv", "3.1.1.1", _msg(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
    "TO :\n"
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\n'
    "  ;\n"
    "  tag = 98asjd8\n"
    "MaX-fOrWaRdS: 0068\n"
    "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
    "Content-Length   : {CL}\n"
    "cseq: 0009\n"
    "  INVITE\n"
    "Via  : SIP  /   2.0\n"
    " /UDP\n"
    "    192.0.2.2;branch=390skdjuw\n"
    "s :\n"
    "NewFangledHeader:   newfangled value\n"
    " continued newfangled value\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
    "Content-Type: application/sdp\n"
    "Route:\n"
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
    "  branch  =   z9hG4bK9ikj8  ,\n"
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
    " z9hG4bK30239\n"
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\n'
    "      newvalue ;\n"
    "  secondparam ; q = 0.33\n", SDP), True, {481})

# 3.1.1.2 Wide range of valid characters: an extension method and a Request-URI whose user and
# password parts use every character the grammar allows; control characters escaped in a quoted
# display name; UTF-8 in a parameter and an extension header.
_add("intmeth", "3.1.1.2", (
    b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    b":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
    b"<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\r\n"
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    + "\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\"".encode()
    + b";tag=_token~1'+`*%!-.\r\n"
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n"
    b"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n"
    b"Max-Forwards: 255\r\n"
    b"extensionHeader-!.%*+_`'~:" + "\ufeff\u5927\u505c\u96fb".encode() + b"\r\n"
    b"Content-Length: 0\r\n\r\n"), True, {501})

# 3.1.1.3 Valid use of the % escaping mechanism in URIs.
_add("esc01", "3.1.1.3", _msg(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\n"
    "To: sip:%75se%72@example.com\n"
    "From: <sip:I%20have%20spaces@example.net>;tag=938\n"
    "Max-Forwards: 87\n"
    "i: esc01.239409asdfakjkn23onasd0-3234\n"
    "CSeq: 234234 INVITE\n"
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\n"
    "C: application/sdp\n"
    "Contact:\n"
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\n"
    "Content-Length: {CL}\n", SDP), True, {404})

# 3.1.1.4 Escaped nulls in URIs; compact Content-Length with no space.
_add("escnull", "3.1.1.4", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:null-%00-null@example.com\n"
    "From: sip:null-%00-null@example.com;tag=839923423\n"
    "Max-Forwards: 70\n"
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\n"
    "CSeq: 14398234 REGISTER\n"
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
    "Contact: <sip:%00@host5.example.com>\n"
    "Contact: <sip:%00%00@host5.example.com>\n"
    "L:0\n"), True, {405})

# 3.1.1.5 % that is not an escape: in a method name (so an unknown method) and a header name.
_add("esc02", "3.1.1.5", _msg(
    "RE%47IST%45R sip:registrar.example.com SIP/2.0\n"
    'To: "%Z%45" <sip:resource@example.com>\n'
    'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23\n'
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\n"
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\n"
    "CSeq: 29344 RE%47IST%45R\n"
    "Max-Forwards: 70\n"
    "Contact: <sip:alias1@host1.example.com>\n"
    "C%6Fntact: <sip:alias2@host2.example.com>\n"
    "Contact: <sip:alias3@host3.example.com>\n"
    "l: 0\n"), True, {501})

# 3.1.1.6 No LWS between a display name and "<".
_add("lwsdisp", "3.1.1.6", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: caller<sip:caller@example.com>;tag=323\n"
    "Max-Forwards: 70\n"
    "Call-ID: lwsdisp.1234abcd@funky.example.com\n"
    "CSeq: 60 OPTIONS\n"
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\n"
    "l: 0\n"), True, {200})

# 3.1.1.7 Long values in header fields: a long tag, display name, Call-ID, many Vias and an
# extension header of several hundred characters.
_long = "Ch" + "a" * 250 + "d"
_vias = "".join(f"Via: SIP/2.0/TCP sip{n}.example.com;branch=z9hG4bK{'x' * 60}{n}\n" for n in range(30))
_add("longreq", "3.1.1.7", _msg(
    f"INVITE sip:user@example.com SIP/2.0\n"
    f"Via: SIP/2.0/TCP sip33.example.com;branch=z9hG4bK{'y' * 80}\n"
    f"{_vias}"
    f'To: "I have a user name of {"extreme" * 12} proportion" <sip:user@example.com:6000;'
    f"unknownparam1=verylonguserparametervalue{'v' * 90};longparamnamenovalue{'n' * 90}>\n"
    f"From: sip:{'amazinglylongcallername' * 8}@example.net;tag=12{'9' * 300}\n"
    f"Call-ID: longreq.one{'really' * 40}longcallid\n"
    f"CSeq: 3882340 INVITE\n"
    f"Unknown-{'LongLong' * 12}-Name: unknown-{'longlong' * 12}-value; unknown-{'long' * 20}-parameter-name "
    f"= unknown-{'long' * 20}-parameter-value\n"
    f"Contact: <sip:{'amazinglylongcallername' * 6}@host5.example.net>\n"
    f"Content-Type: application/sdp\n"
    f"X-{_long}: {_long}\n"
    f"Max-Forwards: 70\n"
    f"Content-Length: {{CL}}\n", SDP), True, {404})

# 3.1.1.8 Extra trailing octets in a UDP datagram: a REGISTER with Content-Length 0, then an INVITE.
# On UDP only the REGISTER counts (RFC 3261 18.3); on a stream both are messages.
_add("dblreq", "3.1.1.8", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:j.user@example.com;tag=43251j3j324\n"
    "Max-Forwards: 8\n"
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\n"
    "Contact: sip:j.user@host.example.com\n"
    "CSeq: 8 REGISTER\n"
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\n"
    "Content-Length: 0\n") + _msg(
    "INVITE sip:joe@example.com SIP/2.0\n"
    "t: sip:joe@example.com\n"
    "From: sip:caller@example.net;tag=141334\n"
    "Max-Forwards: 8\n"
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), True, {405})

# 3.1.1.9 Semicolon-separated parameters in a URI user part.
_add("semiuri", "3.1.1.9", _msg(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\n"
    "To: sip:j_user@example.com\n"
    "From: sip:caller@example.org;tag=33242\n"
    "Max-Forwards: 3\n"
    "Call-ID: semiuri.0ha0isndaksdj\n"
    "CSeq: 8 OPTIONS\n"
    "Accept: application/sdp, application/pkcs7-mime,\n"
    "        multipart/mixed, multipart/signed,\n"
    "        message/sip, message/sipfrag\n"
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\n"
    "l: 0\n"), True, {200})

# 3.1.1.10 Varied and unknown transport types in the Via stack.
_add("transports", "3.1.1.10", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: <sip:caller@example.com>;tag=323\n"
    "Max-Forwards: 70\n"
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj\n"
    "Accept: application/sdp\n"
    "CSeq: 60 OPTIONS\n"
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\n"
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\n"
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\n"
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\n"
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\n"
    "l: 0\n"), True, {200})

# 3.1.1.11 A multipart MIME MESSAGE whose second part is binary, with NUL octets: framing must come
# from Content-Length. We implement no MESSAGE: 405.
_boundary = b"----=_NextPart_000_0005_01C0EAD1.19E0F8A0"
_mpart = (b"--" + _boundary + b"\r\nContent-Type: text/plain\r\n\r\nHello\r\n--" + _boundary
          + b"\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
          + b"Content-Transfer-Encoding: binary\r\n\r\n" + bytes(range(0, 48)) + b"\x00\x00\xff\x00"
          + b"\r\n--" + _boundary + b"--\r\n")
_add("mpart01", "3.1.1.11", _msg(
    "MESSAGE sip:kumiko@example.org SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\n"
    "Max-Forwards: 70\n"
    "Route: <sip:127.0.0.1:5080>\n"
    "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuL\n"
    "From: <sip:fluffy@example.com>;tag=2fb0dcc9\n"
    "To: <sip:kumiko@example.org>\n"
    "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hY2Jvb2stMy5sb2NhbA..\n"
    "CSeq: 1 MESSAGE\n"
    'Content-Type: multipart/mixed;boundary="' + _boundary.decode() + '"\n'
    "Content-Length: {CL}\n", _mpart), True, {405})

# 3.1.1.12 / 3.1.1.13 Responses with an unusual (UTF-8) and an empty reason phrase: parsed, and since
# they match no transaction, ignored.
_add("unreason", "3.1.1.12", _msg(
    "SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
    "\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435\n"
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf\n"
    "CSeq: 35 INVITE\n"
    "From: sip:user@example.com;tag=11141343\n"
    "To: sip:user@example.edu;tag=2229\n"
    "Content-Length: {CL}\n"
    "Content-Type: application/sdp\n"
    "Contact: <sip:user@host198.example.com>\n", SDP2), True, set())
_add("noreason", "3.1.1.13", _msg(
    "SIP/2.0 100 \n"
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
    "Call-ID: noreason.asndj203insdf99223ndf\n"
    "CSeq: 35 INVITE\n"
    "From: <sip:user@example.com>;tag=39ansfi3\n"
    "To: <sip:user@example.edu>;tag=902jndnke3\n"
    "Content-Length: 0\n"
    "Contact: <sip:user@host105.example.com>\n"), True, set())

# 3.1.2.1 Extraneous header field separators: empty elements in Via and Contact.
_add("badinv01", "3.1.2.1", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:caller@example.net;tag=134161461246\n"
    "Max-Forwards: 7\n"
    "Call-ID: badinv01.0ha0isndaksdjasdf3234nas\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.15;;,;,,\n"
    'Contact: "Joe" <sip:joe@example.org>;;;;\n'
    "Content-Length: {CL}\n"
    "Content-Type: application/sdp\n", SDP2), False, {400})

# 3.1.2.2 Content-Length larger than the message. On UDP: 400. On a stream the receiver can only
# wait for the rest (the connection is closed at the message timeout).
_add("clerr", "3.1.2.2", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "Max-Forwards: 80\n"
    "To: sip:j.user@example.com\n"
    "From: sip:caller@example.net;tag=93942939o2\n"
    "Contact: <sip:caller@hungry.example.net>\n"
    "Call-ID: clerr.0ha0isndaksdjweiafasdk3\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\n"
    "Content-Type: application/sdp\n"
    "Content-Length: 9999\n", SDP2), False, {400})

# 3.1.2.3 Negative Content-Length.
_add("scalar02", "3.1.2.3", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw\n"
    "To: <sip:user@example.com>\n"
    "From: <sip:other@example.net>;tag=3929210\n"
    "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\n"
    "CSeq: 29832 REGISTER\n"
    "Max-Forwards: 70\n"
    "Content-Length: -999\n"), False, {400})

# 3.1.2.4 Overlarge scalar values (CSeq above 2**31, Max-Forwards 300, huge expires).
_add("scalarlg", "3.1.2.4", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\n"
    "To: <sip:user@example.com>\n"
    "From: <sip:user@example.com>;tag=239232jh3\n"
    "CSeq: 36893488147419103232 REGISTER\n"
    "Call-ID: scalarlg.23o0pd9vanlq3wnrlnewofjas9ui32\n"
    "Max-Forwards: 300\n"
    "Expires: 10000000000000000000000000000000000000000\n"
    "Contact: <sip:user@host129.example.com>\n"
    "  ;expires=280297596632815\n"
    "l: 0\n"), False, {400})

# 3.1.2.5 Unterminated quoted string in a display name.
_add("quotbal", "3.1.2.5", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    'To: "Mr. J. User <sip:j.user@example.com>\n'
    "From: sip:caller@example.net;tag=93334\n"
    "Max-Forwards: 10\n"
    "Call-ID: quotbal.aksdj\n"
    "Contact: <sip:caller@host59.example.net>\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.59:5060;branch=z9hG4bKkdjuw\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400})

# 3.1.2.6 <> around the Request-URI.
_add("ltgtruri", "3.1.2.6", _msg(
    "INVITE <sip:user@example.com> SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=39291\n"
    "Max-Forwards: 23\n"
    "Call-ID: ltgtruri.1@192.0.2.5\n"
    "CSeq: 1 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.5\n"
    "Contact: <sip:caller@host5.example.net>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400})

# 3.1.2.7 LWS inside the Request-URI.
_add("lwsruri", "3.1.2.7", _msg(
    "INVITE sip:user@example.com; lr SIP/2.0\n"
    "To: sip:user@example.com;tag=3xfe-9921883-z9f\n"
    "From: sip:caller@example.net;tag=231413434\n"
    "Max-Forwards: 5\n"
    "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\n"
    "CSeq: 2130706432 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\n"
    "Contact: <sip:caller@host1.example.net>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400})

# 3.1.2.8 Several SP between the Request-Line's elements.
_add("lwsstart", "3.1.2.8", _msg(
    "INVITE  sip:user@example.com  SIP/2.0\n"
    "Max-Forwards: 8\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=8814\n"
    "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\n"
    "CSeq: 1893884 INVITE\n"
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\n"
    "Contact: <sip:caller@host1.example.net>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400})

# 3.1.2.9 SP after the SIP version.
_add("trws", "3.1.2.9", _msg(
    "OPTIONS sip:remote-target@example.com SIP/2.0  \n"
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093\n"
    "To: <sip:remote-target@example.com>\n"
    "From: <sip:local-resource@example.com>;tag=329429089\n"
    "Call-ID: trws.oicu34958239neffasdhr2345r\n"
    "Accept: application/sdp\n"
    "CSeq: 238923 OPTIONS\n"
    "Max-Forwards: 70\n"
    "Content-Length: 0\n"), False, {400})

# 3.1.2.10 Escaped headers in the Request-URI.
_add("escruri", "3.1.2.10", _msg(
    "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=341518\n"
    "Max-Forwards: 7\n"
    "Contact: <sip:caller@host39923.example.net>\n"
    "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5\n"
    "CSeq: 149209342 INVITE\n"
    "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400})

# 3.1.2.11 A non-GMT time zone in Date. The RFC allows ignoring the Date header instead of
# rejecting: we do not use Date, so the INVITE is handled (no route for this user: 404).
_add("baddate", "3.1.2.11", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=2234923\n"
    "Max-Forwards: 70\n"
    "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234\n"
    "CSeq: 1392934 INVITE\n"
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n"
    "Date: Fri, 01 Jan 2010 16:00:00 EST\n"
    "Contact: <sip:caller@host5.example.net>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {CL}\n", SDP2), False, {400, 404})

# 3.1.2.12 A Contact URI with a "?" not enclosed in <>. A registrar must refuse it; we implement no
# REGISTER, so 405 refuses it as well.
_add("regbadct", "3.1.2.12", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:user@example.com;tag=998332\n"
    "Max-Forwards: 70\n"
    "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1\n"
    "CSeq: 1 REGISTER\n"
    "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\n"
    "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\n"
    "l: 0\n"), False, {400, 405})

# 3.1.2.13 Spaces inside an addr-spec's angle brackets.
_add("badaspec", "3.1.2.13", _msg(
    "OPTIONS sip:user@example.org SIP/2.0\n"
    "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\n"
    "Max-Forwards: 70\n"
    'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423\n'
    'To: "Watson, Thomas" < sip:t.watson@example.org >\n'
    "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3\n"
    "Accept: application/sdp\n"
    "CSeq: 3923239 OPTIONS\n"
    "l: 0\n"), False, {400})

# 3.1.2.14 Non-token characters (a comma) in an unquoted display name.
_add("baddn", "3.1.2.14", _msg(
    "OPTIONS sip:t.watson@example.org SIP/2.0\n"
    "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\n"
    "Max-Forwards:      70\n"
    "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\n"
    "To:      Watson, Thomas <sip:t.watson@example.org>\n"
    "Call-ID: baddn.31415@c.example.com\n"
    "Accept: application/sdp\n"
    "CSeq:    3923239 OPTIONS\n"
    "l: 0\n"), False, {400})

# 3.1.2.15 Unknown protocol version.
_add("badvers", "3.1.2.15", _msg(
    "OPTIONS sip:t.watson@example.org SIP/7.0\n"
    "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\n"
    "Max-Forwards:     70\n"
    "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\n"
    "To:      T. Watson <sip:t.watson@example.org>\n"
    "Call-ID: badvers.31417@c.example.com\n"
    "CSeq:    1 OPTIONS\n"
    "l: 0\n"), False, {505})

# 3.1.2.16 / 3.1.2.17 CSeq method does not match the start line (with a known and an unknown method).
_add("mismatch01", "3.1.2.16", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:caller@example.net;tag=34525\n"
    "Max-Forwards: 6\n"
    "Call-ID: mismatch01.dj0234sxdfl3\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n"
    "l: 0\n"), False, {400})
_add("mismatch02", "3.1.2.17", _msg(
    "NEWMETHOD sip:user@example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:caller@example.net;tag=34525\n"
    "Max-Forwards: 6\n"
    "Call-ID: mismatch02.dj0234sxdfl3\n"
    "CSeq: 8 INVITE\n"
    "Contact: <sip:caller@host.example.net>\n"
    "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw\n"
    "Content-Type: application/sdp\n"
    "l: {CL}\n", SDP2), False, {400, 501})

# 3.1.2.18 An overlarge response code: a response, so it is dropped without an answer.
_add("bigcode", "3.1.2.18", _msg(
    "SIP/2.0 4294967301 better not break the receiver\n"
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
    "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\n"
    "CSeq: 353494 INVITE\n"
    "From: <sip:user@example.com>;tag=39ansfi3\n"
    "To: <sip:user@example.edu>;tag=902jndnke3\n"
    "Content-Length: 0\n"
    "Contact: <sip:user@host105.example.com>\n"), False, set())

# 3.2.1 A branch that is only the magic cookie: valid, matched as RFC 3261 branches are.
_add("badbranch", "3.2.1", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.org;tag=33242\n"
    "Max-Forwards: 3\n"
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\n"
    "Accept: application/sdp\n"
    "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\n"
    "CSeq: 8 OPTIONS\n"
    "l: 0\n"), True, {200})

# 3.3.1 Missing Call-ID, From and To.
_add("insuf", "3.3.1", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "CSeq: 193942 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\n"
    "Content-Type: application/sdp\n"
    "l: {CL}\n", SDP2), False, {400})

# 3.3.2 / 3.3.3 Request-URI schemes nobody (or nobody here) handles.
_add("unkscm", "3.3.2", _msg(
    "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=384\n"
    "Max-Forwards: 3\n"
    "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34\n"
    "CSeq: 3923423 OPTIONS\n"
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
    "Content-Length: 0\n"), True, {416})
_add("novelsc", "3.3.3", _msg(
    "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=384\n"
    "Max-Forwards: 3\n"
    "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34\n"
    "CSeq: 3923423 OPTIONS\n"
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
    "Content-Length: 0\n"), True, {416})

# 3.3.4 Unknown URI schemes in To and From: fine in header fields.
_add("unksm2", "3.3.4", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: isbn:2983792873\n"
    "From: <http://www.example.com>;tag=3234233\n"
    "Call-ID: unksm2.daksdj@hyphenated-host.example.com\n"
    "CSeq: 234902 REGISTER\n"
    "Max-Forwards: 70\n"
    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\n"
    "Contact: <name:John_Smith>\n"
    "l: 0\n"), True, {405})

# 3.3.5 Require with option-tags nobody supports: 420 naming them.
_add("bext01", "3.3.5", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:j_user@example.com\n"
    "From: sip:caller@example.net;tag=242etr\n"
    "Max-Forwards: 6\n"
    "Call-ID: bext01.0ha0isndaksdj\n"
    "Require: nothingSupportsThis, nothingSupportsThisEither\n"
    "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\n"
    "CSeq: 8 OPTIONS\n"
    "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw\n"
    "Content-Length: 0\n"), True, {420})

# 3.3.6 A body of an unknown type: 415 with Accept.
_add("invut", "3.3.6", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "Contact: <sip:caller@host5.example.net>\n"
    "To: sip:j.user@example.com\n"
    "From: sip:caller@example.net;tag=8392034\n"
    "Max-Forwards: 70\n"
    "Call-ID: invut.0ha0isndaksdjadsfij34n23d\n"
    "CSeq: 235448 INVITE\n"
    "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw\n"
    "Content-Type: application/unknownformat\n"
    "Content-Length: {CL}\n", b"<audio>\r\n <pcmu port=\"443\"/>\r\n</audio>\r\n"), True, {415})

# 3.3.7 An unknown Authorization scheme (on a REGISTER, which we do not implement).
_add("regaut01", "3.3.7", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:j.user@example.com;tag=87321hj23128\n"
    "Max-Forwards: 8\n"
    "Call-ID: regaut01.0ha0isndaksdj\n"
    "CSeq: 9338 REGISTER\n"
    "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\n"
    "Authorization: NoOneKnowsThisScheme opaque-data=here\n"
    "Content-Length:0\n"), True, {405})

# 3.3.8 Several values in fields that take one (To, Call-ID, CSeq, Max-Forwards).
_add("multi01", "3.3.8", _msg(
    "INVITE sip:user@company.com SIP/2.0\n"
    "Contact: <sip:caller@host25.example.net>\n"
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\n"
    "Max-Forwards: 70\n"
    "CSeq: 5 INVITE\n"
    "Call-ID: multi01.98asdh@192.0.2.1\n"
    "CSeq: 59 INVITE\n"
    "Call-ID: multi01.98asdh@192.0.2.2\n"
    "From: sip:caller@example.com;tag=3413415\n"
    "To: sip:user@example.com\n"
    "To: sip:other@example.net\n"
    "From: sip:caller@example.net;tag=2923420123\n"
    "Content-Type: application/sdp\n"
    "l: {CL}\n"
    "Contact: <sip:caller@host36.example.net>\n"
    "Max-Forwards: 5\n", SDP2), False, {400})

# 3.3.9 Two different Content-Length values.
_add("mcl01", "3.3.9", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\n"
    "To: <sip:user@example.com>\n"
    "From: <sip:other@example.net>;tag=3923942\n"
    "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\n"
    "CSeq: 15932 OPTIONS\n"
    "Content-Length: 13\n"
    "Max-Forwards: 60\n"
    "Content-Length: 5\n"
    "Content-Type: text/plain\n", b"There's no way to know how many octets are supposed to be here.\r\n"),
    False, {400})

# 3.3.10 A response whose second Via names the broadcast address: a response, never answered.
_add("bcast", "3.3.10", _msg(
    "SIP/2.0 200 OK\n"
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
    "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\n"
    "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\n"
    "CSeq: 35 INVITE\n"
    "From: sip:user@example.com;tag=11141343\n"
    "To: sip:user@example.edu;tag=2229\n"
    "Content-Length: {CL}\n"
    "Content-Type: application/sdp\n"
    "Contact: <sip:user@host28.example.com>\n", SDP2), True, set())

# 3.3.11 Max-Forwards of zero on an OPTIONS addressed to us: a UAS answers it (a proxy would 483).
_add("zeromf", "3.3.11", _msg(
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:caller@example.net;tag=3ghsd41\n"
    "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas\n"
    "CSeq: 39234321 OPTIONS\n"
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i\n"
    "Max-Forwards: 0\n"
    "Content-Length: 0\n"), True, {200, 483})

# 3.3.12 - 3.3.14 REGISTERs with Contact parameters and escaped headers (no REGISTER here: 405).
_add("cparam01", "3.3.12", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\n"
    "Max-Forwards: 70\n"
    "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\n"
    "To: sip:watson@example.com\n"
    "Call-ID: cparam01.70710@saturn.example.com\n"
    "CSeq: 2 REGISTER\n"
    "Contact: sip:+19725552222@gw1.example.net;unknownparam\n"
    "l: 0\n"), True, {405})
_add("cparam02", "3.3.13", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\n"
    "Max-Forwards: 70\n"
    "From: sip:watson@example.com;tag=838293\n"
    "To: sip:watson@example.com\n"
    "Call-ID: cparam02.70710@saturn.example.com\n"
    "CSeq: 3 REGISTER\n"
    "Contact: <sip:+19725552222@gw1.example.net;unknownparam>\n"
    "l: 0\n"), True, {405})
_add("regescrt", "3.3.14", _msg(
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:user@example.com\n"
    "From: sip:user@example.com;tag=8\n"
    "Max-Forwards: 70\n"
    "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\n"
    "CSeq: 14398234 REGISTER\n"
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
    "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\n"
    "L:0\n"), True, {405})

# 3.3.15 An Accept without SDP on an INVITE: it is handled (no route for this user here: 404).
_add("sdp01", "3.3.15", _msg(
    "INVITE sip:user@example.com SIP/2.0\n"
    "To: sip:j_user@example.com\n"
    "Contact: <sip:caller@host15.example.net>\n"
    "From: sip:caller@example.net;tag=234\n"
    "Max-Forwards: 5\n"
    "Call-ID: sdp01.ndaksdj9342dasdd\n"
    "Accept: text/nobodyKnowsThis\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\n"
    "Content-Length: {CL}\n"
    "Content-Type: application/sdp\n", SDP2), True, {404, 406, 488})

# 3.4.1 An RFC 2543 INVITE: no branch, no Max-Forwards, no From tag, no Content-Length (so it can
# only be framed as a datagram).
_add("inv2543", "3.4.1", _msg(
    "INVITE sip:UserB@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP iftgw.example.com\n"
    "From: <sip:+13035551111@ift.client.example.net;user=phone>\n"
    "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\n"
    "To: sip:+16505552222@ss1.example.net;user=phone\n"
    "Call-ID: inv2543.1717@ift.client.example.com\n"
    "CSeq: 56 INVITE\n"
    "Content-Type: application/sdp\n", SDP2), True, {404}, stream_ok=False)

BY_NAME = {t.name: t for t in ALL}
