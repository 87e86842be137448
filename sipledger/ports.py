"""Picking a free port on a loopback address (services of the stack, the B2BUA, test peers)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", *, udp_and_tcp: bool = False, attempts: int = 100) -> int:
    """A port free right now for TCP, or for both UDP and TCP when ``udp_and_tcp`` (SIP listens on
    both with one number). Another process may still take it before the caller binds it."""
    for _ in range(attempts):
        kind = socket.SOCK_DGRAM if udp_and_tcp else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
        if not udp_and_tcp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError(f"no free port on {host} after {attempts} attempts")
