from __future__ import annotations

from domain_eventgen import T0, CallBuilder, heartbeat

from pipeline.domain.call_state import CallState, apply
from pipeline.domain.deadlines import DeadlineQueue
from pipeline.domain.effects import CancelDeadline, ScheduleDeadline
from pipeline.domain.node_liveness import NodeLiveness
from pipeline.domain.policy import Policy
from pipeline.domain.rules import due_at, on_node_lost

P = Policy()


def test_queue_basics() -> None:
    q = DeadlineQueue()
    assert q.peek() is None and len(q) == 0 and q.pop_due(10**15) == []
    q.schedule("b", 200)
    q.schedule("a", 200)
    q.schedule("c", 100)
    q.schedule("d", 50)
    q.cancel("d")
    q.schedule("b", 300)  # re-arm replaces
    assert len(q) == 3 and q.peek() == 100 and q.at("b") == 300 and "d" not in q
    assert q.pop_due(99) == []
    assert q.pop_due(250) == ["c", "a"]
    assert q.pop_due(10**15) == ["b"]
    assert len(q) == 0 and q.peek() is None


def test_queue_compacts_under_rescheduling() -> None:
    q = DeadlineQueue()
    for i in range(20_000):
        q.schedule(f"c{i % 10}", i)
    assert len(q) == 10 and len(q._heap) <= 2100
    assert q.pop_due(10**9) == [f"c{i}" for i in range(10)]


def test_apply_effects_and_rebuild_after_restart() -> None:
    states: dict[str, CallState] = {}
    q = DeadlineQueue()
    for i, mode in enumerate(["no_timer", "session_timer", "no_timer"]):
        b = CallBuilder(f"call{i}").setup().answered(1000 * i, mode)
        for ev in b.events:
            st, fx = apply(states.get(ev["call_id"]), ev, P)
            states[st.call_id] = st
            q.apply_effects(fx)
    st, fx = apply(states["call2"], b.terminated(9000).events[-1], P)
    q.apply_effects(fx)
    assert any(isinstance(e, CancelDeadline) for e in fx)
    rebuilt = DeadlineQueue.rebuild(states, P)
    assert len(rebuilt) == len(q) == 2
    for cid in ("call0", "call1"):
        assert rebuilt.at(cid) == q.at(cid) == due_at(states[cid], P)
    assert q.pop_due(10**15) == rebuilt.pop_due(10**15) == ["call1", "call0"]
    assert isinstance(ScheduleDeadline("x", 1, "y"), ScheduleDeadline)


def test_node_liveness_orphans_calls_of_a_silent_node() -> None:
    nl = NodeLiveness()
    nl.observe(heartbeat("b2b-1", 0))
    nl.observe(heartbeat("b2b-2", 0))
    states = {}
    for cid, node in (("x", "b2b-1"), ("y", "b2b-2"), ("z", "b2b-2")):
        st = None
        for ev in CallBuilder(cid, node).setup().answered(1000).events:
            st, _ = apply(st, ev, P)
            nl.track(st)
        states[cid] = st
    nl.observe(heartbeat("b2b-1", 40_000, seq=2))
    nl.observe(heartbeat("b2b-1", 20_000, seq=3))  # late, older heartbeat does not rewind
    assert nl.last_seen("b2b-1") == T0 + 40_000
    assert nl.lost_nodes(T0 + 30_000, 30_000) == []
    lost = nl.lost_nodes(T0 + 30_001, 30_000)
    assert lost == ["b2b-2"] and nl.calls_of("b2b-2") == ["y", "z"]
    for cid in nl.calls_of("b2b-2"):
        st, _ = on_node_lost(states[cid], T0 + 30_001)
        assert st.end_reason == "orphaned"
        nl.track(st)
    assert nl.calls_of("b2b-2") == [] and nl.calls_of("b2b-1") == ["x"]
    back = NodeLiveness.from_dict(nl.to_dict())
    assert back.to_dict() == nl.to_dict()


def test_node_without_heartbeat_counts_from_first_call() -> None:
    nl = NodeLiveness()
    st, _ = apply(None, CallBuilder("q", "b2b-9").setup(at=5000).events[0], P)
    nl.track(st)
    assert nl.last_seen("b2b-9") == T0 + 5000
    assert nl.lost_nodes(T0 + 35_001, 30_000) == ["b2b-9"]
