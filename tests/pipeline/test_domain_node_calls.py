"""NodeCalls: which open calls each node owns."""

from __future__ import annotations

from domain_eventgen import CallBuilder

from pipeline.domain.fold import apply
from pipeline.domain.node_calls import NodeCalls
from pipeline.domain.policy import Policy
from pipeline.domain.state import CallState

P = Policy()


def test_tracks_open_calls_per_node() -> None:
    nc = NodeCalls()
    states: dict[str, CallState] = {}
    for cid, node in (("x", "b2b-1"), ("y", "b2b-2"), ("z", "b2b-2")):
        st = None
        for ev in CallBuilder(cid, node).setup().answered(1000).events:
            st, _ = apply(st, ev, P)
            nc.track(st)
        assert st is not None
        states[cid] = st
    assert nc.nodes() == ["b2b-1", "b2b-2"] and nc.calls_of("b2b-2") == ["y", "z"] and nc.count("b2b-2") == 2
    bye = CallBuilder("y", "b2b-2").setup().answered(1000).terminated(5000).events[-1]
    st, _ = apply(states["y"], bye, P)
    nc.track(st)
    assert nc.calls_of("b2b-2") == ["z"]
    assert NodeCalls.of(states.values()).calls_of("b2b-2") == ["z"]
