"""asyncio UDP and TCP for the B2BUA, plus the timer task. No SIP logic: bytes in, bytes out.

Incoming datagrams and stream messages are parsed here (``parse_message`` with the configured
limits; TCP is framed by ``StreamFramer``) and handed to one callback together with the source
``Address``; a ParseError is handed over as is, so the core can answer 400 (505, 513). Outgoing TCP
reuses the connection a peer opened to us (keyed by its address) or opens one, queueing what is
sent while it connects so per-destination order is kept.

UDP is read as each datagram comes (the loop's own datagram transport), or with
``sip.udp_read_interval_ms`` > 0 at most that often, everything waiting at once (``_PacedUdpReader``:
fewer wake-ups; at 2 ms, 0.91-1.00x the CPU a call at 300 calls/s in three alternated rounds, within
this machine's drift, so not the default).

TCP cannot be starved (``TcpLimits``): a message must be complete within a timeout of its first
byte (and a new connection must send its first message within it), idle connections close, one
address holds at most a few connections, and all inbound ones together stay below the descriptor
limit; when the slots are full, a connection that has not spoken yet makes room for a newcomer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from b2bua.actions import Address
from b2bua.sip.deadlines import DeadlineQueue
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import ParseError, ParserLimits, StreamFramer, parse_message
from sipledger.ports import free_port

log = logging.getLogger("sipledger.b2bua.transport")

Incoming = Request | Response | ParseError
OnMessage = Callable[[Incoming, Address], None]


# Datagrams read per wakeup of asyncio's own event loop, which reads one per poll: under load the rest
# are already waiting, so reading them straight away saves a poll and a loop iteration each. uvloop
# needs no help: libuv reads a UDP socket until it would block (up to 32 datagrams a poll), so a read
# of ours after each datagram only added a failing recvfrom and a BlockingIOError per wake-up.
_UDP_BATCH = 64


def _loop_drains_udp(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` reads the waiting datagrams by itself on a wake-up, up to 32 (uvloop's, on
    libuv), rather than one (asyncio's)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the B2BUA runs without it
        return False
    return isinstance(loop, uvloop.Loop)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports, sock: socket.socket, *, drain: bool = True) -> None:
        self.owner = owner
        self.sock: socket.socket | None = sock  # the real socket (asyncio's wrapper cannot recvfrom)
        self.drain = drain  # read what else is waiting after each datagram (asyncio's loop only)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self._handle(data, addr)
        sock = self.sock
        if sock is None or not self.drain:
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


class _PacedUdpReader:
    """Reads the UDP socket at most every ``interval`` seconds, everything waiting at once
    (``sip.udp_read_interval_ms``).

    Why: at 300 calls/s about 2,100 datagrams a second arrive a few at a time, and the loop woke for each
    one and found its caches cold (bench/README.md, fourth pass: a parse took 39-52 us in the process
    against 13 us in a hot loop). Left in the socket's buffer for a couple of milliseconds they are read
    and handled back to back, in one wake-up. The price is that much delay on every message received,
    far inside SIP's timers (T1 = 500 ms) and the setup latency targets.
    """

    # Datagrams handled a round before the loop gets a turn (its timers, TCP); more wait for the next.
    BATCH = 256

    def __init__(self, owner: Transports, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 interval: float) -> None:
        self.protocol = _UdpProtocol(owner, sock, drain=False)
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.interval = interval
        self._waiting = False  # a round is scheduled; the socket is not watched meanwhile
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        # Stop watching (the socket stays readable: level-triggered polling would wake at once again)
        # and come back after the interval for everything that arrived meanwhile.
        self.loop.remove_reader(self.fd)
        self._waiting = True
        self.loop.call_later(self.interval, self._round)

    def _round(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self._waiting = False
        recvfrom = sock.recvfrom
        handle = self.protocol._handle
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.protocol.error_received(exc)
                continue
            handle(data, addr)
            if self.sock is None:  # closed by a handler
                return
        else:
            self._waiting = True
            self.loop.call_soon(self._round)  # more are waiting: after the loop's other work
            return
        self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.sock is None:
            return
        if not self._waiting:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.fd)
        self.sock.close()
        self.sock = None


@dataclass(frozen=True)
class TcpLimits:
    """What one peer, and all peers together, may hold of the TCP side (issue: slowloris and fd
    exhaustion starved legitimate callers)."""

    max_connections: int = 1024  # inbound connections in all; capped below the fd limit at start
    max_per_source: int = 32  # inbound connections from one address
    message_timeout: float = 10.0  # a message must be whole this long after its first byte (or the connect)
    idle_timeout: float = 1800.0  # a connection with no bytes for this long is closed
    fd_reserve: int = 64  # file descriptors left for everything else (UDP, event log, Kafka, ...)

    @classmethod
    def from_config(cls, sip: Any) -> TcpLimits:
        return cls(sip.tcp_max_connections, sip.tcp_max_connections_per_source,
                   sip.tcp_message_timeout, sip.tcp_idle_timeout)

    def connection_cap(self) -> int:
        """``max_connections``, lowered so that accepting never runs into the soft RLIMIT_NOFILE."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - self.fd_reserve))


class _TcpConnection:
    def __init__(self, owner: Transports, peer: Address, *, inbound: bool, now: float,
                 sock: socket.socket | None = None) -> None:
        self.owner = owner
        self.peer = peer
        self.inbound = inbound
        self.sock = sock  # an accepted socket until its stream is set up
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.framer = StreamFramer(limits=owner.limits)
        self.opened_at = now
        self.last_activity = now
        self.delivered = 0  # complete messages read
        # When the message being read started (a fresh inbound connection must send its first one
        # within the message timeout too); None while between messages.
        self.message_started: float | None = now if inbound else None
        self.closed = False
        self.setting_up = False  # open_connection(sock=...) is running on self.sock

    def deadline(self) -> float:
        limits = self.owner.tcp
        if self.message_started is not None:
            return self.message_started + limits.message_timeout
        return self.last_activity + limits.idle_timeout

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
            elif self.sock is not None and not self.setting_up:
                self.sock.close()
            # else: its stream is being set up on the socket; _serve closes it once that returns.
            # Closing the socket under the event loop's transport frees its descriptor number for the
            # next accept while the loop still uses it (uvloop then stopped serving TCP altogether).

    async def read_loop(self) -> None:
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        try:
            while not self.closed:
                try:
                    data = await asyncio.wait_for(self.reader.read(65536),
                                                  max(0.0, self.deadline() - loop.time()))
                except TimeoutError:
                    self.owner.count("tcp_timeouts", f"tcp {self.peer}: closed, "
                                     + ("message not complete in time" if self.message_started is not None
                                        else "idle"))
                    return
                if not data:
                    return
                now = loop.time()
                self.last_activity = now
                try:
                    self.framer.feed(data)
                except ParseError:
                    return
                before = self.delivered
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
                    self.delivered += 1
                    self.owner.deliver(msg, self.peer)
                if not self.framer.in_message:
                    self.message_started = None
                elif self.message_started is None or self.delivered > before:
                    # A new message began in this read (after a whole one, or after a pause): the
                    # time it has to complete counts from now.
                    self.message_started = now
        except (ConnectionError, OSError) as exc:
            log.debug("tcp %s: %s", self.peer, exc)
        finally:
            self.owner.forget(self)
            self.close()


class Transports:
    """UDP and/or TCP on one host:port (port 0 picks a port free for both)."""

    def __init__(self, host: str, port: int, transports: list[str], on_message: OnMessage,
                 limits: ParserLimits, *, udp_buffer_bytes: int = 0, tcp: TcpLimits | None = None,
                 udp_read_interval: float = 0.0) -> None:
        self.host = host
        self.requested_port = port
        self.kinds = [t.lower() for t in transports]
        self.on_message = on_message
        self.limits = limits
        self.tcp = tcp or TcpLimits()
        self.udp_buffer_bytes = udp_buffer_bytes  # SO_RCVBUF/SO_SNDBUF; 0 leaves the kernel default
        # Seconds between reads of the UDP socket (_PacedUdpReader); 0 reads each datagram as it comes.
        self.udp_read_interval = udp_read_interval
        self._udp_paced: _PacedUdpReader | None = None
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_sock: socket.socket | None = None  # the transport's socket (sends to a host name)
        self._listen: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[tuple[str, int], _TcpConnection] = {}
        self._inbound: set[_TcpConnection] = set()
        self._per_source: dict[str, int] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connection_cap = self.tcp.connection_cap()
        # Refusals and closings of the TCP side, counted (and logged at most once per 10 s each).
        self.stats: dict[str, int] = {"tcp_accepted": 0, "tcp_refused_per_source": 0, "tcp_refused_full": 0,
                                      "tcp_evicted": 0, "tcp_timeouts": 0, "tcp_accept_errors": 0}
        self._logged_at: dict[str, float] = {}
        self._accept_paused = False

    def describe(self) -> str:
        return ", ".join(f"{k} {self.host}:{self.port}" for k in self.kinds)

    @property
    def tcp_connections(self) -> int:
        return len(self._inbound)

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
        self._loop = loop
        if "udp" in self.kinds:
            sock = _udp_socket(self.host, port)
            try:
                if self.udp_buffer_bytes > 0:
                    _size_udp_buffers(sock, self.udp_buffer_bytes)
                if self.udp_read_interval > 0:
                    sock.setblocking(False)
                    self._udp_paced = _PacedUdpReader(self, sock, loop, self.udp_read_interval)
                else:
                    drain = not _loop_drains_udp(loop)
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _UdpProtocol(self, sock, drain=drain), sock=sock)
                    self._udp = transport  # type: ignore[assignment]
            except BaseException:
                sock.close()
                raise
            self._udp_sock = sock
        if "tcp" in self.kinds:
            # Our own accept loop instead of asyncio.start_server: the caps are applied before a
            # connection costs more than its socket, and running out of descriptors is counted and
            # logged once in a while instead of a traceback per refused accept.
            listen = socket.create_server((self.host.strip("[]"), port), backlog=512,
                                          family=socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            listen.setblocking(False)
            self._listen = listen
            loop.add_reader(listen.fileno(), self._on_acceptable)
            log.info("tcp: at most %d connections (%d per source), message timeout %g s, idle timeout %g s",
                     self.connection_cap, self.tcp.max_per_source, self.tcp.message_timeout,
                     self.tcp.idle_timeout)

    def count(self, kind: str, text: str) -> None:
        self.stats[kind] += 1
        now = time.monotonic()
        if now - self._logged_at.get(kind, -1e9) >= 10.0:
            self._logged_at[kind] = now
            log.warning("%s (%s so far: %d)", text, kind, self.stats[kind])

    def _on_acceptable(self) -> None:
        listen = self._listen
        if listen is None:
            return
        for _ in range(64):
            try:
                sock, addr = listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.count("tcp_accept_errors", f"tcp accept failed: {exc}")
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: stop polling the listener for a moment instead
                    # of spinning on a socket that stays readable.
                    self._pause_accepting(0.1)
                return
            self._admit(sock, addr)

    def _pause_accepting(self, seconds: float) -> None:
        if self._listen is None or self._loop is None or self._accept_paused:
            return
        self._accept_paused = True
        self._loop.remove_reader(self._listen.fileno())

        def resume() -> None:
            self._accept_paused = False
            if self._listen is not None and self._loop is not None:
                self._loop.add_reader(self._listen.fileno(), self._on_acceptable)

        self._loop.call_later(seconds, resume)

    def _admit(self, sock: socket.socket, addr: tuple[Any, ...]) -> None:
        assert self._loop is not None
        host, port = addr[0], addr[1]
        if self._per_source.get(host, 0) >= self.tcp.max_per_source:
            sock.close()
            self.count("tcp_refused_per_source", f"tcp from {host}: refused, {self.tcp.max_per_source} "
                       "connections from that address already")
            return
        now = self._loop.time()
        if len(self._inbound) >= self.connection_cap:
            victim = self._victim(now)
            if victim is None:
                sock.close()
                self.count("tcp_refused_full", f"tcp from {host}: refused, {self.connection_cap} "
                           "connections open and none idle")
                return
            self.count("tcp_evicted", f"tcp {victim.peer}: closed to make room for a new connection")
            victim.close()
            self._release(victim)
        self.stats["tcp_accepted"] += 1
        sock.setblocking(False)
        conn = _TcpConnection(self, Address(host, port, "tcp"), inbound=True, now=now, sock=sock)
        self._inbound.add(conn)
        self._per_source[host] = self._per_source.get(host, 0) + 1
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _victim(self, now: float) -> _TcpConnection | None:
        """Who makes room when every slot is taken: the oldest connection that has not sent a whole
        message yet, else the one idle longest if it has been idle for a message timeout. A peer that
        opens a connection and speaks (a caller) is never pushed out by ones that only hold slots."""
        silent = [c for c in self._inbound if not c.delivered and not c.closed]
        if silent:
            return min(silent, key=lambda c: c.opened_at)
        idle = [c for c in self._inbound if not c.closed and c.message_started is None
                and now - c.last_activity >= self.tcp.message_timeout]
        return min(idle, key=lambda c: c.last_activity) if idle else None

    async def _serve(self, conn: _TcpConnection) -> None:
        assert conn.sock is not None
        conn.setting_up = True
        try:
            reader, writer = await asyncio.open_connection(sock=conn.sock)
        except OSError as exc:
            log.debug("tcp %s: %s", conn.peer, exc)
            conn.setting_up = False
            self._release(conn)
            conn.closed = True
            # The loop owns the descriptor once handed over and closed it on this failure (asyncio
            # through the socket object; uvloop through libuv, without detaching the socket object:
            # MagicStack/uvloop#738): detach, so the object's close cannot hit a recycled number.
            conn.sock.detach()
            return
        finally:
            conn.setting_up = False
        conn.reader, conn.writer = reader, writer
        if conn.closed:  # evicted while its stream was being set up
            writer.close()
            self._release(conn)
            return
        self._conns[(conn.peer.host, conn.peer.port)] = conn
        await conn.read_loop()

    def _release(self, conn: _TcpConnection) -> None:
        if conn in self._inbound:
            self._inbound.discard(conn)
            host = conn.peer.host
            left = self._per_source.get(host, 1) - 1
            if left > 0:
                self._per_source[host] = left
            else:
                self._per_source.pop(host, None)

    def deliver(self, msg: Incoming, source: Address) -> None:
        try:
            self.on_message(msg, source)
        except Exception:  # the adapter logs; a transport callback must never kill the reader
            log.exception("message handler failed for a message from %s", source)

    def forget(self, conn: _TcpConnection) -> None:
        key = (conn.peer.host, conn.peer.port)
        if self._conns.get(key) is conn:
            del self._conns[key]
        self._release(conn)

    def send(self, data: bytes, dest: Address) -> None:
        if dest.transport == "tcp":
            self._send_tcp(data, dest)
        elif self._udp_paced is not None:
            self._send_by_name(data, dest)  # the socket's own sendto (a name is resolved there)
        elif self._udp is not None:
            try:
                self._udp.sendto(data, (dest.host, dest.port))
            except ValueError:
                # uvloop refuses an address that needs a DNS lookup (a gateway or a Contact by name);
                # asyncio's transport resolves it in sendto. Do what asyncio did: the socket's sendto.
                self._send_by_name(data, dest)
            except OSError as exc:
                log.warning("udp send to %s failed: %s", dest, exc)
        else:
            log.warning("no UDP transport for %s; dropped", dest)

    def _send_by_name(self, data: bytes, dest: Address) -> None:
        sock = self._udp_sock
        if sock is None:
            log.warning("udp send to %s failed: no socket", dest)
            return
        try:
            sock.sendto(data, (dest.host, dest.port))
        except (OSError, ValueError) as exc:  # unresolvable name, wrong family, full buffer
            log.warning("udp send to %s failed: %s", dest, exc)

    def _send_tcp(self, data: bytes, dest: Address) -> None:
        key = (dest.host, dest.port)
        conn = self._conns.get(key)
        if conn is not None and conn.writer is not None and not conn.closed:
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
        now = asyncio.get_running_loop().time()
        conn = _TcpConnection(self, Address(dest.host, dest.port, "tcp"), inbound=False, now=now)
        conn.reader, conn.writer = reader, writer
        self._conns[key] = conn
        for data in self._pending.pop(key, []):
            writer.write(data)
        await conn.read_loop()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._udp_paced is not None:
            self._udp_paced.close()
            self._udp_paced = None
        self._udp_sock = None
        if self._listen is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._listen.fileno())
            self._listen.close()
            self._listen = None
        for conn in [*self._conns.values(), *self._inbound]:
            conn.close()
        self._conns.clear()
        self._inbound.clear()
        self._per_source.clear()
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
    """Fires the keys of a ``DeadlineQueue`` when due, with one ``loop.call_at`` handle on the earliest
    deadline (no task, event or timeout object per wake-up, which cost more than the timers' own work
    under load). Keys fired in one wake-up go in deadline order."""

    def __init__(self, fire: Callable[[Hashable], None],
                 on_late: Callable[[float], None] | None = None) -> None:
        self.queue = DeadlineQueue()
        self.fire = fire
        self.on_late = on_late  # told how late each wake-up ran (the loop stall watch)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._armed_when = 0.0  # loop time the handle was armed at
        self._firing = False

    def set(self, key: Hashable, at: float) -> None:
        self.queue.set(key, at)
        if not self._firing and (self._armed_at is None or at < self._armed_at):
            self._wake_at(at)

    def cancel(self, key: Hashable) -> None:
        # The handle may still wake up for a cancelled deadline: it then finds nothing due.
        self.queue.cancel(key)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        deadline = self.queue.next_deadline()
        if deadline is not None:
            self._wake_at(deadline)

    def _wake_at(self, at: float) -> None:
        if self._loop is None:
            return  # not started: start() arms the earliest deadline
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        self._armed_when = self._loop.time()
        self._handle = self._loop.call_at(at, self._run)

    def _run(self) -> None:
        assert self._loop is not None
        if self.on_late is not None and self._armed_at is not None:
            # Late from the deadline, or from the arming when the deadline was already past.
            self.on_late(self._loop.time() - max(self._armed_at, self._armed_when))
        self._handle = self._armed_at = None
        self._firing = True
        try:
            for key in self.queue.pop_due(self._loop.time()):
                try:
                    self.fire(key)
                except Exception:
                    log.exception("timer %r failed", key)
        finally:
            self._firing = False
        deadline = self.queue.next_deadline()
        if deadline is not None:
            self._wake_at(deadline)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_at = None
        self._loop = None
