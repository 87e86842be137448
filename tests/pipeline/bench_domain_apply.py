"""Hand-run micro-benchmark (not a test): events/s through ``apply``.

    python3 tests/pipeline/bench_domain_apply.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from domain_eventgen import CallBuilder  # noqa: E402

from pipeline.domain.fold import apply  # noqa: E402
from pipeline.domain.policy import Policy  # noqa: E402
from pipeline.domain.state import CallState  # noqa: E402


def make_events(n_calls: int) -> list[dict[str, Any]]:
    calls = []
    for i in range(n_calls):
        b = CallBuilder(f"call-{i}", f"b2b-{i % 4}", t0=1_795_600_800_000 + i * 37)
        b.setup().routed().progress().answered(2000, "session_timer" if i % 2 else "no_timer")
        for k in range(5):
            b.refreshed(2000 + (k + 1) * 60_000) if i % 2 else b.probe_ok(2000 + (k + 1) * 60_000)
        b.terminated(400_000)
        calls.append(b.events)
    # interleave the calls (as a topic partition would), keeping each call's order
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    cursors = [0] * n_calls
    live = list(range(n_calls))
    while live:
        j = rng.randrange(len(live))
        c = live[j]
        out.append(calls[c][cursors[c]])
        cursors[c] += 1
        if cursors[c] == len(calls[c]):
            live[j] = live[-1]
            live.pop()
    return out


def run(events: list[dict[str, Any]], policy: Policy) -> float:
    states: dict[str, CallState] = {}
    get = states.get
    t = time.perf_counter()
    for ev in events:
        st, _ = apply(get(ev["call_id"]), ev, policy)
        states[ev["call_id"]] = st
    return time.perf_counter() - t


def main() -> None:
    policy = Policy()
    events = make_events(10_000)  # 100,000 events
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)  # fully out of order: worst case for the hold buffer
    for label, evs in (("in order", events), ("shuffled", shuffled)):
        best = min(run(evs, policy) for _ in range(5))
        print(f"{label:9s}: {len(evs)} events in {best:.3f} s = {len(evs) / best:,.0f} events/s")


if __name__ == "__main__":
    main()
