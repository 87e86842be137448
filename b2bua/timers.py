"""A pure deadline queue keyed by any hashable (the core's timer keys); the adapter's timer task
sleeps until ``next_deadline`` and fires ``pop_due``. Re-arming a key replaces its deadline and
cancelled entries are dropped lazily, so both are O(log n) at worst."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class DeadlineQueue:
    def __init__(self) -> None:
        self._deadlines: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def set(self, key: Hashable, at: float) -> None:
        self._deadlines[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))

    def cancel(self, key: Hashable) -> None:
        self._deadlines.pop(key, None)

    def _discard_stale(self) -> None:
        while self._heap:
            at, _, key = self._heap[0]
            if self._deadlines.get(key) == at:
                return
            heapq.heappop(self._heap)

    def next_deadline(self) -> float | None:
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        due: list[Hashable] = []
        while True:
            self._discard_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._deadlines[key]
            due.append(key)
