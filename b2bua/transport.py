"""asyncio UDP and TCP for the B2BUA, plus the timer task. No SIP logic: bytes in, bytes out.

Incoming datagrams and stream messages are parsed here (``parse_message`` with the configured
limits; TCP is framed by ``StreamFramer``) and handed to one callback together with the source
``Address``; a ParseError is handed over as is, so the core can answer 400. Outgoing TCP reuses the
connection a peer opened to us (keyed by its address) or opens one, queueing what is sent while
it connects so per-destination order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Hashable

from b2bua.actions import Address
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import ParseError, ParserLimits, StreamFramer, parse_message
from b2bua.timers import DeadlineQueue
from sipledger.ports import free_port

log = logging.getLogger("sipledger.b2bua.transport")

Incoming = Request | Response | ParseError
OnMessage = Callable[[Incoming, Address], None]


# Datagrams read per wakeup of the event loop: asyncio reads one per poll; under load the rest are
# already waiting, so reading them straight away saves a poll and a loop iteration each.
_UDP_BATCH = 64


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports, sock: socket.socket) -> None:
        self.owner = owner
        self.sock: socket.socket | None = sock  # the real socket (asyncio's wrapper cannot recvfrom)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self._handle(data, addr)
        sock = self.sock
        if sock is None:
            return
        for _ in range(_UDP_BATCH - 1):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self._handle(data, addr)
            if self.sock is None:  # closed by a handler
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock = None

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        source = Address(addr[0], addr[1], "udp")
        try:
            msg: Incoming | None = parse_message(data, limits=self.owner.limits)
        except ParseError as exc:
            msg = exc
        if msg is not None:
            self.owner.deliver(msg, source)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away; retransmission timers handle it.
        log.debug("udp error: %s", exc)


class _TcpConnection:
    def __init__(self, owner: Transports, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: Address) -> None:
        self.owner = owner
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.framer = StreamFramer(limits=owner.limits)

    async def read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                self.framer.feed(data)
                while True:
                    try:
                        msg = self.framer.next_message()
                    except ParseError as exc:
                        self.owner.deliver(exc, self.peer)
                        if self.framer.framing_lost:
                            return
                        continue
                    if msg is None:
                        break
                    self.owner.deliver(msg, self.peer)
        except (ConnectionError, OSError) as exc:
            log.debug("tcp %s: %s", self.peer, exc)
        finally:
            self.owner.forget(self)
            with contextlib.suppress(Exception):
                self.writer.close()


class Transports:
    """UDP and/or TCP on one host:port (port 0 picks a port free for both)."""

    def __init__(self, host: str, port: int, transports: list[str], on_message: OnMessage,
                 limits: ParserLimits, *, udp_buffer_bytes: int = 0) -> None:
        self.host = host
        self.requested_port = port
        self.kinds = [t.lower() for t in transports]
        self.on_message = on_message
        self.limits = limits
        self.udp_buffer_bytes = udp_buffer_bytes  # SO_RCVBUF/SO_SNDBUF; 0 leaves the kernel default
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._conns: dict[tuple[str, int], _TcpConnection] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def describe(self) -> str:
        return ", ".join(f"{k} {self.host}:{self.port}" for k in self.kinds)

    async def start(self) -> int:
        attempts = 20 if self.requested_port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            port = self.requested_port or free_port(self.host, udp_and_tcp=True)
            try:
                await self._bind(port)
            except OSError as exc:
                last = exc
                await self.close()
                continue
            self.port = port
            return port
        assert last is not None
        raise last

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        if "udp" in self.kinds:
            sock = _udp_socket(self.host, port)
            try:
                if self.udp_buffer_bytes > 0:
                    _size_udp_buffers(sock, self.udp_buffer_bytes)
                transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self, sock),
                                                                   sock=sock)
            except BaseException:
                sock.close()
                raise
            self._udp = transport  # type: ignore[assignment]
        if "tcp" in self.kinds:
            self._tcp_server = await asyncio.start_server(self._accepted, self.host, port)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        conn = _TcpConnection(self, reader, writer, Address(host, port, "tcp"))
        self._conns[(host, port)] = conn
        await conn.read_loop()

    def deliver(self, msg: Incoming, source: Address) -> None:
        try:
            self.on_message(msg, source)
        except Exception:  # the adapter logs; a transport callback must never kill the reader
            log.exception("message handler failed for a message from %s", source)

    def forget(self, conn: _TcpConnection) -> None:
        key = (conn.peer.host, conn.peer.port)
        if self._conns.get(key) is conn:
            del self._conns[key]

    def send(self, data: bytes, dest: Address) -> None:
        if dest.transport == "tcp":
            self._send_tcp(data, dest)
        elif self._udp is not None:
            try:
                self._udp.sendto(data, (dest.host, dest.port))
            except OSError as exc:
                log.warning("udp send to %s failed: %s", dest, exc)
        else:
            log.warning("no UDP transport for %s; dropped", dest)

    def _send_tcp(self, data: bytes, dest: Address) -> None:
        key = (dest.host, dest.port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.writer.write(data)
            return
        if key in self._pending:
            self._pending[key].append(data)
            return
        self._pending[key] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(dest))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, dest: Address) -> None:
        key = (dest.host, dest.port)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(dest.host, dest.port), 5.0)
        except (OSError, TimeoutError) as exc:
            log.warning("tcp connect to %s failed: %s", dest, exc)
            self._pending.pop(key, None)
            return
        conn = _TcpConnection(self, reader, writer, Address(dest.host, dest.port, "tcp"))
        self._conns[key] = conn
        for data in self._pending.pop(key, []):
            writer.write(data)
        await conn.read_loop()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                conn.writer.close()
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()


def _udp_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket (what ``create_datagram_endpoint(local_addr=...)`` makes)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _size_udp_buffers(sock: socket.socket | None, size: int) -> None:
    """Ask for ``size``-byte receive and send buffers. A burst of datagrams (or a pause of the event
    loop) then waits in the kernel instead of being dropped. Linux caps the request at
    net.core.rmem_max / wmem_max; the granted sizes are logged (Linux reports twice the request)."""
    if sock is None:
        return
    for opt, name in ((socket.SO_RCVBUF, "SO_RCVBUF"), (socket.SO_SNDBUF, "SO_SNDBUF")):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, opt)
        except OSError as exc:
            log.warning("udp %s %d refused: %s", name, size, exc)
            continue
        level = logging.INFO if granted >= size else logging.WARNING
        log.log(level, "udp %s: asked for %d bytes, kernel granted %d%s", name, size, granted,
                "" if granted >= size else " (raise net.core.rmem_max/wmem_max)")


class TimerTask:
    """One asyncio task sleeping until the earliest deadline of a ``DeadlineQueue``."""

    def __init__(self, fire: Callable[[Hashable], None]) -> None:
        self.queue = DeadlineQueue()
        self.fire = fire
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def set(self, key: Hashable, at: float) -> None:
        current = self.queue.next_deadline()
        self.queue.set(key, at)
        if current is None or at < current:
            self._wake.set()

    def cancel(self, key: Hashable) -> None:
        self.queue.cancel(key)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.queue.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            for key in self.queue.pop_due(loop.time()):
                try:
                    self.fire(key)
                except Exception:
                    log.exception("timer %r failed", key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
