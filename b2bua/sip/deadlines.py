"""A pure deadline queue keyed by any hashable: a hashed timing wheel.

Two queues use it: the transaction layer's own (``TimedTransactionLayer``: timers A/B/E/F/K/J/L/M of
every transaction) and the adapter's timer task (the core's call timers: the 2xx retransmissions,
the INVITE and ringing timeouts, a duration cap of hours, and one wake-up for the layer's queue). It
lives in the compiled package for the layer's sake. Every call arms and cancels two dozen timers,
and almost all of them are cancelled long before they are due. A heap with lazy deletion kept every
cancelled entry until its time: at 800 calls/s the 7200 s caps alone piled up by millions, and
rebuilding the heap stopped the loop.
Here setting, re-arming and cancelling are O(1) and a cancelled timer is gone at once:

* near deadlines (within ``SLOTS`` x ``RESOLUTION``, 82 s) live in the wheel's slot of their
  10 ms tick, one dict per slot;
* far ones (duration caps, session expiries, ringing timeouts) wait in one dict per second of their
  deadline and move into the wheel when it comes within reach; a heap of those seconds (one entry
  per second that ever had a timer, at most one per second of the longest timer) orders them.

Nothing fires early: a key is due when ``now >= at``, exactly as before; ``pop_due`` returns due
keys in deadline order.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

RESOLUTION = 0.01  # seconds per wheel slot
SLOTS = 8192  # the wheel spans SLOTS * RESOLUTION = 81.92 s


def _tick(at: float) -> int:
    return int(at // RESOLUTION)


class DeadlineQueue:
    def __init__(self) -> None:
        self._slots: list[dict[Hashable, float]] = [{} for _ in range(SLOTS)]
        self._cursor: int | None = None  # the last tick whose slot was emptied of due keys
        self._far: dict[int, dict[Hashable, float]] = {}  # whole second -> its keys
        self._far_seconds: list[int] = []  # heap of the seconds in _far (stale ones skipped)
        # Where each key is: (True, tick) in the wheel, or (False, second) waiting far.
        self._where: dict[Hashable, tuple[bool, int]] = {}
        self._near = 0  # keys in the wheel (when none, the cursor jumps instead of walking)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def set(self, key: Hashable, at: float) -> None:
        """Arm ``key`` for ``at``; a key already armed is moved to the new deadline."""
        if key in self._where:
            self.cancel(key)
        if self._cursor is None:
            self._cursor = _tick(at) - 1
        self._place(key, at)

    def _place(self, key: Hashable, at: float) -> None:
        assert self._cursor is not None
        tick = max(_tick(at), self._cursor + 1)  # a deadline already past goes in the next slot
        if tick <= self._cursor + SLOTS:
            self._slots[tick % SLOTS][key] = at
            self._where[key] = (True, tick)
            self._near += 1
            return
        second = int(at)
        bucket = self._far.get(second)
        if bucket is None:
            bucket = self._far[second] = {}
            heapq.heappush(self._far_seconds, second)
        bucket[key] = at
        self._where[key] = (False, second)

    def cancel(self, key: Hashable) -> None:
        where = self._where.pop(key, None)
        if where is None:
            return
        near, index = where
        if near:
            slot = self._slots[index % SLOTS]
            del slot[key]
            if not slot:
                # A dict keeps its table when emptied: a burst of timers (a flood answered with 401s)
                # would leave every slot it touched that large for good. An empty literal has none.
                self._slots[index % SLOTS] = {}
            self._near -= 1
            return
        bucket = self._far[index]
        del bucket[key]
        if not bucket:
            del self._far[index]  # its second stays in the heap until passed (skipped as stale)

    def _pull_far(self) -> None:
        """Move far timers whose second has come within the wheel's reach into their slots."""
        assert self._cursor is not None
        horizon = (self._cursor + SLOTS) * RESOLUTION
        seconds = self._far_seconds
        while seconds and seconds[0] + 1 <= horizon:
            second = heapq.heappop(seconds)
            bucket = self._far.pop(second, None)
            for key, at in (bucket or {}).items():
                self._place(key, at)

    def next_deadline(self) -> float | None:
        if not self._where or self._cursor is None:
            return None
        self._pull_far()
        if not self._near:
            while self._far_seconds and self._far_seconds[0] not in self._far:
                heapq.heappop(self._far_seconds)
            return min(self._far[self._far_seconds[0]].values()) if self._far_seconds else None
        for tick in range(self._cursor + 1, self._cursor + SLOTS + 1):
            slot = self._slots[tick % SLOTS]
            if slot:
                return min(slot.values())
        while self._far_seconds and self._far_seconds[0] not in self._far:
            heapq.heappop(self._far_seconds)
        return min(self._far[self._far_seconds[0]].values()) if self._far_seconds else None

    def pop_due(self, now: float) -> list[Hashable]:
        if not self._where or self._cursor is None:
            return []
        due: list[tuple[float, Hashable]] = []
        target = _tick(now)
        while True:
            if not self._near:
                # An empty wheel: jump to the first far second (or to now) instead of walking to it.
                first_far = int(self._far_seconds[0] // RESOLUTION) if self._far_seconds else target
                self._cursor = max(self._cursor, min(target, first_far) - SLOTS // 2)
            self._pull_far()
            last = min(target, self._cursor + SLOTS)
            first = self._cursor + 1  # holds the deadlines set earlier than the cursor: always seen
            for tick in range(first, max(last, first) + 1):
                slot = self._slots[tick % SLOTS]
                if not slot:
                    continue
                for key, at in list(slot.items()):
                    if at <= now:
                        del slot[key]
                        del self._where[key]
                        self._near -= 1
                        due.append((at, key))
                if not slot:
                    self._slots[tick % SLOTS] = {}
            if last >= first:
                # The slot of ``target`` may hold keys due later within its tick: it is visited again.
                self._cursor = last - 1 if last == target else last
            if last >= target or not self._where:
                break
        if len(due) > 1:
            due.sort(key=lambda item: item[0])
        return [key for _, key in due]
