"""Per-node event time: how far the pipeline has read each B2BUA node's own stream.

A node stamps its events with its own clock and publishes them in that order (one ordered spool per
node; Kafka keeps a producer's order within a partition; a journal keeps a writer's order). So the
newest ts read from node X is a watermark: every event X published before it has been read. The
Processor feeds a node's heartbeats here once it has seen one (they are broadcast to every partition,
so every partition's clock of X is the same), and every event of a node that sends none. A deadline
of one of X's calls is judged against X's clock (``rules``), never against a wall clock that may have
run while the pipeline was not reading, and never against another node's clock: node-2's spool
flushing before node-1's cannot make node-1 look late.

Events dated ahead. An event more than ``max_lead_ms`` ahead of its node's clock does not move it on
its own: it is clamped (counted, reported) and kept as a candidate. A second event of the same node
that is also that far ahead confirms the jump (a node restarted after a pause, a clock stepped by
NTP) and the clock moves to the earlier of the two; an event within the lead clears the candidate (it
was one stray timestamp). So one event dated 27 s or 120 s ahead changes no verdict, for its own node
or any other. Late events (ts at or below the clock: redeliveries, reordering) never move it back.

Pure: times come from the events; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class NodeClock:
    clock_ms: int
    candidate_ms: int | None = None  # a far-ahead ts waiting for confirmation
    clamped: int = 0  # events clamped so far


class NodeClocks:
    __slots__ = ("_clocks", "max_lead_ms")

    def __init__(self, max_lead_ms: int) -> None:
        self.max_lead_ms = max_lead_ms
        self._clocks: dict[str, NodeClock] = {}

    def advance(self, node: str, ts_ms: int) -> int | None:
        """Feed one event of ``node``; returns the node's new clock if it moved, else None.

        Returns None (and counts a clamp) for an unconfirmed far-ahead event: see ``clamped_last``.
        """
        c = self._clocks.get(node)
        if c is None:
            self._clocks[node] = NodeClock(ts_ms)
            return ts_ms
        if ts_ms <= c.clock_ms:
            return None
        if ts_ms - c.clock_ms <= self.max_lead_ms:
            c.clock_ms = ts_ms
            c.candidate_ms = None
            return ts_ms
        if c.candidate_ms is not None:
            c.clock_ms = min(c.candidate_ms, ts_ms)
            c.candidate_ms = None
            return c.clock_ms
        c.candidate_ms = ts_ms
        c.clamped += 1
        return None

    def is_clamped(self, node: str, ts_ms: int) -> bool:
        """True when an event of ``node`` at ``ts_ms`` was just held back as a candidate."""
        c = self._clocks.get(node)
        return c is not None and c.candidate_ms == ts_ms

    def now(self, node: str) -> int | None:
        c = self._clocks.get(node)
        return None if c is None else c.clock_ms

    def nodes(self) -> list[str]:
        return sorted(self._clocks)

    def clamped(self, node: str) -> int:
        c = self._clocks.get(node)
        return 0 if c is None else c.clamped

    def log_time(self) -> int | None:
        """The newest node clock: how far the log as a whole has been read (for expiring memory)."""
        return max((c.clock_ms for c in self._clocks.values()), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {n: [c.clock_ms, c.candidate_ms, c.clamped] for n, c in self._clocks.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], max_lead_ms: int) -> NodeClocks:
        nc = cls(max_lead_ms)
        for node, v in d.items():
            if isinstance(v, list):
                nc._clocks[node] = NodeClock(int(v[0]), None if v[1] is None else int(v[1]), int(v[2]))
            else:  # a bare last-seen time (checkpoints and changelogs written before per-node clocks)
                nc._clocks[node] = NodeClock(int(v))
        return nc
