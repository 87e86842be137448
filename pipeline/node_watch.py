"""The live drivers' node watch: heartbeats and wall time in, probes out, node.lost verdicts back.

Ties the pure ``LivenessWatch`` (when is a silent node a suspect, what does a probe mean) to the
probe I/O (``node_probe.probe`` on a small thread pool, so a 3 s probe never blocks reading the log)
and hands the resulting node.lost events to the driver, which writes them into the events log: the
verdict becomes a fact of the log, and the Processor closes the node's calls when it reads it back,
exactly as replay will. Used by the embedded runner and the faust worker alike; replay has no watch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.domain.liveness import DISCONNECTED, LivenessWatch, Probe, node_lost_event
from pipeline.domain.timeutil import parse_ts
from pipeline.node_probe import ProbeResult, probe

log = logging.getLogger("sipledger.pipeline.liveness")

Prober = Callable[[str, int, float], ProbeResult]


class NodeWatch:
    def __init__(self, node_timeout_s: float, detected_by: str, probe_attempts: int = 3,
                 probe_timeout: float = 1.0, stall_s: float = 2.0, prober: Prober = probe,
                 takeover: bool = True) -> None:
        self.watch = LivenessWatch(round(node_timeout_s * 1000), round(stall_s * 1000))
        self.detected_by = detected_by
        self.probe_attempts = probe_attempts
        self.probe_timeout = probe_timeout
        self.takeover = takeover
        self._prober = prober
        self._pool: ThreadPoolExecutor | None = None
        self._probes: dict[str, Future[ProbeResult]] = {}
        self.verdicts = 0
        self.stalls = 0

    def heard(self, event: dict[str, Any], wall_ms: int) -> None:
        """Feed every node.heartbeat read from the log."""
        self.watch.heard(event["node"], parse_ts(event["ts"]), wall_ms, event.get("address"))

    def step(self, wall_ms: int, read_through_ms: int | None,
             nodes_with_calls: Iterable[str]) -> list[dict[str, Any]]:
        """One turn of the driver's loop (``read_through_ms``: everything written before it has been read,
        None when the driver cannot tell). Returns node.lost events to write into the log now."""
        watch = self.watch
        stalled = watch.progress(wall_ms, read_through_ms)
        if stalled:
            # What this driver believes read may be stale after its loop did not run: silence is counted
            # afresh. Frequent stalls keep a dead node from being seen, so they are worth a line each.
            self.stalls += 1
            log.warning("node watch: the loop did not run for %.1f s; node silence counted afresh",
                        stalled / 1000)
        out: list[dict[str, Any]] = []
        for node, fut in list(self._probes.items()):
            if not fut.done():
                continue
            del self._probes[node]
            try:
                result = fut.result()
            except Exception as exc:  # a bug of the prober must not leave the node suspect forever
                result = ProbeResult(False, f"probe failed: {exc}")
            verdict = watch.probe_result(node, result.answered, wall_ms, result.detail)
            if verdict is not None:
                self.verdicts += 1
                log.error("node %s lost: silent for %.0f s while the pipeline was caught up, and %s; "
                          "its open calls are orphaned", node, watch.node_timeout_ms / 1000, result.detail)
                takers = watch.alive(wall_ms) if self.takeover else []
                out.append(node_lost_event(verdict, wall_ms, self.detected_by, takers))
            elif watch.state(node) == DISCONNECTED:
                log.warning("node %s: no heartbeat in the log for %.0f s, but %s: disconnected from the "
                            "log, not dead; its calls are left alone", node, watch.node_timeout_ms / 1000,
                            result.detail)
        for suspect in watch.due_probes(wall_ms, nodes_with_calls):
            self._start_probe(suspect)
        return out

    def _start_probe(self, suspect: Probe) -> None:
        if suspect.address is None:
            # Nothing to confirm with (a node that advertises no address, or another switch's events):
            # the log's silence alone decides, as it did before probes existed.
            fut: Future[ProbeResult] = Future()
            fut.set_result(ProbeResult(False, "not probed: the node advertises no address"))
            self._probes[suspect.node] = fut
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-probe")
        log.info("node %s silent; probing %s", suspect.node, suspect.address)
        self._probes[suspect.node] = self._pool.submit(self._prober, suspect.address, self.probe_attempts,
                                                       self.probe_timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
