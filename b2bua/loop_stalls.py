"""The longest stall of the event loop: how late the loop ran a timer that was due.

A datagram that arrives while the loop is busy (a long callback, a collection, a burst of timers)
waits in the socket for at least that long, so this is the latency floor the benchmark reports per
rate step, read and reset by ``take``. Two sources feed it:

* every wake-up of the B2BUA's timer task reports how late it ran (``observe``): under load that is
  dozens of measurements a second, for free, since those wake-ups happen anyway;
* the watch's own tick, one ``call_later`` handle every ``period`` (no task, no thread), covers the
  moments when no call timer is pending. It used to run every 10 ms: with no call up the process
  then woke 212 times a second (libuv rounds a timeout down to whole milliseconds and often wakes
  twice) and used 9.5 ms of CPU a second; at 100 ms, 40 wake-ups (the rest: the collector's tick,
  the command follower's poll, the heartbeat) and 3.5 ms. A stall shorter than
  ``period`` between two ticks is seen only by the timer task's reports.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(slots=True)
class LoopStallWatch:
    period: float = 0.1
    longest: float = 0.0  # seconds a tick or a timer wake-up ran late, the most since ``take``
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

    def observe(self, late: float) -> None:
        """A timer that was due ``late`` seconds before the loop ran it (the timer task's wake-ups)."""
        if late > self.longest:
            self.longest = late

    def take(self) -> float:
        """The longest stall since the last ``take`` (seconds), and start counting anew."""
        longest, self.longest = self.longest, 0.0
        return longest

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
