"""The longest stall of the event loop: how late a tick scheduled every ``period`` seconds ran.

A datagram that arrives while the loop is busy (a long callback, a collection, a burst of timers)
waits in the socket for at least that long, so this is the latency floor the benchmark reports per
rate step, read and reset by ``take``. The watch is one ``call_later`` handle: no task, no thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(slots=True)
class LoopStallWatch:
    period: float = 0.01
    longest: float = 0.0  # seconds a tick ran late, the most since ``take``
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _due: float = 0.0
    _handle: asyncio.TimerHandle | None = field(default=None, repr=False)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.period
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = self._loop.time() - self._due
        if late > self.longest:
            self.longest = late
        self._schedule()

    def take(self) -> float:
        """The longest stall since the last ``take`` (seconds), and start counting anew."""
        longest, self.longest = self.longest, 0.0
        return longest

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
