"""Which open calls each B2BUA node owns: the calls a node.lost verdict for that node closes.

Derived state (rebuilt from the call states after a restart, never persisted on its own). The driver
calls ``track`` after every event or verdict that touched a call.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import phase
from .state import CallState


class NodeCalls:
    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[str, set[str]] = {}

    def track(self, state: CallState) -> None:
        """Record whether ``state``'s call is open on its node."""
        node = state.node
        if not node:
            return
        if state.phase in phase.OPEN_PHASES:
            calls = self._calls.get(node)
            if calls is None:
                calls = self._calls[node] = set()
            calls.add(state.call_id)
        else:
            calls = self._calls.get(node)
            if calls is not None:
                calls.discard(state.call_id)
                if not calls:
                    del self._calls[node]

    def calls_of(self, node: str) -> list[str]:
        """Open calls of ``node``, sorted (deterministic processing order)."""
        return sorted(self._calls.get(node, ()))

    def nodes(self) -> list[str]:
        """Nodes with open calls, sorted."""
        return sorted(self._calls)

    def count(self, node: str) -> int:
        return len(self._calls.get(node, ()))

    @classmethod
    def of(cls, states: Iterable[CallState]) -> NodeCalls:
        nc = cls()
        for st in states:
            nc.track(st)
        return nc
