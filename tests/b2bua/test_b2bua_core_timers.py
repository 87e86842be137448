"""RFC 4028 per leg, duration caps and liveness probes in the sans-I/O core (fake clock)."""

from __future__ import annotations

from test_b2bua_core_harness import (
    CALLER,
    GW1,
    SDP_B,
    Call,
    Harness,
    answer,
    caller_invite,
    labels,
    only,
    select,
)

from b2bua.sip.message import Request


def timer_invite(
    se: int, refresher: str | None = None, *, branch: str = "z9hG4bKc1", cseq: int = 1
) -> Request:
    value = f"{se};refresher={refresher}" if refresher else str(se)
    return caller_invite(
        branch=branch,
        cseq=cseq,
        headers=[("Supported", "timer"), ("Session-Expires", value), ("Min-SE", str(se))],
    )


def finish_byes(h: Harness, out: list) -> None:
    for m, d in out:
        if isinstance(m, Request) and m.method == "BYE":
            h.feed(answer(m, 200), d)


def test_peer_refresher_silent_gets_bye_on_both_legs_and_no_timer_fires_after() -> None:
    h = Harness()
    c = Call(h, invite=timer_invite(90, "uac"))
    assert c.ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert c.ok.headers.get("Require") == "timer"
    answered = h.event("call.answered")
    assert answered["timer_mode"] == "session_timer" and answered["session_expires"] == 90
    assert answered["refresher"] == {"caller": "peer", "carrier": None}
    assert (answered["effective_limit_s"], answered["limit_source"]) == (None, "none")

    assert h.advance(59.5) == []
    out = h.advance(0.55)  # RFC 4028 §10: expiry at SE - min(32, SE/3) = 60 s
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    assert [e["cause"] for e in h.events if e["type"] == "session.refresh_failed"] == ["expired"]
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"]) == ("session_expired", "system")
    finish_byes(h, out)
    assert h.call_timers() == []
    assert h.advance(1000) == []
    # A stale deadline delivered after the end is a no-op.
    assert h.core.timer_fired(("call", c.call_id, "st:caller"), h.now) == []


def test_peer_refreshes_keep_the_call_up_past_the_first_expiry() -> None:
    h = Harness()
    c = Call(h, invite=timer_invite(90, "uac"))
    for _ in range(3):
        h.advance(40)
        update = c.caller.create_update(
            branch=f"z9hG4bKu{h.now:.0f}",
            content_type=None,
            headers=[("Session-Expires", "90;refresher=uac"), ("Supported", "timer")],
        )
        ok = only(h.feed(update), CALLER, status=200)
        assert ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert h.now == 120 and h.core.active_calls == 1
    refreshed = [e for e in h.events if e["type"] == "session.refreshed"]
    assert [(e["leg"], e["method"], e["session_expires"]) for e in refreshed] == [
        ("caller", "UPDATE", 90)
    ] * 3
    assert refreshed[-1]["expires_at"].startswith("2026-")


def test_b2bua_refreshes_the_caller_by_update_and_hangs_up_when_it_stops_answering() -> None:
    h = Harness()
    c = Call(h, invite=timer_invite(90, "uas"))
    assert c.ok.headers.get("Session-Expires") == "90;refresher=uas"
    assert h.event("call.answered")["refresher"]["caller"] == "b2bua"
    out = h.advance(45)
    update = only(out, CALLER, method="UPDATE")
    assert update.headers.get("Session-Expires") == "90;refresher=uac"
    assert update.call_id == c.invite.call_id and update.from_.tag == c.ok.to.tag
    h.feed(
        answer(update, 200, tag=c.invite.from_.tag or "", headers=[("Session-Expires", "90;refresher=uac")])
    )
    assert [e["leg"] for e in h.events if e["type"] == "session.refreshed"] == ["caller"]
    out = h.advance(45)
    assert select(out, CALLER, method="UPDATE")
    out = h.advance(40)  # the UPDATE times out (64*T1 = 32 s): refresh failed, BYE both legs
    assert sorted(set(labels(select_byes(out)))) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    failed = h.event("session.refresh_failed")
    assert (failed["leg"], failed["method"], failed["cause"]) == ("caller", "UPDATE", "timeout")
    assert h.event("call.terminated")["reason"] == "session_refresh_failed"


def select_byes(out: list) -> list:
    return [(m, d) for m, d in out if isinstance(m, Request) and m.method == "BYE"]


def test_b2bua_refreshes_a_timer_carrier_by_reinvite_and_a_481_ends_the_call() -> None:
    h = Harness({"sip": {"refresh_method": "update"}})
    c = Call(h, carrier_headers=[("Session-Expires", "100"), ("Require", "timer")])
    answered = h.event("call.answered")
    assert answered["refresher"] == {"caller": None, "carrier": "b2bua"}
    assert answered["limit_source"] == "no_timer_max_duration"
    out = h.advance(50)
    reinvite = only(out, GW1, method="INVITE")  # no Allow: UPDATE from the carrier -> re-INVITE
    assert reinvite.body == c.invite.body and reinvite.headers.get("Session-Expires") == "100;refresher=uac"
    out = h.feed(answer(reinvite, 200, body=SDP_B, headers=[("Session-Expires", "100;refresher=uac")]), GW1)
    assert labels(out) == ["ACK -> 10.0.0.2"]
    assert h.event("session.refreshed")["leg"] == "carrier"
    out = h.advance(50)
    second = only(out, GW1, method="INVITE")
    out = h.feed(answer(second, 481), GW1)
    # BYE both legs, even the one that said 481: a half-dead dialog must not linger anywhere.
    assert sorted(labels(select_byes(out))) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    failed = h.event("session.refresh_failed")
    assert (failed["leg"], failed["status"], failed["cause"]) == ("carrier", 481, "status")


def test_caller_422_then_retry_and_carrier_422_retry() -> None:
    h = Harness()
    out = h.feed(timer_invite(30, "uac"))
    too_small = only(out, CALLER, status=422)
    assert too_small.headers.get("Min-SE") == "90"
    assert h.events == []  # an intermediate step: no call yet
    out = h.feed(timer_invite(90, "uac", branch="z9hG4bKc2", cseq=2))
    carrier_invite = only(out, GW1, method="INVITE")
    assert carrier_invite.headers.get("Session-Expires") == "120"
    out = h.feed(answer(carrier_invite, 422, headers=[("Min-SE", "300")]), GW1)
    retry = only(out, GW1, method="INVITE")
    assert retry.call_id == carrier_invite.call_id and retry.cseq.num == 2
    assert retry.headers.get("Session-Expires") == "300" and retry.headers.get("Min-SE") == "300"
    assert h.types() == ["call.setup", "call.routed"]


def test_no_timer_cap_hangs_up_both_legs() -> None:
    h = Harness({"timers": {"no_timer_max_duration": 100}})
    Call(h)
    answered = h.event("call.answered")
    assert (answered["timer_mode"], answered["effective_limit_s"], answered["limit_source"]) == (
        "no_timer",
        100,
        "no_timer_max_duration",
    )
    assert h.advance(99) == []
    out = h.advance(1)
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    assert h.event("call.terminated")["reason"] == "no_timer_limit"


def test_max_duration_shorter_than_the_session_timer_wins() -> None:
    h = Harness({"timers": {"max_call_duration": 50}})
    Call(h, invite=timer_invite(90, "uac"))
    answered = h.event("call.answered")
    assert (answered["effective_limit_s"], answered["limit_source"]) == (50, "max_call_duration")
    out = h.advance(50)
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    assert h.event("call.terminated")["reason"] == "max_duration_limit"


def test_liveness_probes_on_legs_without_timers() -> None:
    h = Harness({"timers": {"liveness_probe_interval": 20}})
    Call(h)
    out = h.advance(20)
    assert sorted(labels(out)) == ["OPTIONS -> 10.0.0.1", "OPTIONS -> 10.0.0.2"]
    for m, d in out:
        h.feed(answer(m, 200, tag=m.to.tag or ""), d)
    assert sorted(e["leg"] for e in h.events if e["type"] == "liveness.probe_succeeded") == [
        "caller",
        "carrier",
    ]
    out = h.advance(20)
    probe = only(out, GW1, method="OPTIONS")
    out = h.feed(answer(probe, 481, tag=probe.to.tag or ""), GW1)
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    failed = h.event("liveness.probe_failed")
    assert (failed["leg"], failed["status"], failed["cause"]) == ("carrier", 481, "status")
    assert h.event("call.terminated")["reason"] == "liveness_probe_failed"
