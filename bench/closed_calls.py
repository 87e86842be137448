"""Bytes per remembered closed call (target <= 100) and lookup cost, against the obvious peers.

The pipeline remembers every closed call for ``pipeline.closed_call_retention`` (24 h by default) so
that a late redelivered event of one changes nothing (pipeline/domain/closed_calls.py). At 100 calls/s
that is 8.6 million calls a day, so the form matters. Measured in the same run, with tracemalloc
(Python allocations, numpy's included):

* ``ClosedCalls``: 16-byte digests and close times in sorted numpy arrays;
* peer 1, a Python ``set`` of the call-id strings (the first thing one would write);
* peer 2, a ``dict`` of call id -> CallState (keeping the closed states themselves, which is what the
  pipeline did until it evicted them);
* and the whole path: a Processor folding N short calls, then ``evict_closed`` (per call, after the
  states are gone).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.domain import ClosedCalls, Policy
from pipeline.domain.state import CallState
from pipeline.domain.timeutil import format_ts
from pipeline.processor import Processor

T0 = 1_795_600_800_000


def measured(build: Callable[[], Any]) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return obj, after - before


def lookups(contains: Callable[[str], bool], hits: list[str], misses: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    assert all(contains(c) for c in hits)
    hit = (time.perf_counter() - t) / len(hits)
    t = time.perf_counter()
    assert not any(contains(c) for c in misses)
    miss = (time.perf_counter() - t) / len(misses)
    return hit * 1e9, miss * 1e9


def call_events(i: int) -> list[dict[str, Any]]:
    cid = f"{uuid.UUID(int=i)}"
    t = T0 + i * 10

    def ev(seq: int, etype: str, at: int, **body: Any) -> dict[str, Any]:
        return {"event_id": f"{cid}-{seq}", "call_id": cid, "seq": seq, "type": etype, "ts": format_ts(at),
                "node": "node-1", "schema_version": 1, **body}

    return [ev(1, "call.setup", t, caller="+15550001", callee="+4420", account="acme", source_ip="10.0.0.1",
               timer_supported=False, requested_session_expires=None, requested_min_se=None,
               requested_refresher=None),
            ev(2, "call.terminated", t + 3000, reason="busy", initiator="callee", sip_status=486)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--processor-calls", type=int, default=200_000)
    args = ap.parse_args()
    n = args.calls
    ids = [str(uuid.uuid4()) for _ in range(n)]
    misses = [str(uuid.uuid4()) for _ in range(100_000)]
    hits = ids[:: max(1, n // 100_000)]

    def build_closed() -> ClosedCalls:
        c = ClosedCalls(retention_ms=86_400_000)
        for i, cid in enumerate(ids):
            c.add(cid, T0 + i)
        c.expire(T0)  # merged into the arrays, nothing expired
        c.take_new()  # the driver persists and drops the new-records list
        return c

    closed, closed_bytes = measured(build_closed)
    # the strings themselves are the input, not the structure: a copy per entry is what a set keeps
    as_set, set_bytes = measured(lambda: {(cid + ".")[:-1] for cid in ids})
    _, states_bytes = measured(lambda: {cid: CallState((cid + ".")[:-1], phase="ended")
                                        for cid in ids[: n // 10]})
    per_state = states_bytes / (n // 10)
    c_hit, c_miss = lookups(closed.__contains__, hits, misses)
    s_hit, s_miss = lookups(as_set.__contains__, hits, misses)

    m = args.processor_calls
    proc = Processor(Policy())
    evs = [e for i in range(m) for e in call_events(i)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for e in evs:
        proc.feed(e, validated=True)
    proc.take()
    full = tracemalloc.get_traced_memory()[0] - base
    proc.evict_closed()
    proc.closed.take_new()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert proc.states == {} and len(proc.closed) == m

    print(f"closed calls remembered: {n:,}")
    print(f"  ClosedCalls             {closed_bytes / n:7.1f} bytes a call   lookup hit {c_hit:6.0f} ns, "
          f"miss {c_miss:6.0f} ns")
    print(f"  peer: set of call ids   {set_bytes / n:7.1f} bytes a call   lookup hit {s_hit:6.0f} ns, "
          f"miss {s_miss:6.0f} ns   ({set_bytes / closed_bytes:.1f}x the memory)")
    print(f"  peer: closed CallStates {per_state:7.1f} bytes a call   ({per_state * n / closed_bytes:.1f}x)")
    print(f"Processor, {m:,} calls folded: {full / m:,.0f} bytes a call with their closed states, "
          f"{kept / m:,.1f} after evict_closed (target <= 100: "
          f"{'met' if kept / m <= 100 and closed_bytes / n <= 100 else 'NOT met'})")


if __name__ == "__main__":
    main()
