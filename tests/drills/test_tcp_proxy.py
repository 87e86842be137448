"""The drills' cuttable proxy really cuts: a drill that believes a link is down while a client
reconnected through it tests nothing (seen: a node's producer reconnected through a "cut" proxy
whose accept() was still blocked on the closed listener, so its heartbeats kept flowing)."""

from __future__ import annotations

import contextlib
import socket
import threading

from drills.tcp_proxy import CuttableProxy, free_tcp_port


def _echo_server(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def _round_trip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"ping")
        return s.recv(16)


def test_a_cut_closes_open_links_and_refuses_every_reconnect_until_mended() -> None:
    target = free_tcp_port()
    server = _echo_server(target)
    proxy = CuttableProxy(free_tcp_port(), target).start()
    try:
        assert _round_trip(proxy.listen_port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=2)
        held.sendall(b"a")
        assert held.recv(4) == b"a"
        proxy.cut()
        assert held.recv(4) == b""  # the open link is gone
        held.close()
        for _ in range(20):  # the first reconnect is the one a blocked accept() used to let through
            try:
                got = _round_trip(proxy.listen_port)
            except OSError:
                continue
            raise AssertionError(f"a connection went through a cut proxy: {got!r}")
        proxy.mend()
        assert _round_trip(proxy.listen_port) == b"ping"
    finally:
        proxy.stop()
        server.close()
