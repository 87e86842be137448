"""A TCP forwarder a drill can cut: one client's way to the broker, and nobody else's.

The drill's broker has a second listener (``kafka_broker.up(extra_listener=(port, proxy_port))``) that
advertises this proxy's port, so a client bootstrapping through the proxy also talks to the broker
through it. ``cut()`` closes every forwarded connection and refuses new ones (the client sees a broker
that is gone, as behind a broken link); ``mend()`` lets it through again. Everything else (workers,
other nodes) uses the broker's own listener and is untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CuttableProxy:
    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._open = False
        self.cut_count = 0

    @classmethod
    def for_new_listener(cls) -> CuttableProxy:
        """A proxy on a free port to a listener port that is free too (the broker binds it)."""
        return cls(free_tcp_port(), free_tcp_port())

    def start(self) -> CuttableProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(64)
        with self._lock:
            self._server = server
            self._open = True
        self._thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self._open or self._server is not server:
                    # Accepted by a listener that was cut meanwhile (see cut()): refuse it.
                    for s in (client, upstream):
                        s.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Close everything and refuse new connections until ``mend``."""
        self.cut_count += 1
        with self._lock:
            server, self._server, self._open = self._server, None, False
            conns, self._conns = self._conns, []
        if server is not None:
            # close() alone does not stop a thread blocked in accept(): the kernel socket stays listening
            # while that call holds it, and the next client to reconnect gets through (and stays through)
            # a "cut" link. shutdown() wakes the accept and stops the listening at once.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                server.close()
        if self._thread is not None:
            self._thread.join(2)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def mend(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
