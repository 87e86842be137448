"""Time from a B2BUA node's death to the BYE on both legs of each of its calls (issue 13), p50/p99.

Runs the production shape of tests/drills/harness.py (two nodes, two faust workers, private Kafka and
ClickHouse 18.16): ``--calls`` SIPp calls up on node-2, ``kill -9`` node-2, then reads both SIPp traces
for the BYE node-1 sent on every caller leg and carrier leg. The floor is the configured node timeout
plus the probe (``--node-timeout`` + 3 x ``--probe-timeout``); the figure says what the rest costs.
No peer exists to compare with (VOS3000 and Sippy have no takeover; Kamailio's needs DMQ set up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from drills.harness import CallKind, Drill, DrillStack, percentile  # noqa: E402
from sip_harness.sipp import parse_message_trace  # noqa: E402


def _first_bye(messages: list) -> dict[str, float]:
    out: dict[str, float] = {}
    seen: dict[str, int] = defaultdict(int)
    for m in messages:
        if m.direction == "received" and m.is_request and m.method == "BYE" and not m.retransmission:
            seen[m.call_id or ""] += 1
            out.setdefault(m.call_id or "", m.timestamp.replace(tzinfo=UTC).timestamp())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--node-timeout", type=float, default=5.0)
    ap.add_argument("--probe-timeout", type=float, default=0.5)
    args = ap.parse_args()
    kind = CallKind("doomed", "7", "uac_wait_remote_bye", "uas_answer_wait_bye", "orphaned", 50.0, 1)
    stack = DrillStack("bench-takeover").start()
    try:
        with tempfile.TemporaryDirectory() as tmp, Drill(
                stack, Path(tmp), mix=[kind],
                extra_config=f"[pipeline]\nnode_timeout = {args.node_timeout}\n"
                             f"probe_timeout = {args.probe_timeout}\n") as drill:
            drill.start()
            drill.start_traffic(args.calls / kind.rate)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    n = int(drill.store.query("SELECT count() AS n FROM call_events "
                                              "WHERE type = 'call.answered'")[0]["n"])
                except Exception:
                    n = 0
                if n >= args.calls:
                    break
                time.sleep(0.5)
            killed = drill.nodes[1].kill()
            results = drill.wait_traffic(timeout=args.node_timeout + 120)
            callers = _first_bye(results["doomed"].messages)
            carrier = next(iter(drill.carriers.values()))
            carriers = _first_bye(parse_message_trace(carrier.message_file.read_text(encoding="ISO-8859-1")))
            legs = [t - killed for t in [*callers.values(), *carriers.values()]]
            both = [max(a, b) - killed for a, b in zip(sorted(callers.values()), sorted(carriers.values()),
                                                       strict=False)]
    finally:
        stack.stop()
    # Silence is counted from the last heartbeat read, up to one interval (1 s) before the death.
    floor = args.node_timeout + 3 * args.probe_timeout
    target = args.node_timeout + 5
    p99 = percentile(both, 99)
    print(f"calls: {args.calls}; BYEs seen: {len(callers)} caller legs, {len(carriers)} carrier legs")
    print(f"node death -> BYE on one leg: p50 {percentile(legs, 50):.2f} s, p99 {percentile(legs, 99):.2f} s")
    print(f"node death -> BYE on both legs: p50 {percentile(both, 50):.2f} s, p99 {p99:.2f} s (node timeout "
          f"+ probe = {floor:.1f} s, less up to a heartbeat interval; target {target:.1f} s: "
          f"{'met' if p99 <= target else 'NOT met'})")


if __name__ == "__main__":
    main()
