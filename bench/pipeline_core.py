"""Events/s through the pure core (`apply`) and through the shared Processor (target >= 300,000/s).

Peer in the same run: the same events through a plain `json.loads` + dict update loop, the floor of
what any Python consumer pays per event, so the ratio says how much the domain logic itself costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from pipeline.domain import Policy, apply
from pipeline.processor import Processor
from pipeline.synthetic import SyntheticSpec, generate


def best_of(runs: int, fn) -> float:
    return min(fn() for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    events = [e for e in generate(SyntheticSpec(calls=args.calls, seed=1)) if e["type"] != "node.heartbeat"]
    raw = [json.dumps(e).encode() for e in events]
    policy = Policy(no_timer_max_duration=60)
    n = len(events)
    # The input is the bench's, not the pipeline's working set: keep the collector from rescanning its
    # million objects on every full collection (a running pipeline holds only the events in flight).
    gc.collect()
    gc.freeze()

    def run_apply() -> float:
        states: dict = {}
        evs = [dict(e) for e in events]
        gc.freeze()  # the copies are input too
        t = time.perf_counter()
        for e in evs:
            st, _ = apply(states.get(e["call_id"]), e, policy)
            states[e["call_id"]] = st
        return time.perf_counter() - t

    def run_processor_validated() -> float:
        p = Processor(policy)
        t = time.perf_counter()
        for r in raw:
            p.feed_raw(r)  # deadlines are judged on the nodes' clocks as each event is folded
            p.take()
        return time.perf_counter() - t

    def run_floor() -> float:
        seen: dict = {}
        t = time.perf_counter()
        for r in raw:
            e = json.loads(r)
            seen[e["call_id"]] = e
        return time.perf_counter() - t

    a = best_of(args.runs, run_apply)
    p = best_of(args.runs, run_processor_validated)
    f = best_of(args.runs, run_floor)
    print(f"events: {n:,} ({args.calls:,} calls)")
    print(
        f"apply (pure core, parsed events):            {n / a:>10,.0f} events/s  target 300,000 "
        f"({n / a / 300_000:.2f}x)"
    )
    print(f"Processor (json + schema check + apply +     {n / p:>10,.0f} events/s")
    print("  deadlines + ticks + rated CDRs/alerts)")
    print(
        f"peer: json.loads + dict store only           {n / f:>10,.0f} events/s  "
        f"(apply costs {f / a:.2f}x of it; Processor {f / p:.2f}x)"
    )


if __name__ == "__main__":
    main()
