"""Out-of-band liveness probe of a B2BUA node: SIP OPTIONS over UDP to the address it advertises.

The pipeline calls a node lost only when its heartbeats stopped while the pipeline was caught up
with the log *and* the node does not answer this probe (pipeline/domain/liveness.py). A node that
answers is up but cut off from the log (a broker outage on its side): its calls must not be touched.
Any SIP response counts as an answer: it proves a SIP stack is serving that address.

A plain UDP socket with a timeout: this module does not import the B2BUA (the B2BUA and the pipeline
meet only in the log and the contracts), and a probe is a few lines of RFC 3261 text.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answered: bool
    detail: str  # for the verdict and the log: what was sent where and what came back
    rtt_ms: float | None = None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). ValueError when it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


def options_request(host: str, port: int, local: tuple[str, int], call_id: str, branch: str,
                    tag: str) -> bytes:
    lhost, lport = local
    target = f"[{host}]" if ":" in host else host
    via_host = f"[{lhost}]" if ":" in lhost else lhost
    return (f"OPTIONS sip:{target}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:sipledger-pipeline@{via_host}>;tag={tag}\r\n"
            f"To: <sip:{target}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def _answers(data: bytes, call_id: str) -> int | None:
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


def probe(address: str, attempts: int = 3, timeout: float = 1.0) -> ProbeResult:
    """Send up to ``attempts`` OPTIONS (one per ``timeout``) to ``address``; stop at the first answer."""
    try:
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except (ValueError, OSError) as exc:
        return ProbeResult(False, f"cannot probe {address!r}: {exc}")
    with sock:
        try:
            sock.connect((host, port))
        except OSError as exc:
            return ProbeResult(False, f"cannot probe {address}: {exc}")
        local = sock.getsockname()[:2]
        call_id = f"{secrets.token_hex(8)}@sipledger-probe"
        request = options_request(host, port, (local[0], local[1]), call_id,
                                  f"z9hG4bK{secrets.token_hex(8)}", secrets.token_hex(4))
        for attempt in range(1, attempts + 1):
            sent = time.monotonic()
            deadline = sent + timeout
            try:
                sock.send(request)
            except OSError as exc:  # ICMP port unreachable of an earlier send surfaces here
                time.sleep(max(0.0, deadline - time.monotonic()))
                if attempt == attempts:
                    return ProbeResult(False, f"{attempts} OPTIONS to udp:{address} unanswered ({exc})")
                continue
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    break
                except OSError:  # port unreachable: nothing listens there now; wait out the attempt
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    break
                status = _answers(data, call_id)
                if status is not None:
                    rtt = (time.monotonic() - sent) * 1000
                    return ProbeResult(True, f"udp:{address} answered OPTIONS with {status}", rtt)
    return ProbeResult(False, f"{attempts} OPTIONS to udp:{address} unanswered in {attempts * timeout:.1f} s")
