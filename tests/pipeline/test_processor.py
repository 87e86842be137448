"""The Processor on the bad day: per-node clocks, clamped timestamps, verdicts from the log, late events."""

from __future__ import annotations

from typing import Any

from domain_eventgen import CallBuilder, heartbeat, node_lost, taken_over

from pipeline.domain.policy import Policy
from pipeline.processor import Outputs, Processor
from schemas.validation import validate_alert, validate_cdr, validate_command

P = Policy(no_timer_max_duration=60, grace_period_s=5, node_timeout_s=30, max_event_lead_s=10)


def run(events: list[dict[str, Any]], proc: Processor | None = None) -> tuple[Processor, Outputs]:
    proc = proc or Processor(P)
    out = Outputs()
    for e in events:
        proc.feed(e)
        o = proc.take()
        out.cdrs += o.cdrs
        out.alerts += o.alerts
        out.commands += o.commands
        out.notices += o.notices
        assert not o.dead_letters, o.dead_letters
    for m in out.cdrs:
        validate_cdr(m)
    for m in out.alerts:
        validate_alert(m)
    for m in out.commands:
        validate_command(m)
    return proc, out


def beats(node: str, start: int, stop: int, every: int = 5_000, seq0: int = 1) -> list[dict[str, Any]]:
    return [heartbeat(node, at, seq=seq0 + i) for i, at in enumerate(range(start, stop + 1, every))]


def by_ts(*streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((e for s in streams for e in s), key=lambda e: e["ts"])


def test_a_deadline_is_judged_on_its_own_nodes_clock() -> None:
    call = CallBuilder("c1", "node-1").setup().answered(2_000, "no_timer").events
    # node-2's events run far ahead (its spool flushed first after a broker outage): nothing for c1
    proc, out = run(by_ts(call, beats("node-1", 0, 40_000)) + beats("node-2", 0, 300_000))
    assert out.commands == [] and out.alerts == []
    # node-1's own stream passes answer + 60 s + 5 s grace without a call.terminated: now it is late
    _, out = run(beats("node-1", 45_000, 70_000, seq0=10), proc)
    (cmd,) = out.commands
    assert cmd["call_id"] == "c1" and cmd["node"] == "node-1" and cmd["reason"] == "no_timer_limit"
    assert cmd["ts"] == "2026-11-25T10:01:07.000Z"  # the due time itself, whenever it was noticed
    assert [a["kind"] for a in out.alerts] == ["enforcement_missed"]


def test_a_bye_in_time_is_never_overtaken_by_another_nodes_clock() -> None:
    c1 = CallBuilder("c1", "node-1").setup().answered(2_000, "no_timer").terminated(40_000).events
    # node-2's later events and heartbeats are read before node-1's (spools flushed one after the other)
    stream = beats("node-2", 0, 200_000) + by_ts(c1, beats("node-1", 0, 100_000))
    _, out = run(stream)
    (cdr,) = out.cdrs
    assert cdr["end_reason"] == "normal_caller_bye" and cdr["duration_ms"] == 38_000
    assert out.commands == [] and out.alerts == []


def test_a_late_bye_after_the_deadline_plus_grace_is_enforcement_missed_in_any_cut() -> None:
    c1 = CallBuilder("c1", "node-1").setup().answered(2_000, "no_timer").terminated(70_000, "no_timer_limit",
                                                                                   "system").events
    # The BYE (68 s after the answer) is 3 s past the deadline + grace. Whether node-1's clock passed the
    # deadline through a heartbeat or only with the late BYE itself, the verdict is the same.
    _, with_beats = run(by_ts(c1, beats("node-1", 0, 100_000)))
    _, alone = run(c1)
    for out in (with_beats, alone):
        assert [a["kind"] for a in out.alerts] == ["enforcement_missed", "limit_reached"]
        assert [c["call_id"] for c in out.commands] == ["c1"]
        assert out.cdrs[0]["end_reason"] == "no_timer_limit"
    assert with_beats.alerts == alone.alerts and with_beats.commands == alone.commands


def test_events_dated_ahead_are_clamped_and_change_no_verdict() -> None:
    calls = [CallBuilder(f"c{i}", f"node-{1 + i % 2}").setup(1_000 * i)
             .answered(2_000 + 1_000 * i, "no_timer").terminated(50_000 + 1_000 * i).events for i in range(6)]
    base = by_ts(*calls, beats("node-1", 0, 90_000), beats("node-2", 0, 90_000))
    _, ref = run(base)
    assert len(ref.cdrs) == 6 and ref.alerts == [] and ref.commands == []
    for lead in (27_000, 120_000):
        stray = heartbeat("node-1", 20_000 + lead, seq=99)  # one heartbeat dated ahead, early in the log
        proc, out = run([*base[:10], stray, *base[10:]])
        assert out.cdrs == ref.cdrs and out.alerts == [] and out.commands == [], lead
        assert proc.clamped_events == 1 and len(out.notices) == 1 and "clamped" in out.notices[0]


def test_one_calls_events_in_any_order_give_the_right_cdr() -> None:
    events = CallBuilder("c1", "node-1").setup().routed().answered(2_000).refreshed(32_000) \
        .terminated(62_000).events
    _, ref = run(events)
    (cdr,) = ref.cdrs
    assert cdr["duration_ms"] == 60_000 and cdr["end_reason"] == "normal_caller_bye"
    reordered = [events[0], events[2], events[3], events[1], events[4]]  # 1, 3, 4, 2, 5
    _, out = run(reordered)
    assert out.cdrs == ref.cdrs and out.alerts == ref.alerts == []


def test_node_lost_verdict_orphans_only_that_nodes_calls_and_a_stale_one_is_ignored() -> None:
    up1 = CallBuilder("a", "node-1").setup().answered(2_000).events
    up2 = CallBuilder("b", "node-2").setup().answered(2_000).refreshed(12_000).events
    stream = by_ts(up1, up2, beats("node-1", 0, 20_000), beats("node-2", 0, 20_000))
    proc, _ = run(stream)
    # a verdict about node-2 based on its heartbeat at 20 s: closes b only, exposure to the detection
    _, out = run([node_lost("node-2", 55_000, 20_000)], proc)
    (cdr,) = out.cdrs
    assert cdr["call_id"] == "b" and cdr["end_reason"] == "orphaned" and cdr["closed_by"] == "pipeline"
    assert cdr["duration_ms"] == 10_000 and cdr["exposure_ms"] == 43_000 and cdr["exposure_open"]
    assert [a["kind"] for a in out.alerts] == ["orphaned"]
    # the same verdict again (another worker wrote it too) changes nothing
    assert not run([node_lost("node-2", 56_000, 20_000, by="other")], proc)[1].cdrs
    # a verdict about node-1 based on older news than this log holds: node-1 heart-beat since
    proc2, out = run([*beats("node-1", 25_000, 30_000, seq0=50), node_lost("node-1", 60_000, 20_000)], proc)
    assert out.cdrs == [] and proc2.stale_verdicts == 1 and "ignored" in out.notices[0]


def test_a_late_duplicate_after_eviction_reopens_nothing() -> None:
    events = CallBuilder("c1", "node-1").setup().answered(2_000).terminated(30_000).events
    proc, ref = run(by_ts(events, beats("node-1", 0, 40_000)))
    assert len(ref.cdrs) == 1
    assert proc.evict_closed() == 1 and "c1" not in proc.states
    # the spool re-sends the whole call much later; then the node goes quiet and is called lost
    _, out = run([*events, *beats("node-1", 45_000, 50_000, seq0=20), node_lost("node-1", 90_000, 50_000)],
                 proc)
    assert out.cdrs == [] and out.alerts == [] and proc.late_events == 3 and "c1" not in proc.states


def test_the_closed_call_memory_survives_a_snapshot() -> None:
    events = CallBuilder("c1", "node-1").setup().answered(2_000).terminated(30_000).events
    proc, _ = run(events)
    proc.evict_closed()
    back = Processor(P)
    back.restore(proc.snapshot())
    back.closed.load(proc.closed.take_new())
    _, out = run(events[:1], back)
    assert out.cdrs == [] and back.late_events == 1 and back.states == {}
    assert back.clocks.now("node-1") == proc.clocks.now("node-1")


# -- takeover: a surviving node ends a lost node's calls on both legs --------------------------------

def _lost_with_calls(takers: list[str] | None) -> tuple[Processor, Outputs]:
    calls = [CallBuilder(f"t{i}", "node-2").setup(100 * i).answered(2_000 + 100 * i, "no_timer", dialogs=True)
             .refreshed(10_000, leg="carrier", local_cseq=7).events for i in range(6)]
    stream = by_ts(*calls, beats("node-1", 0, 20_000), beats("node-2", 0, 20_000), beats("node-3", 0, 20_000))
    proc, _ = run(stream)
    verdict = node_lost("node-2", 55_000, 20_000)
    if takers is not None:
        verdict["takeover_by"] = takers
    return run([verdict], proc)


def test_a_lost_nodes_calls_are_handed_to_live_nodes_deterministically() -> None:
    proc, out = _lost_with_calls(["node-1", "node-3"])
    assert out.cdrs == []  # not closed yet: the takeover reports first
    takes = sorted(out.commands, key=lambda c: c["call_id"])
    assert [c["type"] for c in takes] == ["call.takeover"] * 6
    assert {c["node"] for c in takes} == {"node-1", "node-3"}  # spread over the live nodes
    assert all(c["dead_node"] == "node-2" and c["seq"] == 4 for c in takes)
    assert all(c["dialogs"]["carrier"]["local_cseq"] == 7 for c in takes)  # the refresh advanced it
    assert all("taken over by" in a["message"] for a in out.alerts)
    # the same verdict from another worker: nothing new
    _, again = run([node_lost("node-2", 56_000, 20_000, by="w2")], proc)
    assert again.commands == [] and again.cdrs == []
    # the same choice on a fresh processor (another partition, replay)
    _, other = _lost_with_calls(["node-3", "node-1"])
    assert sorted(other.commands, key=lambda c: c["call_id"]) == takes


def test_a_reported_takeover_closes_the_call_with_its_exposure_to_the_bye() -> None:
    proc, out = _lost_with_calls(["node-1", "node-3"])
    cmd = next(c for c in out.commands if c["call_id"] == "t0")
    _, done = run([taken_over("t0", cmd["seq"], cmd["node"], "node-2", 58_000)], proc)
    (cdr,) = done.cdrs
    assert cdr["end_reason"] == "orphaned" and cdr["closed_by"] == "node" and not cdr["exposure_open"]
    assert cdr["end_ts"] == "2026-11-25T10:00:10.000Z"  # billed to the last proof (the refresh)
    assert cdr["exposure_ms"] == 48_000  # from that proof to the BYE
    cmd1 = next(c for c in out.commands if c["call_id"] == "t1")
    _, half = run([taken_over("t1", cmd1["seq"], cmd1["node"], "node-2", 58_000, carrier="timeout")], proc)
    (cdr,) = half.cdrs
    assert cdr["exposure_open"] and [a["kind"] for a in half.alerts] == ["takeover_failed"]


def test_a_takeover_that_never_reports_closes_the_call_open_on_the_takers_clock() -> None:
    proc, out = _lost_with_calls(["node-1"])
    assert {c["node"] for c in out.commands} == {"node-1"}
    _, later = run(beats("node-1", 25_000, 95_000, seq0=100), proc)
    assert later.cdrs == []  # 55 s + 45 s not yet passed on node-1's clock
    _, late = run(beats("node-1", 100_000, 105_000, seq0=200), proc)
    assert len(late.cdrs) == 6 and all(c["exposure_open"] and c["closed_by"] == "pipeline" for c in late.cdrs)
    assert {a["kind"] for a in late.alerts} == {"takeover_failed"}


def test_without_a_live_node_the_calls_close_at_once() -> None:
    _, out = _lost_with_calls(None)
    assert len(out.cdrs) == 6 and out.commands == [] and all(c["exposure_open"] for c in out.cdrs)


def test_a_node_that_comes_back_is_told_to_release_what_was_taken_over() -> None:
    proc, out = _lost_with_calls(["node-1"])
    for c in out.commands:
        run([taken_over(c["call_id"], c["seq"], "node-1", "node-2", 57_000)], proc)
    # its first heartbeat after 50 s of silence is a jump that a second one must confirm
    assert run([heartbeat("node-2", 70_000, seq=500)], proc)[1].commands == []
    _, back = run([heartbeat("node-2", 71_000, seq=501)], proc)
    rel = sorted(back.commands, key=lambda c: c["call_id"])
    assert [c["type"] for c in rel] == ["call.release"] * 6
    assert all(c["node"] == "node-2" and c["taken_over_by"] == "node-1" for c in rel)
    assert run([heartbeat("node-2", 72_000, seq=502)], proc)[1].commands == []  # once


def test_calls_a_dying_taker_was_ending_stay_open_at_the_carrier() -> None:
    proc, _ = _lost_with_calls(["node-1"])
    _, out = run([node_lost("node-1", 60_000, 20_000)], proc)
    assert len(out.cdrs) == 6 and all(c["exposure_open"] for c in out.cdrs)
