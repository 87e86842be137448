"""Which B2BUA nodes are alive, and which open calls each one owns.

A node proves it is alive with node.heartbeat events. When a node has been silent for longer than
``node_timeout`` its calls can no longer be hung up or reported by it: they are orphaned (see
``rules.on_node_lost``). Times are the heartbeat events' own ts (no clock), ``now_ms`` is passed in.

A node seen only through its calls (no heartbeat yet) counts as last seen at the first call event we
tracked, so a node that dies before its first heartbeat is still detected.
"""

from __future__ import annotations

from typing import Any

from . import phase
from .call_state import CallState
from .timeutil import parse_ts


class NodeLiveness:
    __slots__ = ("_calls", "_last_seen")

    def __init__(self) -> None:
        self._last_seen: dict[str, int] = {}
        self._calls: dict[str, set[str]] = {}

    def heartbeat(self, node: str, ts_ms: int) -> None:
        # max(): a delayed heartbeat must not make a node look older than it is.
        prev = self._last_seen.get(node)
        if prev is None or ts_ms > prev:
            self._last_seen[node] = ts_ms

    def observe(self, event: dict[str, Any]) -> None:
        """Feed a node.heartbeat event (other event types are ignored)."""
        if event["type"] == "node.heartbeat":
            self.heartbeat(event["node"], parse_ts(event["ts"]))

    def track(self, state: CallState) -> None:
        """Record whether ``state``'s call is open on its node; call after every apply/close."""
        node = state.node
        if not node:
            return
        if state.phase in phase.OPEN_PHASES:
            calls = self._calls.get(node)
            if calls is None:
                calls = self._calls[node] = set()
            calls.add(state.call_id)
            if node not in self._last_seen and state.last_event_ms is not None:
                self._last_seen[node] = state.last_event_ms
        else:
            calls = self._calls.get(node)
            if calls is not None:
                calls.discard(state.call_id)
                if not calls:
                    del self._calls[node]

    def calls_of(self, node: str) -> list[str]:
        """Open calls of ``node``, sorted (deterministic processing order)."""
        return sorted(self._calls.get(node, ()))

    def last_seen(self, node: str) -> int | None:
        return self._last_seen.get(node)

    def lost_nodes(self, now_ms: int, node_timeout_ms: int) -> list[str]:
        """Nodes silent for more than ``node_timeout_ms`` at ``now_ms``, sorted.

        A pure query: a lost node stays in the answer until it heart-beats again; once its calls are
        orphaned (and ``track``-ed as closed) ``calls_of`` is empty, so repeated ticks are cheap no-ops.
        """
        return sorted(n for n, seen in self._last_seen.items() if now_ms - seen > node_timeout_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"last_seen": dict(self._last_seen),
                "calls": {n: sorted(c) for n, c in self._calls.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeLiveness:
        nl = cls()
        nl._last_seen = {n: int(v) for n, v in d.get("last_seen", {}).items()}
        nl._calls = {n: set(c) for n, c in d.get("calls", {}).items()}
        return nl
