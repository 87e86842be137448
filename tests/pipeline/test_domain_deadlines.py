"""DeadlineQueue: one lane per node, ordered, compacted, rebuilt after a restart."""

from __future__ import annotations

from domain_eventgen import CallBuilder

from pipeline.domain.deadlines import DeadlineQueue
from pipeline.domain.effects import CancelDeadline, ScheduleDeadline
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.rules import due_at
from pipeline.domain.state import CallState

P = Policy()


def test_queue_basics_in_one_lane() -> None:
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


def test_lanes_are_judged_apart() -> None:
    q = DeadlineQueue()
    q.schedule("x1", 100, "node-1")
    q.schedule("x2", 100, "node-2")
    q.schedule("x3", 500, "node-1")
    assert q.nodes() == ["node-1", "node-2"]
    assert q.pop_due(10**15, "node-2") == ["x2"]  # node-2's clock far ahead: node-1's calls stay
    assert q.peek("node-1") == 100 and q.pop_due(200, "node-1") == ["x1"]
    q.schedule("x3", 50, "node-2")  # a call moved to another node's lane (setup from another node)
    assert q.pop_due(10**15, "node-1") == [] and q.pop_due(60, "node-2") == ["x3"]


def test_queue_compacts_under_rescheduling() -> None:
    q = DeadlineQueue()
    for i in range(20_000):
        q.schedule(f"c{i % 10}", i, f"n{i % 3}")
    assert len(q) == 10 and q._entries <= 2100
    due = [c for n in ("n0", "n1", "n2") for c in q.pop_due(10**9, n)]
    assert sorted(due) == [f"c{i}" for i in range(10)]


def test_apply_effects_and_rebuild_after_restart() -> None:
    states: dict[str, CallState] = {}
    q = DeadlineQueue()
    b = CallBuilder("x")
    for i, mode in enumerate(["no_timer", "session_timer", "no_timer"]):
        b = CallBuilder(f"call{i}", node=f"b2b-{i % 2}").setup().answered(1000 * i, mode)
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
    assert q.pop_due(10**15, "b2b-1") == rebuilt.pop_due(10**15, "b2b-1") == ["call1"]
    assert q.pop_due(10**15, "b2b-0") == rebuilt.pop_due(10**15, "b2b-0") == ["call0"]
    assert isinstance(ScheduleDeadline("x", 1, "y"), ScheduleDeadline)
