"""A pure deadline queue keyed by any hashable (the core's timer keys); the adapter's timer task
wakes the loop at ``next_deadline`` and fires ``pop_due``.

Re-arming a key replaces its deadline and cancelled entries are dropped lazily, so both are
O(log n) at worst. Lazily is not never: a call's 7200 s duration cap is cancelled when the call
ends after a minute, and at 800 calls/s those dead entries alone would pile up by millions before
their time came. So the heap is rebuilt from the live deadlines whenever dead entries outnumber
live ones (each rebuild is O(live) and happens after at least as many cancellations: amortised
O(1) per cancellation, and the heap never holds more than twice the live timers plus a margin).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable

# Below this many entries the heap is never rebuilt: not worth a pass.
_COMPACT_FLOOR = 4096


class DeadlineQueue:
    def __init__(self) -> None:
        self._deadlines: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    @property
    def heap_size(self) -> int:
        """Entries held, live and dead (bounded by twice the live ones plus ``_COMPACT_FLOOR``)."""
        return len(self._heap)

    def set(self, key: Hashable, at: float) -> None:
        self._deadlines[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))
        if len(self._heap) > _COMPACT_FLOOR and len(self._heap) > 2 * len(self._deadlines):
            self._compact()

    def cancel(self, key: Hashable) -> None:
        self._deadlines.pop(key, None)

    def _compact(self) -> None:
        """Keep only the live entries (one per key, at its current deadline)."""
        live = self._deadlines
        self._heap = [entry for entry in self._heap if live.get(entry[2]) == entry[0]]
        # A key re-armed at the same deadline twice has two live-looking entries: keep one.
        seen: set[Hashable] = set()
        unique = []
        for entry in self._heap:
            if entry[2] not in seen:
                seen.add(entry[2])
                unique.append(entry)
        heapq.heapify(unique)
        self._heap = unique

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
