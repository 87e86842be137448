"""The UDP side of b2bua/transport.py on asyncio's loop and on uvloop's: a burst is read whole, in order."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from b2bua.actions import Address
from b2bua.sip.message import Request
from b2bua.sip.parser import ParserLimits
from b2bua.transport import Incoming, Transports, _UdpProtocol

uvloop = pytest.importorskip("uvloop")
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run,
                                                                 "uvloop": uvloop.run}


class _CountingSocket:
    """The protocol's socket, counting the reads the protocol makes of its own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.count = 0

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        self.count += 1
        return self.sock.recvfrom(size)


def _options(n: int, port: int) -> bytes:
    return (f"OPTIONS sip:b2bua@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-burst-{n}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=t{n}\r\nTo: <sip:b2bua@127.0.0.1>\r\n"
            f"Call-ID: burst-{n}\r\nCSeq: {n + 1} OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_a_burst_of_datagrams_is_read_whole_and_in_order(runner: str) -> None:
    """50 datagrams (what the kernel's default buffer holds) sent before the loop reads any: every one
    is handed on, in the order sent. On asyncio's loop the protocol reads what else is waiting after
    each datagram; on uvloop's, libuv does, and the protocol must not add a read of its own (a failing
    recvfrom per wake-up)."""

    async def main() -> tuple[list[int], int]:
        got: list[int] = []

        def on_message(msg: Incoming, source: Address) -> None:
            assert isinstance(msg, Request)
            got.append(msg.cseq.num - 1)

        transports = Transports("127.0.0.1", 0, ["udp"], on_message, ParserLimits())
        port = await transports.start()
        assert transports._udp is not None
        protocol = transports._udp.get_protocol()
        assert isinstance(protocol, _UdpProtocol) and protocol.sock is not None
        reads = _CountingSocket(protocol.sock)
        protocol.sock = reads  # type: ignore[assignment]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        try:
            for n in range(50):  # no await in between: all are queued in the socket first
                sender.sendto(_options(n, sender.getsockname()[1]), ("127.0.0.1", port))
            for _ in range(500):
                if len(got) == 50:
                    break
                await asyncio.sleep(0.01)
            return got, reads.count
        finally:
            sender.close()
            await transports.close()

    got, reads = RUNNERS[runner](main())
    assert got == list(range(50))
    if runner == "uvloop":
        assert reads == 0  # libuv read them all
    else:
        assert reads > 0  # one datagram per poll from asyncio, the rest read by the protocol


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_paced_reading_hands_on_every_datagram_in_order_and_sends_from_the_same_socket(runner: str) -> None:
    """``sip.udp_read_interval_ms``: the socket is read every few milliseconds, everything waiting at
    once. 600 datagrams sent at once (more than one round reads: the rest waits for the loop's next
    turn) all arrive, in order; a reply goes out from the listening address; after close nothing is
    read any more."""

    async def main() -> tuple[list[int], bytes, tuple[str, int], int]:
        got: list[int] = []
        transports: Transports

        def on_message(msg: Incoming, source: Address) -> None:
            assert isinstance(msg, Request)
            got.append(msg.cseq.num - 1)
            if msg.cseq.num == 1:
                transports.send(b"reply", source)

        transports = Transports("127.0.0.1", 0, ["udp"], on_message, ParserLimits(),
                                udp_buffer_bytes=4_194_304, udp_read_interval=0.002)
        port = await transports.start()
        assert transports._udp is None and transports._udp_paced is not None
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sender.bind(("127.0.0.1", 0))
        sender.setblocking(False)
        try:
            for n in range(600):
                sender.sendto(_options(n, sender.getsockname()[1]), ("127.0.0.1", port))
            for _ in range(500):
                if len(got) == 600:
                    break
                await asyncio.sleep(0.01)
            reply, source = sender.recvfrom(100)
            await transports.close()
            sender.sendto(_options(600, sender.getsockname()[1]), ("127.0.0.1", port))
            await asyncio.sleep(0.05)
            return got, reply, source, port
        finally:
            sender.close()
            await transports.close()

    got, reply, source, port = RUNNERS[runner](main())
    assert got == list(range(600))
    assert reply == b"reply" and source == ("127.0.0.1", port)
