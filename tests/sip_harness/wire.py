"""Raw SIP over real sockets for edge tests: send bytes from a chosen loopback address, read answers.

127.0.0.0/8 is all loopback, so a test can be several distinct sources (127.0.0.2, 127.0.0.3, ...)
by binding its sockets.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator

from b2bua.sip.message import Response
from b2bua.sip.parser import ParseError, parse_message

_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ?([^\r\n]*)")
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.M | re.I)


def read_response(data: bytes) -> Response | None:
    """A response, also one our strict parser refuses: a 400 to a malformed request echoes the
    request's broken Via (RFC 3261 8.2.6), so tests read its status line and Call-ID by hand."""
    try:
        msg = parse_message(data)
    except ParseError:
        m = _STATUS.match(data)
        if m is None:
            return None
        cid = _CALL_ID.search(data)
        headers = [("Call-ID", cid.group(1).decode("utf-8", "replace"))] if cid else []
        return Response(int(m.group(1)), m.group(2).decode("utf-8", "replace"), headers)
    return msg if isinstance(msg, Response) else None


def udp_socket(ip: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    return s


def udp_responses(sock: socket.socket, timeout: float = 2.0, *, until_final: bool = True,
                  quiet: float = 0.3, call_id: str | None = None) -> list[Response]:
    """Responses arriving on ``sock``: until a final one (or ``timeout``); without ``until_final``,
    until ``quiet`` seconds pass with nothing. With ``call_id``, others (retransmissions of earlier
    answers) are skipped."""
    out: list[Response] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(min(left, quiet) if not until_final else left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return out
        msg = read_response(data)
        if msg is not None and (call_id is None or msg.call_id == call_id):
            out.append(msg)
            if until_final and msg.status >= 200:
                return out


def tcp_connect(addr: tuple[str, int], ip: str = "127.0.0.1", timeout: float = 3.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((ip, 0))
    s.settimeout(timeout)
    s.connect(addr)
    return s


_CL = re.compile(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", re.M | re.I)


def tcp_responses(sock: socket.socket, count: int, timeout: float = 3.0) -> tuple[list[Response], bool]:
    """Read up to ``count`` final responses (provisional ones are kept too); also says whether the
    peer closed the connection. Framed here by hand (our own answers are Content-Length framed), so
    a response our strict parser refuses is still read (see ``read_response``)."""
    buf = b""
    out: list[Response] = []
    deadline = time.monotonic() + timeout
    while sum(r.status >= 200 for r in out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            cl = _CL.search(buf[:end])
            total = end + 4 + (int(cl.group(1)) if cl else 0)
            if len(buf) >= total:
                msg = read_response(buf[:total])
                buf = buf[total:]
                if msg is not None:
                    out.append(msg)
                continue
        left = deadline - time.monotonic()
        if left <= 0:
            return out, False
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return out, False
        except ConnectionError:
            return out, True
        if not data:
            return out, True
        buf += data
    return out, False


def dribble(sock: socket.socket, data: bytes, chunk: int, pause: float) -> None:
    for i in range(0, len(data), chunk):
        sock.sendall(data[i : i + chunk])
        time.sleep(pause)


def options(call_id: str, *, via_host: str = "127.0.0.1", via_port: int = 5060, transport: str = "UDP",
            extra: str = "", rport: bool = True, uri: str = "sip:ping@127.0.0.1") -> bytes:
    rp = ";rport" if rport else ""
    return (f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {via_host}:{via_port};branch=z9hG4bK{call_id}{rp}\r\n"
            f"From: <sip:probe@example.com>;tag=t{call_id}\r\nTo: <sip:ping@example.com>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def invite(call_id: str, *, callee: str = "15551230000", host: str = "127.0.0.1", port: int = 5060,
           via_host: str = "127.0.0.1", via_port: int = 5060, authorization: str | None = None,
           user: str = "1000", extra: str = "") -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    body = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/AVP 0\r\n")
    return (f"INVITE sip:{callee}@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host}:{via_port};branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:{user}@example.com>;tag=t{call_id}\r\nTo: <sip:{callee}@{host}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{user}@{via_host}:{via_port}>\r\n{auth}{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


@contextlib.contextmanager
def many_tcp(addr: tuple[str, int], sources: list[str]) -> Iterator[list[socket.socket]]:
    """Open one connection per entry of ``sources`` (a refused one is left out), close them all after."""
    socks: list[socket.socket] = []
    try:
        for ip in sources:
            with contextlib.suppress(OSError):
                socks.append(tcp_connect(addr, ip, timeout=2.0))
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
