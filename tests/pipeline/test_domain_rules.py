from __future__ import annotations

from typing import Any

from domain_eventgen import T0, CallBuilder

from pipeline.domain import phase
from pipeline.domain.commands import build_command
from pipeline.domain.effects import CancelDeadline, EmitCdr, IssueTerminate, RaiseAlert, ScheduleDeadline
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.rules import due_at, effective_limit, next_deadline, on_deadline, on_node_lost
from pipeline.domain.state import CallState
from schemas.validation import validate_cdr, validate_command

P = Policy()


def fold(events: list[dict[str, Any]], policy: Policy = P) -> tuple[CallState, list[Any]]:
    state: CallState | None = None
    fx: list[Any] = []
    for ev in events:
        state, f = apply(state, ev, policy)
        fx += f
    assert state is not None
    return state, fx


def test_effective_limit_is_the_smallest() -> None:
    assert effective_limit(None, "none", "no_timer", Policy()) == (7200, "no_timer_max_duration")
    assert effective_limit(None, "none", "session_timer", Policy()) == (None, "none")
    assert effective_limit(None, "none", "no_timer", Policy(max_call_duration=3600)) == (3600,
                                                                                          "max_call_duration")
    assert effective_limit(1800, "max_call_duration", "no_timer", Policy()) == (1800, "max_call_duration")
    # a tie keeps what the B2BUA said it enforced
    assert effective_limit(7200, "no_timer_max_duration", "no_timer", Policy(max_call_duration=7200)) == (
        7200, "no_timer_max_duration")
    assert effective_limit(None, "none", "no_timer", Policy(no_timer_max_duration=0)) == (None, "none")


def test_no_timer_call_past_cap_gets_terminate_and_enforcement_missed_after_grace() -> None:
    st, fx = fold(CallBuilder().setup().routed().answered(2000, "no_timer").events)
    cap = T0 + 2000 + 7200 * 1000
    assert next_deadline(st, P) == (cap, "no_timer_limit")
    assert fx[-1] == ScheduleDeadline("c1", cap + 5000, "no_timer_limit", "b2b-1")
    # at the cap and within the grace nothing happens: the B2BUA is expected to hang up itself
    for now in (cap, cap + 4999):
        st, out = on_deadline(st, now, P)
        assert out == [] and not st.terminate_issued
    st, out = on_deadline(st, cap + 5000, P)
    term = [e for e in out if isinstance(e, IssueTerminate)]
    assert term == [IssueTerminate("c1", "b2b-1", "no_timer_limit", cap, cap + 5000)]
    assert [e.kind for e in out if isinstance(e, RaiseAlert)] == ["enforcement_missed"]
    assert out[-1] == CancelDeadline("c1")
    cmd = build_command(term[0])
    validate_command(cmd)
    assert cmd["node"] == "b2b-1" and cmd["reason"] == "no_timer_limit"
    assert cmd["deadline"] == "2026-11-25T12:00:02.000Z" and cmd["ts"] == "2026-11-25T12:00:07.000Z"
    # once only
    st, out = on_deadline(st, cap + 60_000, P)
    assert out == []


def test_terminated_before_grace_means_no_command() -> None:
    st, _ = fold(CallBuilder().setup().answered(2000, "no_timer").events)
    st, fx = apply(st, CallBuilder().setup().answered(2000, "no_timer")
                   .terminated(2000 + 7_200_000 + 1000, "no_timer_limit", "system").events[2], P)
    assert any(isinstance(e, EmitCdr) for e in fx)
    st, out = on_deadline(st, T0 + 10**9, P)
    assert out == []


def test_session_timer_deadline_moves_with_each_refresh() -> None:
    pol = Policy(session_timeout_early_hangup=32)
    b = CallBuilder().setup().answered(2000, session_expires=90)
    st, fx = fold(b.events, pol)
    assert next_deadline(st, pol) == (T0 + 2000 + 90_000 - 32_000, "session_expired")
    st, fx = apply(st, b.refreshed(47_000, session_expires=90).events[-1], pol)
    assert next_deadline(st, pol) == (T0 + 47_000 + 90_000 - 32_000, "session_expired")
    assert fx == [ScheduleDeadline("c1", T0 + 47_000 + 58_000 + 5000, "session_expired", "b2b-1")]
    # a stale timer firing at the old time just re-arms
    st, out = on_deadline(st, T0 + 2000 + 58_000 + 5000, pol)
    assert out == []
    st, out = on_deadline(st, T0 + 47_000 + 58_000 + 5000, pol)
    assert [type(e).__name__ for e in out] == ["IssueTerminate", "RaiseAlert", "CancelDeadline"]
    assert out[0].reason == "session_expired"


def test_session_vs_limit_earliest_wins() -> None:
    pol = Policy(max_call_duration=60)
    st, _ = fold(CallBuilder().setup().answered(0, session_expires=1800).events, pol)
    assert next_deadline(st, pol) == (T0 + 60_000, "max_duration_limit")
    assert due_at(st, pol) == T0 + 65_000


def test_unanswered_and_ended_calls_have_no_deadline() -> None:
    st, _ = fold(CallBuilder().setup().progress().events)
    assert next_deadline(st, P) is None
    st, _ = fold(CallBuilder().setup().answered().terminated(5000).events)
    assert next_deadline(st, P) is None


def test_unknown_call_alert_after_timeout_once() -> None:
    b = CallBuilder().setup().routed().progress()
    st, _ = apply(None, b.events[2], P)
    st, out = on_deadline(st, T0 + 500 + 59_999, P)
    assert out == []
    st, out = on_deadline(st, T0 + 500 + 60_000, P)
    assert [(e.kind, e.node) for e in out if isinstance(e, RaiseAlert)] == [("unknown_call", "b2b-1")]
    assert out[-1] == CancelDeadline("c1")
    assert next_deadline(st, P) is None
    # if setup finally arrives, the call proceeds normally
    st, _ = apply(st, b.events[0], P)
    st, _ = apply(st, b.events[1], P)
    assert st.phase == phase.ACTIVE and st.ring_ms == T0 + 500


def test_orphaned_call_bills_to_last_proof_and_records_the_exposure_to_detection() -> None:
    b = CallBuilder().setup().routed().answered(2000).refreshed(902_000)
    st, _ = fold(b.events)
    now = T0 + 3_000_000
    st, out = on_node_lost(st, now)
    assert st.closed and st.end_reason == "orphaned" and st.ended_by == "system"
    (alert,) = [e for e in out if isinstance(e, RaiseAlert)]
    assert alert.kind == "orphaned" and alert.ts_ms == now
    assert alert.ran_ms == now - (T0 + 2000) and alert.unverified_ms == now - (T0 + 902_000)
    (cdr,) = [e.cdr_fields for e in out if isinstance(e, EmitCdr)]
    validate_cdr(cdr)
    assert cdr["end_ts"] == cdr["last_proof_of_life"] == "2026-11-25T10:15:02.000Z"
    assert cdr["zombie"] and cdr["end_reason"] == "orphaned"
    assert cdr["duration_ms"] == cdr["verified_ms"] == 900_000 and cdr["unverified_ms"] == 0
    # ... but it did not cost nothing: it ran unverified from the last refresh to the detection, and
    # nobody ended it at the carrier
    assert cdr["exposure_ms"] == now - (T0 + 902_000) == alert.unverified_ms
    assert cdr["exposure_open"] is True and cdr["closed_by"] == "pipeline"
    assert CancelDeadline("c1") in out


def test_no_timer_orphan_without_probes_is_exposed_from_its_answer() -> None:
    st, _ = fold(CallBuilder().setup().answered(2000, "no_timer").events)
    st, out = on_node_lost(st, T0 + 37_000)
    (cdr,) = [e.cdr_fields for e in out if isinstance(e, EmitCdr)]
    assert cdr["duration_ms"] == 0 and cdr["exposure_ms"] == 35_000 and cdr["exposure_open"]


def test_calls_a_node_ended_record_their_unverified_tail_as_closed_exposure() -> None:
    _, out = fold(CallBuilder().setup().answered(2000, "no_timer").terminated(62_000, "no_timer_limit",
                                                                               "system").events)
    (cdr,) = [e.cdr_fields for e in out if isinstance(e, EmitCdr)]
    assert cdr["exposure_ms"] == cdr["unverified_ms"] == 60_000
    assert cdr["exposure_open"] is False and cdr["closed_by"] == "node"
    _, out = fold(CallBuilder().setup().answered(2000).terminated(62_000).events)
    (cdr,) = [e.cdr_fields for e in out if isinstance(e, EmitCdr)]
    assert cdr["exposure_ms"] == 0 and cdr["verified_ms"] == cdr["duration_ms"]


def test_first_close_wins_late_terminated_emits_no_second_cdr() -> None:
    b = CallBuilder().setup().answered(2000)
    st, _ = fold(b.events)
    st, out = on_node_lost(st, T0 + 100_000)
    cdr_before = next(e.cdr_fields for e in out if isinstance(e, EmitCdr))
    st, fx = apply(st, b.terminated(99_000).events[-1], P)
    assert fx == [] and st.end_reason == "orphaned"
    assert on_node_lost(st, T0 + 200_000)[1] == []
    from pipeline.domain.cdr import cdr_fields

    assert cdr_fields(st) == cdr_before


def test_orphaned_unanswered_call_ends_at_last_event() -> None:
    st, _ = fold(CallBuilder().setup().routed().progress(700).events)
    st, out = on_node_lost(st, T0 + 999_999)
    (cdr,) = [e.cdr_fields for e in out if isinstance(e, EmitCdr)]
    validate_cdr(cdr)
    assert cdr["end_ts"] == "2026-11-25T10:00:00.700Z" and cdr["duration_ms"] == 0 and cdr["zombie"]
    assert cdr["exposure_ms"] == 0 and cdr["exposure_open"]  # nobody ended it: the carrier may answer yet


def test_pending_call_is_not_orphaned() -> None:
    st, _ = apply(None, CallBuilder().setup().routed().events[1], P)
    assert on_node_lost(st, T0 + 10**7) == (st, [])
