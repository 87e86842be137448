"""What the sans-I/O B2BUA core asks its adapter to do, in the order it must be done.

The core never touches sockets, clocks or the event log; every side effect comes back as one of
these plain values. Order matters: two messages of one dialog are always returned in wire order,
and the adapter performs the actions one after the other.

They are never changed once made; only ``Address`` (a key in tables) is frozen, the others skip a
frozen dataclass's slower ``__init__`` (thousands are made per second).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Address:
    """A peer: host, port and lower-case transport ("udp" | "tcp")."""

    host: str
    port: int
    transport: str = "udp"

    def __str__(self) -> str:
        return f"{self.transport} {self.host}:{self.port}"


@dataclass(slots=True, unsafe_hash=True)
class Send:
    data: bytes
    dest: Address


@dataclass(slots=True, unsafe_hash=True)
class SetTimer:
    """Arm (or re-arm: the new deadline replaces the old) the timer ``key`` for absolute time ``at``."""

    key: Hashable
    at: float


@dataclass(slots=True, unsafe_hash=True)
class CancelTimer:
    key: Hashable


@dataclass(slots=True, unsafe_hash=True)
class Emit:
    """A call event for ``CallEventFactory.emit(call_id, type, **fields)``."""

    call_id: str
    type: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, unsafe_hash=True)
class Log:
    level: str  # "debug" | "info" | "warning" | "error"
    text: str


@dataclass(slots=True)
class PublishTrace:
    """A finished call's signalling record (b2bua/signalling_trace.py) for the call-signalling log."""

    record: dict[str, Any]


Action = Send | SetTimer | CancelTimer | Emit | Log | PublishTrace
