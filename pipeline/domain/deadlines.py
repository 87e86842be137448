"""DeadlineQueue: the next due call without scanning all calls.

A binary heap of ``(at_ms, call_id, version)`` with lazy deletion: rescheduling or cancelling only
updates ``_live`` (call_id -> (at_ms, version)); stale heap entries are skipped when they surface. Ties
on ``at_ms`` pop in call_id order, so the order is deterministic. The heap is compacted when stale
entries outnumber live ones, which bounds memory for calls that reschedule on every refresh.

Not persisted: after a worker restart, :meth:`DeadlineQueue.rebuild` recreates it from the call states.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from .call_state import CallState
from .effects import CancelDeadline, Effect, ScheduleDeadline
from .policy import Policy
from .rules import due_at

_COMPACT_MIN = 1024


class DeadlineQueue:
    __slots__ = ("_heap", "_live", "_version")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int]] = []
        self._live: dict[str, tuple[int, int]] = {}
        self._version = 0

    def schedule(self, call_id: str, at_ms: int) -> None:
        """Arm (or re-arm, replacing the previous time) the call's timer."""
        self._version += 1
        self._live[call_id] = (at_ms, self._version)
        heapq.heappush(self._heap, (at_ms, call_id, self._version))
        if len(self._heap) > _COMPACT_MIN and len(self._heap) > 2 * len(self._live):
            self._compact()

    def cancel(self, call_id: str) -> None:
        self._live.pop(call_id, None)

    def pop_due(self, now_ms: int) -> list[str]:
        """Remove and return the calls due at ``now_ms`` (at_ms <= now_ms), earliest first."""
        heap, live = self._heap, self._live
        out: list[str] = []
        while heap and heap[0][0] <= now_ms:
            _, call_id, version = heapq.heappop(heap)
            cur = live.get(call_id)
            if cur is not None and cur[1] == version:
                del live[call_id]
                out.append(call_id)
        return out

    def peek(self) -> int | None:
        """Due time of the earliest live entry (drops stale entries on the way), or None."""
        heap, live = self._heap, self._live
        while heap:
            at, call_id, version = heap[0]
            cur = live.get(call_id)
            if cur is not None and cur[1] == version:
                return at
            heapq.heappop(heap)
        return None

    def at(self, call_id: str) -> int | None:
        cur = self._live.get(call_id)
        return None if cur is None else cur[0]

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    def apply_effects(self, effects: Iterable[Effect]) -> None:
        """Carry out the Schedule/CancelDeadline effects in ``effects`` (others are ignored)."""
        for e in effects:
            if isinstance(e, ScheduleDeadline):
                self.schedule(e.call_id, e.at_ms)
            elif isinstance(e, CancelDeadline):
                self.cancel(e.call_id)

    def _compact(self) -> None:
        self._heap = [(at, cid, v) for cid, (at, v) in self._live.items()]
        heapq.heapify(self._heap)

    @classmethod
    def rebuild(cls, states: Mapping[str, CallState], policy: Policy) -> DeadlineQueue:
        """A queue with every call's current due time (``rules.due_at``), e.g. after a restart."""
        q = cls()
        for call_id in sorted(states):  # sorted: identical version numbering on every rebuild
            at = due_at(states[call_id], policy)
            if at is not None:
                q.schedule(call_id, at)
        return q
