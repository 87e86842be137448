"""Property tests: the fold is order- and duplicate-insensitive, durations are sane, the queue is ordered."""

from __future__ import annotations

from typing import Any

from domain_eventgen import CallBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.domain.cdr import build_cdr
from pipeline.domain.deadlines import DeadlineQueue
from pipeline.domain.effects import EmitCdr, RaiseAlert
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.rating import RateDeck
from pipeline.domain.rules import on_node_lost
from pipeline.domain.state import CallState
from schemas.validation import validate_cdr

P = Policy()
SELL = RateDeck.from_csv(
    "party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,"
    "currency,effective_from\nacme,44,0.0123,30,6,0.01,0,USD,2026-01-01\n", "s")

MIDDLE = st.sampled_from(["refreshed", "refresh_failed", "probe_ok", "probe_failed"])
END = st.sampled_from([
    ("normal_caller_bye", "caller", None), ("normal_callee_bye", "callee", None),
    ("session_expired", "system", None), ("liveness_probe_failed", "system", None),
    ("no_timer_limit", "system", None), ("busy", "callee", 486), ("caller_cancel", "caller", 487),
])


@st.composite
def calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    b = CallBuilder("pc").setup()
    t = 0
    for attempt in range(1, draw(st.integers(0, 2)) + 1):
        t += draw(st.integers(0, 500))
        b.routed(t, f"v{attempt}", attempt)
    if draw(st.booleans()):
        t += draw(st.integers(0, 5000))
        b.progress(t)
    if draw(st.booleans()):
        t += draw(st.integers(0, 30_000))
        b.answered(t, draw(st.sampled_from(["session_timer", "no_timer"])))
        for kind in draw(st.lists(MIDDLE, max_size=6)):
            t += draw(st.integers(0, 900_000))
            getattr(b, kind)(t)
    t += draw(st.integers(0, 900_000))
    reason, initiator, status = draw(END)
    b.terminated(t, reason, initiator, status)
    return b.events


def fold(events: list[dict[str, Any]]) -> tuple[CallState, list[Any]]:
    state: CallState | None = None
    fx: list[Any] = []
    for ev in events:
        state, f = apply(state, ev, P)
        fx += f
    assert state is not None
    return state, fx


@settings(max_examples=150, deadline=None)
@given(calls(), st.data())
def test_any_permutation_and_duplication_gives_the_same_cdr(events: list[dict[str, Any]],
                                                              data: st.DataObject) -> None:
    ref_state, ref_fx = fold(events)
    ref_cdrs = [e.cdr_fields for e in ref_fx if isinstance(e, EmitCdr)]
    assert len(ref_cdrs) == 1
    dups = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
    shuffled = data.draw(st.permutations([*events, *[dict(d) for d in dups]]))
    state, fx = fold(shuffled)
    assert [e.cdr_fields for e in fx if isinstance(e, EmitCdr)] == ref_cdrs
    assert sorted(e.kind for e in fx if isinstance(e, RaiseAlert)) == \
        sorted(e.kind for e in ref_fx if isinstance(e, RaiseAlert))
    assert state.to_dict() == ref_state.to_dict()


@settings(max_examples=150, deadline=None)
@given(calls(), st.sampled_from(["full", "verified"]), st.integers(0, 3_000_000), st.booleans())
def test_durations_are_never_negative_and_verified_within_duration(
        events: list[dict[str, Any]], mode: str, orphan_after: int, orphan: bool) -> None:
    if orphan:  # close by orphaning instead, before the terminate arrives
        state, _ = fold(events[:-1])
        state, _ = on_node_lost(state, state.last_event_ms + orphan_after)
    else:
        state, _ = fold(events)
    cdr = build_cdr(state, SELL, None, {"acme": mode})
    validate_cdr(cdr)
    assert cdr["duration_ms"] >= 0
    assert cdr["pdd_ms"] is None or cdr["pdd_ms"] >= 0
    assert 0 <= cdr["verified_ms"] <= cdr["duration_ms"]
    assert cdr["verified_ms"] + cdr["unverified_ms"] == cdr["duration_ms"]
    billable = cdr["verified_ms"] if mode == "verified" else cdr["duration_ms"]
    assert cdr["billed_seconds"] * 1000 >= billable
    assert (cdr["billed_seconds"] == 0) == (billable == 0)


ops = st.lists(st.tuples(st.sampled_from(["s", "c"]), st.sampled_from([f"k{i}" for i in range(8)]),
                         st.integers(0, 50)), max_size=60)


@given(ops, st.integers(0, 60))
def test_queue_pops_in_sorted_order_of_live_entries(operations: list[tuple[str, str, int]], now: int) -> None:
    q = DeadlineQueue()
    live: dict[str, int] = {}
    for op, cid, at in operations:
        if op == "s":
            q.schedule(cid, at)
            live[cid] = at
        else:
            q.cancel(cid)
            live.pop(cid, None)
    assert len(q) == len(live)
    assert q.peek() == (min(live.values()) if live else None)
    expected = sorted((at, cid) for cid, at in live.items())
    due = [cid for at, cid in expected if at <= now]
    assert q.pop_due(now) == due
    assert q.pop_due(10**9) == [cid for at, cid in expected if at > now]
    assert len(q) == 0
