"""No orphan survives (issue 13): node-2 is killed with 200 calls up; node-1 ends them on both legs.

Production shape (tests/drills/harness.py: two B2BUA nodes, two faust workers, private Kafka and
ClickHouse 18.16). SIPp callers call through node-2 and wait for the far end's BYE; the SIPp carrier
answers and waits for a BYE too. node-2 is SIGKILLed with all 200 calls up. The workers see its
heartbeats stop while they are caught up, probe it (no answer), write node.lost, and hand each call to
node-1 (call.takeover), which sends BYE on both legs as node-2's dialog. Counted in both SIPp traces:
every call gets exactly one BYE transaction on its caller leg and on its carrier leg, within
node_timeout + 5 s of the kill; every call has one CDR (orphaned, closed by node-1's report, exposure
to the BYE and closed); a node-2 restarted afterwards sends nothing for them; and the runaway-cost
report shows the exposure. The time from the kill to both BYEs is printed (p50/p99).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sip_harness.sipp import parse_message_trace

from drills.harness import CallKind, Drill, DrillStack, percentile
from sipledger.cli import main
from sipledger.store import StoreError

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.sipp, pytest.mark.slow]

CALLS = 200
NODE_TIMEOUT = 5
DOOMED = CallKind("doomed", "7", "uac_wait_remote_bye", "uas_answer_wait_bye", "orphaned", 50.0, 1)


def _bye_times(messages: list, direction: str = "received") -> dict[str, list[float]]:
    """Call-ID -> times of the BYE transactions (retransmissions left out) seen in a SIPp trace."""
    out: dict[str, list[float]] = defaultdict(list)
    for m in messages:
        if m.direction == direction and m.is_request and m.method == "BYE" and not m.retransmission:
            out[m.call_id or ""].append(m.timestamp.replace(tzinfo=UTC).timestamp() if m.timestamp else 0.0)
    return out


def test_a_killed_nodes_200_calls_are_ended_on_both_legs_by_the_survivor(tmp_path: Path) -> None:
    stack = DrillStack("takeover").start()
    try:
        extra = f"[pipeline]\nnode_timeout = {NODE_TIMEOUT}\nprobe_timeout = 0.5\n"
        with Drill(stack, tmp_path / "drill", mix=[DOOMED], extra_config=extra) as drill:
            drill.start()
            drill.start_traffic(CALLS / DOOMED.rate)
            # all calls up: their call.answered stored by the workers
            deadline = time.monotonic() + 60
            answered = 0
            while time.monotonic() < deadline:
                try:
                    rows = drill.store.query("SELECT count() AS n FROM call_events "
                                             "WHERE type = 'call.answered'")
                    answered = int(rows[0]["n"])
                except StoreError:  # the workers' store writers have not created the tables yet
                    answered = 0
                if answered >= CALLS:
                    break
                time.sleep(0.5)
            assert answered == CALLS, f"{answered} of {CALLS} calls answered"
            killed_at = drill.nodes[1].kill()  # kill -9 node-2, every call up

            results = drill.wait_traffic(timeout=NODE_TIMEOUT + 90)
            res = results["doomed"]
            carrier = next(iter(drill.carriers.values()))
            carrier_msgs = parse_message_trace(carrier.message_file.read_text(encoding="ISO-8859-1"))
            to_callers = _bye_times(res.messages)
            to_carrier = _bye_times(carrier_msgs)
            invites = {m.call_id for m in res.requests("INVITE", "sent")}
            carrier_calls = {m.call_id for m in carrier_msgs if m.is_request and m.method == "INVITE"}
            assert len(invites) == CALLS and len(carrier_calls) == CALLS
            assert set(to_callers) == invites, f"{len(invites - set(to_callers))} callers got no BYE"
            assert set(to_carrier) == carrier_calls, f"{len(carrier_calls - set(to_carrier))} carrier legs"
            twice = [c for c, ts in [*to_callers.items(), *to_carrier.items()] if len(ts) > 1]
            assert twice == [], f"BYE sent twice on {len(twice)} legs"
            delays = [ts[0] - killed_at for ts in [*to_callers.values(), *to_carrier.values()]]
            both = [max(a[0], b[0]) - killed_at for a, b in zip(sorted(to_callers.values()),
                                                                sorted(to_carrier.values()), strict=True)]
            print(f"\nkill -> BYE on each leg: p50 {percentile(delays, 50):.2f} s, p99 "
                  f"{percentile(delays, 99):.2f} s, max {max(delays):.2f} s; both legs p99 "
                  f"{percentile(both, 99):.2f} s (target node_timeout + 5 = {NODE_TIMEOUT + 5} s)")
            assert max(delays) <= NODE_TIMEOUT + 5, max(delays)
            assert res.ok, res.describe()

            drill.wait_cdrs(CALLS, timeout=60)
            rec = drill.reconcile(results)
            assert rec.problems() == [], "\n".join(rec.problems())
            cdrs = {r["call_id"]: r for r in drill.store.query(
                "SELECT call_id, closed_by, exposure_ms, exposure_open, answer_ms FROM cdrs FINAL "
                "WHERE startsWith(callee, '15557')")}
            assert len(cdrs) == CALLS
            takeovers = [json.loads(r["payload"]) for r in drill.store.query(
                "SELECT payload FROM call_events WHERE type = 'call.terminated' AND node = 'n1'")]
            assert len(takeovers) == CALLS and all(t["takeover"]["dead_node"] == "n2" for t in takeovers)
            legs = {t["call_id"]: t["takeover"]["legs"] for t in takeovers}
            outcomes = Counter((v["caller"]["outcome"], v["carrier"]["outcome"]) for v in legs.values())
            print(f"BYE outcomes (caller, carrier): {dict(outcomes)}")
            for t in takeovers:
                cdr = cdrs[t["call_id"]]
                sent = datetime.fromisoformat(t["takeover"]["sent"]).timestamp() * 1000
                # the exposure ran from the last proof (the answer: no refreshes) to the BYEs
                assert cdr["closed_by"] == "node" and abs(cdr["exposure_ms"] - (sent - cdr["answer_ms"])) <= 1
                # open exactly when the carrier leg's BYE went unanswered: SIPp answers a BYE at the
                # address its call came from (the dead node), so node-1 may not hear it
                assert bool(cdr["exposure_open"]) == (legs[t["call_id"]]["carrier"]["outcome"] == "timeout")

            # node-2 restarted: a new process with no calls; nothing more reaches any leg
            drill.nodes[1].start()
            drill.nodes[1].wait_for(r"^b2bua: listening", timeout=30)
            time.sleep(5)
            carrier_after = parse_message_trace(carrier.message_file.read_text(encoding="ISO-8859-1"))
            assert _bye_times(carrier_after) == to_carrier

            report = CliRunner().invoke(main, ["report", "runaway-cost", "--config", str(drill.config),
                                               "--format", "json"])
            assert report.exit_code == 0, report.output
            acme = next(r for r in json.loads(report.output)["rows"] if r["account"] == "acme")
            print(f"runaway-cost for acme: {acme}")
            assert float(acme["exposure_minutes"]) > 0
    finally:
        stack.stop()
