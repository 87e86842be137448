"""Thousands of mutated SIP messages at the B2BUA's sockets; then a normal call still completes.

Seeded mutations of real requests and responses (byte flips, cuts, inserted garbage, header
floods, oversized values, wrong Content-Length, broken start lines) over UDP and TCP. The B2BUA
must answer malformed requests with 400 or drop what it cannot answer, never crash or raise
internally, and leave no call or dialog behind.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sip_harness.b2bua_runner import RunningB2BUA, make_config
from sip_harness.fixtures import start_caller, start_carrier

from sipledger.config import from_dict

pytestmark = pytest.mark.sipp

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def templates(port: int) -> list[str]:
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{{b}};rport\r\n"
    common = (
        "From: <sip:100@127.0.0.1>;tag=f{b}\r\nTo: <sip:99999@127.0.0.1>\r\n"
        "Call-ID: fuzz-{b}@127.0.0.1\r\nMax-Forwards: 70\r\n"
    )
    invite = (
        f"INVITE sip:99999@127.0.0.1 SIP/2.0\r\n{via}{common}CSeq: 1 INVITE\r\n"
        f"Contact: <sip:100@127.0.0.1:{port};transport=UDP>\r\nSupported: timer\r\n"
        f"Session-Expires: 1800;refresher=uac\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    )
    simple = [
        f"{m} sip:99999@127.0.0.1 SIP/2.0\r\n{via}{common}CSeq: 2 {m}\r\nContent-Length: 0\r\n\r\n"
        for m in ("BYE", "ACK", "CANCEL", "OPTIONS", "INFO", "UPDATE", "REGISTER", "PRACK")
    ]
    response = (
        f"SIP/2.0 200 OK\r\n{via}{common.replace('To: <sip:99999@127.0.0.1>', 'To: <sip:9@x>;tag=t')}"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    ringing = response.replace("200 OK", "180 Ringing")
    return [invite, *simple, response, ringing]


def mutate(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.replace("{b}", f"{rng.getrandbits(40):x}").encode())
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(11)
        if op == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:  # cut
            data = data[: rng.randrange(len(data))]
        elif op == 2:  # insert garbage
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        elif op == 3:  # header flood
            pos = data.find(b"\r\n") + 2
            data[pos:pos] = b"X-Flood: y\r\n" * rng.randint(100, 400)
        elif op == 4:  # an oversized value
            pos = data.find(b"\r\n") + 2
            data[pos:pos] = b"Subject: " + b"A" * rng.choice([9_000, 70_000]) + b"\r\n"
        elif op == 5:  # lie about the body
            data = bytearray(bytes(data).replace(b"Content-Length: ", b"Content-Length: 9", 1))
        elif op == 6:  # broken start line
            end = data.find(b"\r\n")
            data[: max(end, 0)] = rng.choice(
                [b"INVITE", b"SIP/2.0", b"FOO bar baz qux", b"", b"\xff\xfe SIP/9.9"]
            )
        elif op == 7:  # drop a mandatory header
            for name in (b"Via:", b"CSeq:", b"Call-ID:", b"From:", b"To:"):
                if rng.random() < 0.3:
                    i = data.find(name)
                    j = data.find(b"\r\n", i)
                    if i >= 0 and j > i:
                        del data[i : j + 2]
        elif op == 8:  # bare LFs, folded lines
            data = bytearray(bytes(data).replace(b"\r\n", rng.choice([b"\n", b"\r\n ", b"\r"]), 2))
        elif op == 9:  # duplicate the whole message (two in one datagram)
            data = data + data
        else:  # weird numbers
            data = bytearray(
                bytes(data).replace(
                    b"CSeq: 1", rng.choice([b"CSeq: -1", b"CSeq: 99999999999999999999", b"CSeq: x"]), 1
                )
            )
    return bytes(data)


def drain(sock: socket.socket, into: list[bytes]) -> None:
    """Collect what the B2BUA answered; ICMP errors for our own odd datagrams are not answers."""
    while True:
        try:
            into.append(sock.recv(70_000))
        except BlockingIOError:
            return
        except ConnectionError:
            continue


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[[list[int]], RunningB2BUA]]:
    started: list[RunningB2BUA] = []

    def start(gateways: list[int]) -> RunningB2BUA:
        raw = make_config(tmp_path, gateways, sip={"transports": ["udp", "tcp"]})
        n = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "events" / "events.jsonl").start()
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def test_mutated_messages_never_break_the_b2bua(node, tmp_path: Path) -> None:
    with start_carrier("uas_answer_wait_bye.xml", workdir=tmp_path, timeout_s=60) as gw:
        b2b = node([gw.local_port])
        host, port = b2b.address.split(":")
        rng = random.Random(20261125)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0)
        local = udp.getsockname()[1]
        tpl = templates(local)
        sent = 0
        answers = []
        for _burst in range(60):
            for _ in range(50):
                msg = (
                    mutate(rng, rng.choice(tpl))
                    if rng.random() < 0.95
                    else bytes(rng.randrange(256) for _ in range(rng.randint(0, 1500)))
                )
                udp.sendto(msg[:65_000], (host, int(port)))
                sent += 1
            time.sleep(0.01)
            drain(udp, answers)
        # and over TCP: framing across partial writes, floods and lies about length
        # (a stream whose framing is lost is closed by the B2BUA: reconnect and go on)
        tcp: socket.socket | None = None
        closed_by_peer = 0
        for _ in range(300):
            data = mutate(rng, rng.choice(tpl))
            cut = rng.randrange(len(data) + 1)
            try:
                if tcp is None:
                    tcp = socket.create_connection((host, int(port)), timeout=2)
                tcp.sendall(data[:cut])
                tcp.sendall(data[cut:])
            except (ConnectionError, BrokenPipeError):
                closed_by_peer += 1
                tcp.close()
                tcp = None
            sent += 1
        if tcp is not None:
            tcp.close()
        time.sleep(3.0)  # let any admitted INVITE run its course (404 or invite timeout)
        drain(udp, answers)
        udp.close()

        assert sent >= 3000
        core = b2b.server.core
        assert core.stats["internal_errors"] == 0, core.stats
        assert core.stats["parse_errors"] > 500, core.stats
        statuses = [a.split(b" ", 2)[1] for a in answers if a.startswith(b"SIP/2.0 ")]
        assert b"400" in statuses  # malformed requests were answered, not ignored

        # the node still does its job: a normal call completes
        caller = start_caller(
            "uac_basic_bye.xml",
            remote=b2b.address,
            workdir=tmp_path,
            service="15551230000",
            pause_ms=300,
            timeout_s=20,
        )
        res = caller.wait(30)
        assert res.ok, res.describe()
        assert gw.wait(30).ok
    deadline = time.monotonic() + 10
    while (core.active_calls or core.dialogs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert core.active_calls == 0 and not core.dialogs  # no call or dialog left behind
    events = b2b.events()
    assert sum(e["type"] == "call.setup" for e in events) == sum(
        e["type"] == "call.terminated" for e in events
    )
