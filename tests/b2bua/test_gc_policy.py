"""The collector policy (b2bua/gc_policy.py) rests on one promise of the core: a call leaves no
reference cycle behind, so frozen call state is freed by reference counting alone."""

from __future__ import annotations

import gc

from test_b2bua_core_harness import CALLER, GW1, SDP_B, Harness, answer, caller_dialog, caller_invite, only

from b2bua.gc_policy import CollectorPolicy


def _calls(h: Harness, n: int, first: int) -> None:
    for i in range(first, first + n):
        invite = caller_invite(call_id=f"gc{i}@10.0.0.1", branch=f"z9hG4bKgc{i}")
        out_invite = only(h.feed(invite), GW1, method="INVITE")
        h.feed(answer(out_invite, 180), GW1)
        ok = only(h.feed(answer(out_invite, 200, body=SDP_B), GW1), CALLER, status=200)
        dialog = caller_dialog(invite, ok)
        h.feed(dialog.create_ack(branch=f"z9hG4bKgcack{i}"))
        out = h.feed(dialog.create_bye(branch=f"z9hG4bKgcbye{i}"))
        h.feed(answer(only(out, GW1, method="BYE"), 200), GW1)
        h.advance(1.0)
    h.advance(60.0)  # transactions and tombstones expire


def test_calls_leave_no_reference_cycles_behind() -> None:
    h = Harness()
    _calls(h, 5, 0)  # warm-up: caches, compiled schemas
    gc.collect()
    gc.disable()
    try:
        _calls(h, 40, 100)
        assert h.core.active_calls == 0 and len(h.core.ended) == 0
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0, "the core made reference cycles: frozen by the collector policy, they would leak"


def test_policy_freezes_survivors_and_leaves_full_collections_to_its_ticks() -> None:
    policy = CollectorPolicy(interval=0.1, young_threshold=1500)
    before = gc.get_threshold()
    try:
        policy.install()
        assert gc.get_threshold()[0] == 1500 and gc.get_threshold()[2] > 10**8
        frozen = gc.get_freeze_count()
        survivors = [[i] for i in range(1000)]  # tracked objects that outlive the tick
        pause = policy.tick()
        assert gc.get_freeze_count() >= frozen + 1000 and pause >= 0 and policy.ticks == 1
        assert policy.take_longest_pause() == pause and policy.take_longest_pause() == 0.0
        del survivors
    finally:
        CollectorPolicy.uninstall()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


def test_default_policy_leaves_all_collections_to_its_ticks() -> None:
    """No automatic collection at all (young ones walked every live call object again and again); a
    cycle made meanwhile is freed by the next tick, not frozen."""
    policy = CollectorPolicy(interval=0.1)
    try:
        policy.install()
        assert not gc.isenabled()

        class Node:
            def __init__(self) -> None:
                self.me = self

        gc.collect()
        Node()  # unreachable but kept alive by its own reference until a collection
        assert any(type(o) is Node for o in gc.get_objects())
        policy.tick()
        assert not any(type(o) is Node for o in gc.get_objects())
    finally:
        CollectorPolicy.uninstall()
    assert gc.isenabled() and gc.get_freeze_count() == 0
