"""DeadlineQueue: the next due call of each node without scanning all calls.

Deadlines are judged on their node's clock (``node_clocks``), so the queue keeps one lane per node:
a binary heap of ``(at_ms, call_id, version)`` each, with lazy deletion: rescheduling or cancelling
only updates ``_live`` (call_id -> (at_ms, version, node)); stale heap entries are skipped when they
surface. Ties on ``at_ms`` pop in call_id order, so the order is deterministic. The heaps are compacted
when stale entries outnumber live ones, which bounds memory for calls that reschedule on every refresh.

Not persisted: after a worker restart, :meth:`DeadlineQueue.rebuild` recreates it from the call states.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from .effects import CancelDeadline, Effect, ScheduleDeadline
from .policy import Policy
from .rules import deadline_node, due_at
from .state import CallState

_COMPACT_MIN = 1024


class DeadlineQueue:
    __slots__ = ("_entries", "_heaps", "_live", "_version")

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, str, int]]] = {}
        self._live: dict[str, tuple[int, int, str]] = {}
        self._version = 0
        self._entries = 0  # heap entries over all lanes, stale ones included

    def schedule(self, call_id: str, at_ms: int, node: str = "") -> None:
        """Arm (or re-arm, replacing the previous time) the call's timer, judged on ``node``'s clock."""
        self._version += 1
        self._live[call_id] = (at_ms, self._version, node)
        heap = self._heaps.get(node)
        if heap is None:
            heap = self._heaps[node] = []
        heapq.heappush(heap, (at_ms, call_id, self._version))
        self._entries += 1
        if self._entries > _COMPACT_MIN and self._entries > 2 * len(self._live):
            self._compact()

    def cancel(self, call_id: str) -> None:
        self._live.pop(call_id, None)

    def pop_due(self, now_ms: int, node: str = "") -> list[str]:
        """Remove and return ``node``'s calls due at ``now_ms`` (at_ms <= now_ms), earliest first."""
        heap = self._heaps.get(node)
        out: list[str] = []
        if not heap:
            return out
        live = self._live
        while heap and heap[0][0] <= now_ms:
            _, call_id, version = heapq.heappop(heap)
            self._entries -= 1
            cur = live.get(call_id)
            if cur is not None and cur[1] == version:
                del live[call_id]
                out.append(call_id)
        return out

    def peek(self, node: str = "") -> int | None:
        """Due time of ``node``'s earliest live entry (drops stale entries on the way), or None."""
        heap = self._heaps.get(node)
        live = self._live
        while heap:
            at, call_id, version = heap[0]
            cur = live.get(call_id)
            if cur is not None and cur[1] == version:
                return at
            heapq.heappop(heap)
            self._entries -= 1
        return None

    def nodes(self) -> list[str]:
        """Nodes with at least one live deadline, sorted."""
        return sorted({node for _, _, node in self._live.values()})

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
                self.schedule(e.call_id, e.at_ms, e.node)
            elif isinstance(e, CancelDeadline):
                self.cancel(e.call_id)

    def _compact(self) -> None:
        heaps: dict[str, list[tuple[int, str, int]]] = {}
        for cid, (at, v, node) in self._live.items():
            heaps.setdefault(node, []).append((at, cid, v))
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps
        self._entries = len(self._live)

    @classmethod
    def rebuild(cls, states: Mapping[str, CallState], policy: Policy) -> DeadlineQueue:
        """A queue with every call's current due time (``rules.due_at``), e.g. after a restart."""
        q = cls()
        for call_id in sorted(states):  # sorted: identical version numbering on every rebuild
            st = states[call_id]
            at = due_at(st, policy)
            if at is not None:
                q.schedule(call_id, at, deadline_node(st))
        return q
