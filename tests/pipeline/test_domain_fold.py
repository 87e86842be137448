from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from domain_eventgen import T0, CallBuilder, heartbeat, normal_call

from pipeline.domain import phase
from pipeline.domain.effects import CancelDeadline, EmitCdr, RaiseAlert, ScheduleDeadline
from pipeline.domain.fold import apply, drain_held
from pipeline.domain.policy import Policy
from pipeline.domain.state import CallState
from schemas.validation import validate_cdr, validate_event

P = Policy()


def fold(events: list[dict[str, Any]], policy: Policy = P) -> tuple[CallState, list[Any]]:
    state: CallState | None = None
    effects: list[Any] = []
    for ev in events:
        state, fx = apply(state, ev, policy)
        effects += fx
    assert state is not None
    return state, effects


def test_generated_events_are_schema_valid() -> None:
    b = CallBuilder().setup().routed().progress().answered().refreshed(900_000).refresh_failed(1_000_000)
    b.probe_ok(1_000_100).probe_failed(1_000_200).terminated(1_000_300, "session_refresh_failed", "system")
    for ev in [*b.events, heartbeat("b2b-1", 0)]:
        validate_event(ev)


def test_normal_call_tracks_everything_and_emits_one_valid_cdr() -> None:
    st, fx = fold(normal_call(talk_ms=65_400))
    assert st.phase == phase.ENDED and st.closed
    assert (st.node, st.account, st.callee, st.vendor, st.gateway) == (
        "b2b-1", "acme", "+441234567890", "carrierA", "192.0.2.1:5060")
    assert (st.setup_ms, st.ring_ms, st.answer_ms, st.end_ms) == (T0, T0 + 500, T0 + 2000, T0 + 67_400)
    assert st.timer_mode == "session_timer" and st.session_expires == 1800
    assert (st.refresher_caller, st.refresher_carrier) == ("peer", "b2bua")
    assert st.refresh_count == 1
    assert st.last_proof_ms == st.end_ms  # a party's BYE is proof of life
    cdrs = [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]
    assert len(cdrs) == 1
    validate_cdr(cdrs[0])
    assert cdrs[0]["duration_ms"] == 65_400 == cdrs[0]["verified_ms"]
    assert not cdrs[0]["zombie"]
    # the session timer was armed on answer and disarmed at the end
    assert any(isinstance(e, ScheduleDeadline) for e in fx)
    timers = [e for e in fx if isinstance(e, (ScheduleDeadline, CancelDeadline))]
    assert isinstance(timers[-1], CancelDeadline)


def test_duplicate_event_ids_change_nothing() -> None:
    events = normal_call()
    st, fx = fold(events)
    snapshot = st.to_dict()
    for ev in events:
        st2, fx2 = apply(st, dict(ev), P)
        assert st2 is st and fx2 == []
    assert st.to_dict() == snapshot
    assert sum(isinstance(e, EmitCdr) for e in fx) == 1


def test_out_of_order_is_held_and_gives_the_same_result() -> None:
    events = normal_call()
    in_order, fx1 = fold(events)
    reordered = [events[3], events[5], events[1], events[0], events[4], events[2]]
    st, fx2 = fold(reordered)
    assert st.to_dict() == in_order.to_dict()
    cdr = lambda fx: [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]  # noqa: E731
    assert cdr(fx1) == cdr(fx2)


def test_events_before_setup_are_pending_with_pending_since() -> None:
    events = normal_call()
    st, fx = apply(None, events[2], P)
    assert st.phase == phase.PENDING and st.pending_since_ms == T0 + 500 and st.node == "b2b-1"
    assert fx == [ScheduleDeadline("c1", T0 + 500 + 60_000, "unknown_call", "b2b-1")]
    st, fx = apply(st, events[1], P)  # an earlier ts lowers pending_since (order-independent)
    assert st.pending_since_ms == T0 + 10
    assert fx == [ScheduleDeadline("c1", T0 + 10 + 60_000, "unknown_call", "b2b-1")]
    st, fx = apply(st, events[0], P)  # setup arrives: the call starts, the unknown_call timer goes
    assert st.phase == phase.ACTIVE and st.pending_since_ms is None and st.held == {}
    assert fx == [CancelDeadline("c1")]


def test_gap_after_setup_holds_later_events_until_drained() -> None:
    events = normal_call()
    st, _ = fold([events[0], events[1], events[3], events[4], events[5]])
    assert st.phase == phase.ACTIVE and sorted(st.held) == [4, 5, 6] and st.next_seq == 3
    st, fx = drain_held(st, P)
    assert st.closed and st.ring_ms is None and sum(isinstance(e, EmitCdr) for e in fx) == 1


def test_unanswered_call_cdr() -> None:
    b = CallBuilder().setup().routed().progress().terminated(8000, "busy", "callee", 486)
    _, fx = fold(b.events)
    (cdr,) = [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]
    validate_cdr(cdr)
    assert cdr["duration_ms"] == 0 and cdr["timer_mode"] == "none" and cdr["pdd_ms"] == 500
    assert cdr["sip_status"] == 486 and cdr["ended_by"] == "callee" and cdr["end_reason"] == "busy"
    assert cdr["last_proof_of_life"] is None and cdr["answer_ts"] is None and cdr["vendor"] == "carrierA"


def test_no_route_call_has_empty_vendor_and_null_pdd() -> None:
    _, fx = fold(CallBuilder().setup().terminated(5, "no_route", "system", 404).events)
    (cdr,) = [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]
    validate_cdr(cdr)
    assert cdr["vendor"] == "" and cdr["pdd_ms"] is None


def test_latest_route_wins() -> None:
    b = CallBuilder().setup().routed(10, "carrierA").routed(3000, "carrierB", attempt=2)
    st, _ = fold(b.events)
    assert st.vendor == "carrierB" and st.route_attempt == 2


def test_proof_of_life_from_refresh_and_probe() -> None:
    b = CallBuilder().setup().answered(2000, "no_timer").probe_ok(30_000).probe_ok(60_000)
    b.terminated(100_000, "session_expired", "system")
    _, fx = fold(b.events)
    (cdr,) = [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]
    assert cdr["verified_ms"] == 58_000 and cdr["unverified_ms"] == 40_000 and cdr["zombie"]
    assert [e.kind for e in fx if isinstance(e, RaiseAlert)] == ["refresh_failed"]


def test_failures_raise_one_alert_per_kind() -> None:
    b = CallBuilder().setup().answered().refresh_failed(10_000).refresh_failed(11_000)
    b.probe_failed(12_000).probe_failed(13_000).terminated(14_000, "session_refresh_failed", "system")
    _, fx = fold(b.events)
    alerts = [e for e in fx if isinstance(e, RaiseAlert)]
    assert sorted(a.kind for a in alerts) == ["probe_failed", "refresh_failed"]
    assert alerts[0].ran_ms == 8_000 and alerts[0].unverified_ms == 8_000


def test_limit_reached_alert_when_b2bua_enforced_the_cap() -> None:
    b = CallBuilder().setup().answered(2000, "no_timer", effective_limit_s=7200,
                                       limit_source="no_timer_max_duration")
    b.terminated(2000 + 7_200_000, "no_timer_limit", "system")
    _, fx = fold(b.events)
    assert [e.kind for e in fx if isinstance(e, RaiseAlert)] == ["limit_reached"]
    (cdr,) = [e.cdr_fields for e in fx if isinstance(e, EmitCdr)]
    assert cdr["zombie"] and cdr["effective_limit_s"] == 7200


def test_heartbeat_is_not_a_call_event() -> None:
    with pytest.raises(ValueError):
        apply(None, heartbeat("b2b-1", 0), P)


def test_state_roundtrips_through_json_and_pickle() -> None:
    events = normal_call()
    st, _ = fold([events[0], events[1], events[3], events[4]])  # answered and held events
    st.alerts_raised.add("probe_failed")
    d = json.loads(json.dumps(st.to_dict()))
    back = CallState.from_dict(d)
    assert back == st
    assert pickle.loads(pickle.dumps(st)) == st
    # and the restored state keeps folding identically
    a, fa = apply(back, events[2], P)
    b, fb = apply(st, events[2], P)
    assert a == b and fa == fb
