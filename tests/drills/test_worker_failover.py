"""Pipeline workers fail over in seconds and never lose a call's state (issue 17), drilled as an operator
would: two `sipledger pipeline` workers in one group, two B2BUA nodes, SIPp traffic of about 8 calls/s
with 20 s calls among them, a private Kafka and ClickHouse (tests/drills/harness.py).

Judged against SIPp's own numbers: every call it placed has exactly one CDR, with its kind's end reason,
and no ``unknown_call`` alert names a call whose setup is stored. Timed targets are printed; the
assertions on time are generous bounds only.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from drills.harness import APP_ID, DEFAULT_MIX, Drill, DrillStack, log_lines, percentile
from sipledger.eventlog.spool import DiskSpool
from sipledger.pipeline_status import collect

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.sipp]

KILLS = 10
TRAFFIC_S = 110
# A generous bound on kill-to-served (target: p99 under 10 s); what this asserts is that partitions
# are served again at all, without an operator, where faust's own recovery left them idle for minutes.
SERVED_BOUND_S = 30.0
# What a partition caught up with the log may still have to commit: heartbeats of the last seconds.
MAX_HEARTBEAT_LAG = 10


@pytest.mark.timeout(600)
def test_ten_worker_kills_during_traffic_lose_no_call(tmp_path: Path) -> None:
    seed = int(os.environ.get("DRILL_SEED", "17"))
    rng = random.Random(seed)
    stack = DrillStack("drill-kill").start()
    try:
        with Drill(stack, tmp_path) as drill:
            drill.start()
            t_traffic = time.monotonic()
            drill.start_traffic(TRAFFIC_S)
            time.sleep(8)  # calls in every state, 20 s ones among them
            # Eight kills of one worker (random victim) and two of both in turn, each restarted after a
            # random delay; the next fault only once the group settled again.
            plan = ["one"] * KILLS
            plan[3] = plan[7] = "both"
            single: list[float] = []
            both: list[float] = []
            for i, what in enumerate(plan):
                if what == "one":
                    victim = rng.choice(drill.workers)
                    rec = drill.kill_worker(victim)
                    time.sleep(rng.uniform(1.0, 5.0))
                    drill.restart_worker(victim, rec)
                    recs = [rec]
                else:
                    first, second = rng.sample(drill.workers, 2)
                    recs = [drill.kill_worker(first)]
                    time.sleep(rng.uniform(0.5, 2.0))
                    recs.append(drill.kill_worker(second))
                    time.sleep(rng.uniform(1.0, 4.0))
                    for w, r in zip((first, second), recs, strict=True):
                        drill.restart_worker(w, r)
                drill.wait_stable(after=max(r.restarted_at or 0 for r in recs), timeout=90)
                for r in recs:
                    served = drill.served_after(r)
                    assert served is not None, f"kill {i + 1}: partitions {r.partitions} never served again"
                    (single if what == "one" else both).append(served)
                    print(f"kill {i + 1} ({what}) of {r.victim} at +{r.at - drill.kills[0].at:.1f} s, held "
                          f"{sorted(r.partitions)}: served again after {served:.2f} s "
                          f"(restarted after {(r.restarted_at or r.at) - r.at:.1f} s)")
                time.sleep(rng.uniform(1.0, 3.0))
            kills_s = time.monotonic() - t_traffic
            results = drill.wait_traffic()
            placed = sum(len({m.first_line for m in r.requests("INVITE", "sent")}) for r in results.values())
            drill.wait_cdrs(placed, timeout=120)
            rec = drill.reconcile(results)
            restores = drill.restores()
            # No stuck restore: every partition caught up, by a live worker, with nothing but the nodes'
            # latest heartbeats (one a second each, broadcast to every partition) left to commit.
            settle_by = time.monotonic() + 30
            status = collect(stack.bootstrap, "call-events", APP_ID)
            while not _settled(status) and time.monotonic() < settle_by:
                time.sleep(1)
                status = collect(stack.bootstrap, "call-events", APP_ID)
            print(f"\ndrill (seed {seed}): {KILLS} kills in {kills_s:.0f} s of traffic; {rec.summary()}")
            print(f"kill-to-served, one worker killed ({len(single)}): p50 {percentile(single, 50):.2f} s, "
                  f"p99 {percentile(single, 99):.2f} s, max {max(single):.2f} s (target p99 < 10 s)")
            print(f"both killed in turn ({len(both)}; includes the restart delay): "
                  f"max {max(both):.2f} s")
            print(f"restores: {len(restores)}, largest {max(n for n, _ in restores)} records, "
                  f"longest {max(s for _, s in restores):.2f} s; total lag at the end {status['total_lag']} "
                  "(the nodes' latest heartbeats)")

            assert not rec.problems(), "\n".join(rec.problems())
            assert rec.placed == rec.cdrs > 0
            assert not drill.worker_problems(), drill.worker_problems()
            assert _settled(status), status["partitions"]
            assert all(s <= SERVED_BOUND_S for s in single), single
            orphans = [r.orphans() for r in drill.kills if r.orphans()]
            assert not orphans, f"store writers outlived their worker: {orphans}"
            for svc in [*drill.workers, *drill.nodes]:
                assert "\x1b[" not in svc.text(), f"escape codes in {svc.log}"
            for node in drill.nodes:  # kafka-python's INFO chatter at start (about 60 lines) held back
                assert not re.search(r"^\S+ INFO kafka", node.text(), re.M), node.text()[:3000]
            for w in drill.workers:  # --log-level info: one line per assignment and per revocation
                assert "revoked partitions [" in w.text() and "assigned partitions [" in w.text()
            assert all(node.alive() for node in drill.nodes)
    finally:
        stack.stop()


def _settled(status: dict[str, Any]) -> bool:
    return all(p["state"] == "caught_up" and p["worker"] and p["lag"] <= MAX_HEARTBEAT_LAG
               for p in status["partitions"])


def test_sigterm_with_the_broker_down_stops_workers_and_nodes_and_loses_nothing(tmp_path: Path) -> None:
    """Traffic, then the broker SIGKILLed mid-traffic (the nodes spool, the workers' deliveries hang);
    SIGTERM to both workers and both nodes while it is down; all exit within seconds. After the broker and
    everything else are restarted, every call SIPp placed has its one CDR."""
    stack = DrillStack("drill-term").start()
    try:
        mix = [k for k in DEFAULT_MIX if k.name != "long"]
        with Drill(stack, tmp_path, mix=mix) as drill:
            drill.start()
            drill.start_traffic(12)
            time.sleep(6)
            t_down = time.time()
            stack.kill_kafka()
            results = drill.wait_traffic()  # SIP does not need the broker: every call completes
            time.sleep(2)
            t_term = time.time()
            exits = {svc.name: svc.terminate(timeout=30) for svc in [*drill.workers, *drill.nodes]}
            print("\nexit after SIGTERM with the broker down: "
                  + ", ".join(f"{name} {secs:.2f} s" for name, secs in exits.items()) + " (target 5 s)")
            # The outage is logged once and then summarised (about 70 ERROR lines a second per worker
            # were seen before): count what each process logged while the broker was down.
            outage = {svc.name: sum(1 for ln in log_lines(svc.text()) if t_down <= ln.at < t_term)
                      for svc in [*drill.workers, *drill.nodes]}
            print(f"lines logged during the {t_term - t_down:.0f} s outage: {outage}")
            spooled = sum(DiskSpool(tmp_path / f"spool-{n.name}").pending() for n in drill.nodes)
            print(f"events left spooled by the stopped nodes: {spooled}")
            assert spooled, "the nodes spooled nothing while the broker was down"
            stack.start_kafka()
            for svc in [*drill.nodes, *drill.workers]:
                svc.start()
            placed = sum(len({m.first_line for m in r.requests("INVITE", "sent")}) for r in results.values())
            drill.wait_cdrs(placed, timeout=120)
            rec = drill.reconcile(results)
            print(rec.summary())
            assert not rec.problems(), "\n".join(rec.problems())
            assert rec.placed == rec.cdrs > 0
            assert all(secs <= 10.0 for secs in exits.values()), exits
            # Generous: a handful of distinct warnings each, not a flood.
            assert all(n <= 40 for n in outage.values()), outage
            for w in drill.workers:
                assert "SIGTERM: stopping" in w.text()
    finally:
        stack.stop()
