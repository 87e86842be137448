"""A takeover never hangs up a live call (issue 13): a node cut off from the broker, a pipeline behind.

Production shape (tests/drills/harness.py), node timeout 5 s so that both faults last longer than it:

* node-2 reaches the broker only through a proxy (the broker's second listener advertises it); the proxy
  is cut for 17 s while node-2 carries 30 s calls. node-2 is alive: it spools, and it answers SIP. The
  workers see its heartbeats stop while they are caught up, probe it, find it answering, log it as
  disconnected from the log, and write no verdict;
* then both workers are SIGKILLed and restarted 15 s later: they restore, read the backlog and decide
  nothing from the silence they did not read.

Afterwards: every call has exactly one CDR with its true end reason (the callers hung up), no node.lost,
no command, no alert.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drills.harness import CallKind, Drill, DrillStack
from drills.tcp_proxy import CuttableProxy
from sipledger.topic_reader import read_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.sipp, pytest.mark.slow]

MIX = (
    CallKind("long_n2", "2", "uac_basic_bye", "uas_answer_wait_bye", "normal_caller_bye", 1.0, 1,
             hold_ms=30_000),
    CallKind("short_n1", "1", "uac_basic_bye", "uas_answer_wait_bye", "normal_caller_bye", 2.0, 0,
             hold_ms=2_000),
)


def test_a_node_cut_off_from_the_broker_and_a_pipeline_behind_hang_up_nothing(tmp_path: Path) -> None:
    proxy = CuttableProxy.for_new_listener().start()
    stack = DrillStack("live-calls", extra_listener=(proxy.target_port, proxy.listen_port)).start()
    via_proxy = f"127.0.0.1:{proxy.listen_port}"
    try:
        with Drill(stack, tmp_path / "drill", mix=MIX,
                   extra_config="[pipeline]\nnode_timeout = 5\nprobe_timeout = 0.5\n",
                   node_overrides={1: ["--set", f'events.log="kafka://{via_proxy}"',
                                       "--set", f'kafka.bootstrap="{via_proxy}"']}) as drill:
            drill.start()
            t0 = time.monotonic()
            drill.start_traffic(40)

            def at(second: float) -> None:
                time.sleep(max(0.0, t0 + second - time.monotonic()))

            def probed() -> bool:
                return any("n2: no heartbeat in the log" in t and "disconnected from the log" in t
                           for t in (w.text() for w in drill.workers))

            at(8)
            proxy.cut()  # node-2 alive, its way to the broker gone
            at(25)
            # The cut lasts until a worker has suspected node-2 and found it answering (on a loaded machine
            # a worker may take longer to be caught up); a bound keeps a broken probe from hanging the drill.
            deadline = time.monotonic() + 30
            while not probed() and time.monotonic() < deadline:
                time.sleep(0.5)
            proxy.mend()
            t0 = time.monotonic() - 25  # the rest of the schedule counts from the mend
            at(30)
            for w in drill.workers:
                drill.kill_worker(w)
            at(45)
            for w in drill.workers:
                drill.restart_worker(w)

            results = drill.wait_traffic(timeout=150)
            placed = sum(len(r.requests("INVITE", "sent")) for r in results.values())
            drill.wait_cdrs(placed, timeout=180)
            time.sleep(3)
            rec = drill.reconcile(results)
            print(f"\nlive-calls drill: {rec.summary()}")
            assert rec.problems() == [], "\n".join(rec.problems())
            assert not rec.alerts, dict(rec.alerts)
            assert [r.value for r in read_to_end(stack.bootstrap, "call-commands")] == []
            verdicts = [json.loads(r.value) for r in read_to_end(stack.bootstrap, "call-events")
                        if b'"node.lost"' in r.value]
            assert verdicts == [], verdicts[:2]
            # The cut was real: node-2's own events waited in its spool (a proxy that let a reconnect
            # through would make this drill test nothing), and were delivered after the mend.
            assert "events stay spooled on disk" in drill.nodes[1].text(), "node-2 was never cut off"
            # node-2 was suspected while cut off, and answered the probe
            assert probed(), "node-2's silence was never probed:\n" + "\n".join(
                line for w in drill.workers for line in w.text().splitlines()
                if "liveness" in line or "node watch" in line or "caught up" in line)
    finally:
        proxy.stop()
        stack.stop()
