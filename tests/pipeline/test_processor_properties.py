"""Property tests over the whole Processor: the log decides, not the way it was delivered.

A generated multi-node stream (calls ended by a party, cut by their node at a limit, cut late, left
running past their deadline, refreshed, unanswered; heartbeats every 5 s; one node that may die and
the node.lost verdict a live pipeline writes for it) is delivered in many ways:

* any interleaving of the nodes' streams (each node's own events keep their order, as Kafka keeps a
  producer's order within a partition and a journal keeps a writer's);
* with duplicates anywhere after their original, also after the call was closed and evicted into the
  closed-call memory (late redelivery after a broker hiccup);
* with one heartbeat dated 27 s or 120 s ahead;
* split into partitions as the faust worker sees it (calls by id, heartbeats and verdicts to every
  partition), each folded by its own Processor in batches with evictions between them;

and every delivery gives field for field the same CDRs, alerts and commands. Any permutation at all
(a call's own events reordered too) still gives the same CDRs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from domain_eventgen import T0, CallBuilder, heartbeat, node_lost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.domain.policy import Policy
from pipeline.processor import Processor

P = Policy(no_timer_max_duration=60, grace_period_s=5, node_timeout_s=30, max_event_lead_s=10)
NODES = ("n1", "n2", "n3")
KINDS = ("bye", "capped", "capped_late", "missed", "timer_bye", "refresh_failed", "busy", "cancel")
Stream = list[dict[str, Any]]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, Stream], str | None]:
    """Each node's own stream, in its order; and the node that died (or None)."""
    nodes = NODES[: draw(st.integers(2, 3))]
    dead = draw(st.sampled_from([None, *nodes]))
    death = draw(st.integers(20_000, 90_000))
    end = 200_000
    per_node: dict[str, Stream] = {n: [] for n in nodes}
    for i in range(draw(st.integers(1, 10))):
        node = draw(st.sampled_from(nodes))
        t0 = draw(st.integers(0, 60_000))
        b = CallBuilder(f"call-{i}", node).setup(t0).routed(t0 + 10)
        kind = draw(st.sampled_from(KINDS))
        ans = t0 + draw(st.integers(100, 5_000))
        if kind == "busy":
            b.terminated(ans, "busy", "callee", 486)
        elif kind == "cancel":
            b.progress(ans).terminated(ans + draw(st.integers(10, 9_000)), "caller_cancel", "caller", 487)
        elif kind in ("bye", "capped", "capped_late", "missed"):
            b.answered(ans, "no_timer")
            if kind == "bye":
                b.terminated(ans + draw(st.integers(1_000, 59_000)))
            elif kind == "capped":
                b.terminated(ans + 60_000, "no_timer_limit", "system")
            elif kind == "capped_late":
                b.terminated(ans + 60_000 + draw(st.integers(5_001, 20_000)), "no_timer_limit", "system")
        else:
            b.answered(ans, "session_timer", session_expires=90)
            b.refreshed(ans + 45_000, session_expires=90)
            if kind == "timer_bye":
                b.terminated(ans + draw(st.integers(46_000, 120_000)))
            else:
                b.refresh_failed(ans + 90_000).terminated(ans + 100_000, "session_refresh_failed", "system")
        stop = death if node == dead else end
        per_node[node] += [e for e in b.events if _ms(e) - T0 <= stop]
    for node in nodes:
        stop = death if node == dead else end
        per_node[node] += [heartbeat(node, at, seq=k + 1) for k, at in enumerate(range(0, stop + 1, 5_000))]
        per_node[node].sort(key=lambda e: (e["ts"], e["type"] == "node.heartbeat"))
    if dead is not None:
        last = max(at for at in range(0, death + 1, 5_000))
        per_node[dead].append(node_lost(dead, death + 30_000, last))
    return per_node, dead


def _ms(event: dict[str, Any]) -> int:
    from pipeline.domain.timeutil import parse_ts

    return parse_ts(event["ts"])


def in_time_order(per_node: dict[str, Stream]) -> Stream:
    # the verdict after everything its node wrote, as the live pipeline writes it
    return sorted((e for s in per_node.values() for e in s),
                  key=lambda e: (e["type"] == "node.lost", e["ts"], e["node"]))


def interleave(per_node: dict[str, Stream], picks: list[int]) -> Stream:
    queues = {n: list(s) for n, s in per_node.items()}
    out: Stream = []
    names = sorted(queues)
    for pick in picks:
        live = [n for n in names if queues[n]]
        if not live:
            break
        out.append(queues[live[pick % len(live)]].pop(0))
    for n in names:
        out += queues[n]
    return out


def with_late_duplicates(stream: Stream, dups: list[tuple[int, int]]) -> Stream:
    out = list(stream)
    for src, gap in dups:
        if not stream:
            break
        e = stream[src % len(stream)]
        at = out.index(e) + 1 + gap
        out.insert(min(at, len(out)), dict(e))
    return out


def outcome(proc_of: Callable[[], list[Processor]], deliveries: list[Stream],
            evict_every: int) -> dict[str, list[Any]]:
    cdrs, alerts, commands = [], [], []
    for proc, stream in zip(proc_of(), deliveries, strict=True):
        for k, e in enumerate(stream, 1):
            proc.feed(e)
            if evict_every and k % evict_every == 0:
                proc.evict_closed()
        out = proc.take()
        cdrs += out.cdrs
        alerts += out.alerts
        commands += out.commands
    return {"cdrs": sorted(cdrs, key=lambda c: c["call_id"]),
            "alerts": sorted(alerts, key=lambda a: a["alert_id"]),
            "commands": sorted(commands, key=lambda c: c["command_id"])}


def single(stream: Stream, evict_every: int = 0) -> dict[str, list[Any]]:
    return outcome(lambda: [Processor(P)], [stream], evict_every)


def partitioned(stream: Stream, partitions: int, evict_every: int) -> dict[str, list[Any]]:
    parts: list[Stream] = [[] for _ in range(partitions)]
    for e in stream:
        if e["type"] in ("node.heartbeat", "node.lost"):
            for p in parts:
                p.append(e)
        else:
            parts[zlib.crc32(e["call_id"].encode()) % partitions].append(e)
    return outcome(lambda: [Processor(P) for _ in parts], parts, evict_every)


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenario(), st.data())
def test_any_delivery_that_keeps_each_nodes_order_gives_the_same_outputs(
        sc: tuple[dict[str, Stream], str | None], data: st.DataObject) -> None:
    per_node, dead = sc
    ref_stream = in_time_order(per_node)
    ref = single(ref_stream)
    calls = {e["call_id"] for e in ref_stream if not e["call_id"].startswith("node:")}
    # every call that its node ended, or whose node was declared lost, has exactly one CDR
    ended = {e["call_id"] for e in ref_stream if e["type"] == "call.terminated"}
    assert ended <= {c["call_id"] for c in ref["cdrs"]} <= calls
    assert len(ref["cdrs"]) == len({c["call_id"] for c in ref["cdrs"]})
    if dead is None:
        assert all(c["end_reason"] != "orphaned" for c in ref["cdrs"])

    picks = data.draw(st.lists(st.integers(0, 5), max_size=len(ref_stream)))
    mixed = interleave(per_node, picks)
    dups = data.draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 400)), max_size=12))
    delivered = with_late_duplicates(mixed, dups)
    assert single(mixed) == ref
    assert single(delivered, evict_every=data.draw(st.sampled_from([0, 7, 50]))) == ref
    assert partitioned(delivered, data.draw(st.integers(2, 4)), data.draw(st.sampled_from([5, 40]))) == ref


@SETTINGS
@given(scenario(), st.data())
def test_a_heartbeat_dated_ahead_changes_nothing(sc: tuple[dict[str, Stream], str | None],
                                                 data: st.DataObject) -> None:
    per_node, _ = sc
    node = data.draw(st.sampled_from(sorted(per_node)))
    stream = per_node[node]
    beats = [e for e in stream if e["type"] == "node.heartbeat"]
    at_beat = data.draw(st.integers(0, len(beats) - 1))
    lead = data.draw(st.sampled_from([27_000, 120_000]))
    stray = heartbeat(node, _ms(beats[at_beat]) - _ms(beats[0]) + lead, seq=10_000)
    i = stream.index(beats[at_beat]) + 1
    with_stray = dict(per_node, **{node: [*stream[:i], stray, *stream[i:]]})
    ref = single(in_time_order(per_node))
    assert single(interleave(with_stray, [])) == ref
    assert partitioned(interleave(with_stray, [1, 0, 2] * 50), 3, 10) == ref


@SETTINGS
@given(scenario(), st.data())
def test_any_permutation_at_all_gives_the_same_cdrs(sc: tuple[dict[str, Stream], str | None],
                                                     data: st.DataObject) -> None:
    per_node, _ = sc
    events = [e for s in per_node.values() for e in s if e["type"] != "node.lost"]
    ref = single(sorted(events, key=lambda e: e["ts"]))["cdrs"]
    dups = data.draw(st.lists(st.sampled_from(events), max_size=10))
    shuffled = data.draw(st.permutations([*events, *[dict(d) for d in dups]]))
    assert single(shuffled)["cdrs"] == ref
