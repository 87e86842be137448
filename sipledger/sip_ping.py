"""SIP OPTIONS pings over UDP or TCP: one request, its answer, the round trip. Plain sockets, no B2BUA.

Used where something must be asked whether a SIP server is there, from outside the B2BUA: the
pipeline's probe of a silent node (pipeline/node_probe.py) and `sipledger nettest` (VOS3000's
"network test"). Any response counts as an answer: it proves a SIP stack serves that address, and its
status is reported. A request is a few lines of RFC 3261 text, so this does not import the B2BUA (the
B2BUA and the pipeline meet only in the log and the contracts).
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ping:
    status: int | None  # the SIP status answered, None for no answer
    rtt_ms: float | None
    error: str = ""  # why there was no answer, when it is known (refused, unreachable)


def split_address(address: str, default_port: int = 5060) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port). ValueError when the port is not a number."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    if not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host, int(port)


def options_request(host: str, port: int, local: tuple[str, int], transport: str, call_id: str,
                    branch: str, tag: str) -> bytes:
    lhost, lport = local
    target = f"[{host}]" if ":" in host else host
    via_host = f"[{lhost}]" if ":" in lhost else lhost
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return (f"OPTIONS sip:{target}:{port}{suffix} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {via_host}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:sipledger-ping@{via_host}>;tag={tag}\r\n"
            f"To: <sip:{target}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def answer_status(data: bytes, call_id: str) -> int | None:
    """The status of a SIP response to our request (matched by Call-ID), else None."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"SIP/2.0 "):
        return None
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i") and value.strip() == call_id.encode():
            return int(parts[1])
    return None


def ping(address: str, transport: str = "udp", timeout: float = 1.0) -> Ping:
    """One OPTIONS to ``address`` over ``transport`` (udp | tcp); waits ``timeout`` seconds for its answer
    (UDP: one send, no retransmission, so a lost packet is a lost ping, as loss is meant to count)."""
    try:
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
    except (ValueError, OSError) as exc:
        return Ping(None, None, str(exc))
    call_id = f"{secrets.token_hex(8)}@sipledger-ping"
    with sock:
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.connect((host, port))
            local = sock.getsockname()[:2]
            sock.sendall(options_request(host, port, (local[0], local[1]), transport, call_id,
                                         f"z9hG4bK{secrets.token_hex(8)}", secrets.token_hex(4)))
            buf = b""
            while (left := started + timeout - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(65535)
                if not data:
                    return Ping(None, None, "connection closed")
                buf = data if transport == "udp" else buf + data
                status = answer_status(buf, call_id)
                if status is not None and status >= 200:
                    return Ping(status, (time.monotonic() - started) * 1000)
                if status is not None and transport == "tcp":
                    buf = buf.partition(b"\r\n\r\n")[2]  # a provisional answer: wait for the final one
        except TimeoutError:
            return Ping(None, None, "")
        except OSError as exc:  # refused (TCP), ICMP port unreachable (UDP), no route
            return Ping(None, None, exc.strerror or str(exc))
    return Ping(None, None, "")
