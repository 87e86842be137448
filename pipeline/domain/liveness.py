"""Is a silent B2BUA node dead? The live drivers' watch, judged on wall time up to what has been read.

A node proves it is alive with node.heartbeat events. Their silence means something only while the
pipeline is reading the log as it is written: a pipeline that is behind (a backlog, a store outage
that held reading back, a rebalance) or whose loop stalled has simply not read the heartbeats yet. So:

* the driver reports, on every turn, the wall time its reading has reached (``progress(wall,
  read_through)``): everything written to the log before ``read_through`` has been read. A node that
  wrote nothing readable between the reading of its newest heartbeat and ``read_through`` has been
  silent at least that long, so silence is ``read_through`` minus the wall time that heartbeat was
  read. A pipeline some records behind (steady traffic always leaves a few unread for a moment) still
  measures silence, only later by that lag; one that cannot tell how far it has read (restoring,
  rebalancing, the broker not answering) reports ``None``, and the count restarts from the moment it
  can tell again, as it does after a gap between two ``progress`` calls longer than ``stall_ms`` (the
  loop was not running, so what it believes read may be stale);
* a node silent for ``node_timeout_ms`` of that time, with open calls, is a suspect: the driver probes
  it out of band (SIP OPTIONS to the address its heartbeats advertise);
* a node that answers is alive but disconnected from the log (``disconnected``): its calls are left
  alone, it is reported, and it is probed again after another timeout;
* a node that does not answer (or advertises no address, so nothing can be confirmed) gets a
  verdict: the driver writes a node.lost event into the log, and the fold closes the node's calls
  when it reads it (``rules.on_node_lost``), in every driver alike, replay included.

A heartbeat newer than the one a verdict was based on clears the node (it came back).

Pure: wall times are passed in by the driver; this module never reads a clock and does no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from .timeutil import format_ts

ALIVE: Final = "alive"
SUSPECT: Final = "suspect"  # a probe is under way
DISCONNECTED: Final = "disconnected"  # silent in the log, but answered a probe
LOST: Final = "lost"  # a verdict was issued


@dataclass(slots=True)
class NodeWatch:
    node: str
    heard_wall_ms: int  # wall time the newest heartbeat was read (or the node first seen)
    last_heartbeat_ms: int | None = None  # event time of the newest heartbeat read
    address: str | None = None  # where the node answers a probe ("host:port", from its heartbeats)
    state: str = ALIVE
    next_probe_wall_ms: int | None = None  # a disconnected node is probed again then
    verdict_heartbeat_ms: int | None = None  # the heartbeat a lost verdict was based on


@dataclass(frozen=True, slots=True)
class Probe:
    node: str
    address: str | None
    last_heartbeat_ms: int | None


@dataclass(frozen=True, slots=True)
class Verdict:
    node: str
    last_heartbeat_ms: int | None
    why: str


class LivenessWatch:
    __slots__ = ("_caught_up_since", "_last_progress", "_nodes", "_read_through", "node_timeout_ms",
                 "stall_ms")

    def __init__(self, node_timeout_ms: int, stall_ms: int = 2_000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.stall_ms = stall_ms
        self._nodes: dict[str, NodeWatch] = {}
        self._caught_up_since: int | None = None
        self._read_through: int | None = None
        self._last_progress: int | None = None

    # -- what the log says ----------------------------------------------------------------------------
    def heard(self, node: str, ts_ms: int, wall_ms: int, address: str | None = None) -> None:
        """A node.heartbeat of ``node`` (event time ``ts_ms``) was read at ``wall_ms``."""
        w = self._nodes.get(node)
        if w is None:
            self._nodes[node] = NodeWatch(node, wall_ms, ts_ms, address)
            return
        if address:
            w.address = address
        if w.last_heartbeat_ms is None or ts_ms > w.last_heartbeat_ms:
            w.last_heartbeat_ms = ts_ms
            w.heard_wall_ms = wall_ms
            # Newer than anything a probe or verdict was based on: the node is (back) alive.
            w.state = ALIVE
            w.next_probe_wall_ms = None

    def seen(self, node: str, wall_ms: int) -> None:
        """``node`` owns calls but no heartbeat of it was read yet: its silence counts from now."""
        if node not in self._nodes:
            self._nodes[node] = NodeWatch(node, wall_ms)

    def progress(self, wall_ms: int, read_through_ms: int | None) -> int:
        """Called by the driver on every turn of its loop: everything written before ``read_through_ms``
        has been read (None: the driver cannot tell). Returns how long the loop did not run when that
        was longer than ``stall_ms`` (silence is then counted afresh), else 0."""
        gap = 0 if self._last_progress is None else wall_ms - self._last_progress
        stalled = gap if gap > self.stall_ms else 0
        self._last_progress = wall_ms
        if read_through_ms is None:
            self._caught_up_since = None
            self._read_through = None
            return stalled
        if stalled or self._caught_up_since is None:
            self._caught_up_since = wall_ms
        self._read_through = min(read_through_ms, wall_ms)
        return stalled

    @property
    def caught_up_since(self) -> int | None:
        return self._caught_up_since

    # -- decisions -----------------------------------------------------------------------------------
    def due_probes(self, wall_ms: int, nodes_with_calls: Iterable[str]) -> list[Probe]:
        """Nodes with open calls silent for the timeout in what has been read; each is marked SUSPECT."""
        since, read_through = self._caught_up_since, self._read_through
        if since is None or read_through is None:
            return []
        out: list[Probe] = []
        for node in sorted(set(nodes_with_calls)):
            w = self._nodes.get(node)
            if w is None:
                self.seen(node, wall_ms)
                continue
            if w.state in (SUSPECT, LOST):
                continue
            if w.state == DISCONNECTED and (w.next_probe_wall_ms or 0) > wall_ms:
                continue
            if read_through - max(w.heard_wall_ms, since) > self.node_timeout_ms:
                w.state = SUSPECT
                out.append(Probe(node, w.address, w.last_heartbeat_ms))
        return out

    def probe_result(self, node: str, answered: bool, wall_ms: int, detail: str = "") -> Verdict | None:
        """What the out-of-band probe of a suspect found. A Verdict means: write node.lost."""
        w = self._nodes.get(node)
        if w is None or w.state != SUSPECT:
            return None  # it heart-beat meanwhile
        if answered:
            w.state = DISCONNECTED
            w.next_probe_wall_ms = wall_ms + self.node_timeout_ms
            return None
        w.state = LOST
        w.verdict_heartbeat_ms = w.last_heartbeat_ms
        return Verdict(node, w.last_heartbeat_ms, detail)

    def alive(self, wall_ms: int) -> list[str]:
        """Nodes whose heartbeats are being read now (heard within the timeout, while caught up): the
        ones a lost node's calls can be handed to."""
        if self._caught_up_since is None:
            return []
        return [n for n, w in sorted(self._nodes.items())
                if w.state == ALIVE and w.last_heartbeat_ms is not None
                and wall_ms - w.heard_wall_ms <= self.node_timeout_ms]

    # -- reporting -----------------------------------------------------------------------------------
    def state(self, node: str) -> str | None:
        w = self._nodes.get(node)
        return None if w is None else w.state

    def nodes(self) -> list[NodeWatch]:
        return [self._nodes[n] for n in sorted(self._nodes)]


_LOST_NS: Final = uuid.UUID("0b7f3a52-6c1e-5d9a-8f24-3e6b1c9d7a15")


def node_lost_event(verdict: Verdict, detected_ms: int, detected_by: str,
                    takeover_by: Iterable[str] = ()) -> dict[str, Any]:
    """The node.lost event of a verdict (schemas/events/node.lost.json).

    Its id is derived from the node and the heartbeat the verdict was based on, so two workers (or a
    retried write) reaching the same verdict write the same event, and readers see one verdict (two
    workers may name different live nodes: each partition follows the first verdict it reads).
    ``takeover_by``: the live nodes the lost node's calls may be handed to.
    """
    last = None if verdict.last_heartbeat_ms is None else format_ts(verdict.last_heartbeat_ms)
    takers = sorted(n for n in set(takeover_by) if n != verdict.node)
    event: dict[str, Any] = {
        "event_id": uuid.uuid5(_LOST_NS, f"{verdict.node}\x1f{last}").hex,
        "call_id": f"node:{verdict.node}",
        "seq": 1,
        "type": "node.lost",
        "ts": format_ts(detected_ms),
        "node": verdict.node,
        "schema_version": 2,
        "last_heartbeat": last,
        "detected_by": detected_by[:128],
        "probe": verdict.why[:512],
    }
    if takers:
        event["takeover_by"] = takers[:64]
    return event
