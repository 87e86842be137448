"""Transport limits that need no network: the connection cap below the fd limit, and quiet
handling of accept errors (a stand-in listener that fails like a process out of descriptors)."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket

import pytest

from b2bua.sip.parser import ParserLimits
from b2bua.transport import TcpLimits, Transports


def test_connection_cap_stays_below_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert TcpLimits(max_connections=10).connection_cap() == min(10, soft - 64)
    if soft != resource.RLIM_INFINITY:
        assert TcpLimits(max_connections=10 * soft).connection_cap() == soft - 64


class _ExhaustedListener:
    """accept() fails as it does when the process has no descriptor left (EMFILE)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.calls = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.sock.close()


def test_accept_errors_are_counted_and_logged_once_not_a_traceback_each(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sipledger.b2bua.transport")

    async def main() -> Transports:
        t = Transports("127.0.0.1", 0, ["tcp"], lambda msg, src: None, ParserLimits())
        t._loop = asyncio.get_running_loop()
        listener = _ExhaustedListener()
        t._listen = listener  # type: ignore[assignment]
        t._loop.add_reader(listener.fileno(), t._on_acceptable)
        for _ in range(500):
            t._on_acceptable()
        t._loop.remove_reader(listener.fileno())
        await asyncio.sleep(0.15)  # the paused listener is watched again after 0.1 s
        t._loop.remove_reader(listener.fileno())
        listener.close()
        t._listen = None
        return t

    t = asyncio.run(main())
    # The 500 failures, and at most one more after the pause: not a busy loop on a readable socket.
    assert 500 <= t.stats["tcp_accept_errors"] <= 501
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
