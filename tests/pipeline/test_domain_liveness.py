"""LivenessWatch: silence counts only while caught up; a verdict needs a failed probe."""

from __future__ import annotations

from pipeline.domain.liveness import ALIVE, DISCONNECTED, LOST, LivenessWatch, Verdict, node_lost_event
from schemas.validation import validate_event

TIMEOUT = 30_000


def test_silence_is_not_counted_while_behind() -> None:
    w = LivenessWatch(TIMEOUT)
    w.heard("n1", 1_000, wall_ms=0, address="127.0.0.1:5060")
    for wall in range(0, 100_001, 1_000):  # a backlog, a store outage: behind for 100 s
        w.progress(wall, None)
        assert w.due_probes(wall, ["n1"]) == []
    for wall in range(101_000, 131_001, 1_000):  # caught up: the count starts now
        w.progress(wall, wall)
        assert w.due_probes(wall, ["n1"]) == []
    w.progress(131_001, 131_001)
    (p,) = w.due_probes(131_001, ["n1"])
    assert (p.node, p.address, p.last_heartbeat_ms) == ("n1", "127.0.0.1:5060", 1_000)
    assert w.due_probes(131_500, ["n1"]) == []  # one probe at a time


def test_a_reader_always_a_little_behind_still_sees_a_silent_node() -> None:
    # Steady traffic: at no turn is everything read, but reading is never more than 300 ms behind.
    w = LivenessWatch(TIMEOUT)
    w.heard("n1", 0, wall_ms=0, address="127.0.0.1:5060")
    w.heard("n2", 0, wall_ms=0, address="127.0.0.1:5062")
    suspects: list[tuple[int, str]] = []
    for wall in range(100, 40_001, 100):
        w.progress(wall, wall - 300)
        if wall % 1_000 == 0:
            w.heard("n2", wall, wall_ms=wall)  # n2 beats on, n1 died at 0
        suspects += [(wall, p.node) for p in w.due_probes(wall, ["n1", "n2"])]
    # counted from the first turn (100) up to what was read (wall - 300): first over 30 s at 30.5 s
    assert suspects == [(TIMEOUT + 500, "n1")]


def test_silence_is_measured_only_up_to_what_was_read() -> None:
    w = LivenessWatch(TIMEOUT)
    w.heard("n1", 0, wall_ms=0)
    for wall in range(1_000, 60_001, 1_000):  # reading stuck at 10 s (a slow store held it back)
        w.progress(wall, 10_000)
        assert w.due_probes(wall, ["n1"]) == []


def test_a_stalled_loop_restarts_the_count() -> None:
    w = LivenessWatch(TIMEOUT, stall_ms=2_000)
    w.heard("n1", 0, wall_ms=0)
    assert w.progress(0, 0) == 0
    assert w.progress(1_000, 1_000) == 0
    # The loop did not run for 44 s (SIGSTOP, a blocked call): the gap is reported, for the driver's log.
    assert w.progress(45_000, 45_000) == 44_000
    assert w.caught_up_since == 45_000 and w.due_probes(45_000, ["n1"]) == []
    for wall in range(46_000, 75_001, 1_000):
        w.progress(wall, wall)
    assert w.due_probes(75_000, ["n1"]) == []
    w.progress(75_001, 75_001)
    assert [p.node for p in w.due_probes(75_001, ["n1"])] == ["n1"]


def _suspect(w: LivenessWatch, node: str = "n1") -> int:
    w.heard(node, 0, wall_ms=0, address="127.0.0.1:5060")
    wall = 0
    while not w.due_probes(wall, [node]):
        wall += 1_000
        w.progress(wall, wall)
    return wall


def test_a_node_that_answers_the_probe_is_disconnected_not_dead() -> None:
    w = LivenessWatch(TIMEOUT)
    wall = _suspect(w)
    assert w.probe_result("n1", True, wall) is None and w.state("n1") == DISCONNECTED
    for t in range(wall + 1_000, wall + TIMEOUT, 1_000):
        w.progress(t, t)
        assert w.due_probes(t, ["n1"]) == []  # not before another timeout
    w.progress(wall + TIMEOUT, wall + TIMEOUT)
    assert [p.node for p in w.due_probes(wall + TIMEOUT, ["n1"])] == ["n1"]
    w.heard("n1", 90_000, wall_ms=wall + TIMEOUT + 10)  # its heartbeats come through again
    assert w.state("n1") == ALIVE


def test_an_unanswered_probe_is_a_verdict_once() -> None:
    w = LivenessWatch(TIMEOUT)
    wall = _suspect(w)
    v = w.probe_result("n1", False, wall, "3 OPTIONS unanswered")
    assert v == Verdict("n1", 0, "3 OPTIONS unanswered") and w.state("n1") == LOST
    for t in range(wall, wall + 5 * TIMEOUT, 1_000):
        w.progress(t, t)
        assert w.due_probes(t, ["n1"]) == []
    assert w.probe_result("n1", False, wall) is None  # no second verdict
    w.heard("n1", 500_000, wall_ms=wall + 5 * TIMEOUT)  # the node came back
    assert w.state("n1") == ALIVE


def test_nodes_without_calls_are_left_alone_and_unknown_ones_start_counting() -> None:
    w = LivenessWatch(TIMEOUT)
    w.heard("idle", 0, wall_ms=0)
    w.progress(0, 0)
    for t in range(1_000, 100_001, 1_000):
        w.progress(t, t)
        assert w.due_probes(t, []) == []
    assert w.due_probes(100_000, ["never-heard"]) == []  # seen now: its silence counts from now
    for t in range(101_000, 100_000 + TIMEOUT + 1, 1_000):
        w.progress(t, t)
        assert w.due_probes(t, ["never-heard"]) == []
    w.progress(100_000 + TIMEOUT + 1, 100_000 + TIMEOUT + 1)
    assert [p.node for p in w.due_probes(100_000 + TIMEOUT + 1, ["never-heard"])] == ["never-heard"]


def test_node_lost_event_is_valid_and_deterministic() -> None:
    v = Verdict("node-2", 1_795_600_800_000, "3 OPTIONS to udp:127.0.0.1:5062 unanswered in 3.0 s")
    a = node_lost_event(v, 1_795_600_840_000, "worker-a")
    b = node_lost_event(v, 1_795_600_841_000, "worker-b")
    validate_event(a)
    assert a["event_id"] == b["event_id"] and a["last_heartbeat"] == "2026-11-25T10:00:00.000Z"
    validate_event(node_lost_event(Verdict("n", None, ""), 0, "w"))
