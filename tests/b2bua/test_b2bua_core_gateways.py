"""Gateway health in the sans-I/O core: OPTIONS probes, down/up events, routing around down gateways."""

from __future__ import annotations

from typing import Any

from test_b2bua_core_harness import (
    CALLER,
    GW1,
    GW2,
    SDP_B,
    Harness,
    answer,
    caller_invite,
    labels,
    only,
    select,
)

from b2bua.actions import Address
from b2bua.sip.message import Request
from b2bua.sip.serializer import build_response


def probed(**over: Any) -> Harness:
    """gw1 and gw2 probed every second (timeout 0.5 s, down after 2, up after 1)."""
    gw = {"probe": True, "probe_interval": 1.0, "probe_timeout": 0.5, "down_after": 2, "up_after": 1, **over}
    return Harness({"sip": {"invite_timeout": 5.0}, "gateways": [
        {"name": "gw1", "vendor": "carrier-one", "host": "10.0.0.2", "port": 5060, **gw},
        {"name": "gw2", "host": "10.0.0.3", "port": 5060, **gw},
    ]})


def options_to(out: list[tuple[Any, Address]], dest: Address) -> list[Request]:
    return select(out, dest, method="OPTIONS")


def reply(h: Harness, req: Request, status: int, source: Address) -> list[tuple[Any, Address]]:
    return h.feed(build_response(req, status, to_tag="gw-probe"), source)


def gateway_events(h: Harness) -> list[dict[str, Any]]:
    return [e for e in h.events if e["type"].startswith("gateway.")]


def run(h: Harness, seconds: float, answering: tuple[Address, ...] = ()) -> list[tuple[Any, Address]]:
    """Advance in 0.1 s steps; the gateways in ``answering`` answer their probes 200 at once."""
    out: list[tuple[Any, Address]] = []
    for _ in range(round(seconds * 10)):
        step = h.advance(0.1)
        out += step
        for dest in answering:
            for req in options_to(step, dest):
                out += reply(h, req, 200, dest)
    return out


def test_probes_go_out_at_start_from_the_b2bua_and_the_first_answer_reports_up() -> None:
    h = probed()
    out = h.advance(0.1)
    (o1,), (_,) = options_to(out, GW1), options_to(out, GW2)
    assert o1.uri == "sip:10.0.0.2:5060" and o1.top_via.transport == "UDP"
    assert o1.headers.get("Via", "").startswith("SIP/2.0/UDP 127.0.0.1:5060;")  # the B2BUA's own address
    assert reply(h, o1, 200, GW1) == []
    (up,) = gateway_events(h)
    assert up["call_id"] == "gateway:node-1:gw1" and up["seq"] == 1 and up["schema_version"] == 2
    assert (up["type"], up["gateway"], up["vendor"], up["address"], up["transport"], up["previous"],
            up["status"], up["down_since"], up["cause"]) == ("gateway.up", "gw1", "carrier-one",
                                                              "10.0.0.2:5060", "udp", "unknown", 200, None,
                                                              "probe_answer")
    assert up["rtt_ms"] is not None and up["rtt_ms"] >= 0
    # The next probe goes out one interval after the first, and an answered gateway stays quiet.
    out = h.advance(1.0)
    assert len(options_to(out, GW1)) == 1
    reply(h, options_to(out, GW1)[0], 200, GW1)
    assert len(gateway_events(h)) == 1


def test_silent_gateway_goes_down_and_calls_go_to_the_next_one_at_once() -> None:
    h = probed()
    run(h, 0.5, (GW1, GW2))
    run(h, 2.0, (GW2,))  # gw1's probes at 1.0 and 2.0 s go unanswered: down at 2.5 s
    down = [e for e in gateway_events(h) if e["type"] == "gateway.down"]
    assert len(down) == 1
    d = down[0]
    assert (d["gateway"], d["cause"], d["losses"], d["status"], d["last_status"], d["down_after"],
            d["probe_interval_s"]) == ("gw1", "probe_timeout", 2, None, 200, 2, 1.0)
    assert d["last_answer"] is not None and d["last_rtt_ms"] is not None
    assert any(log.level == "warning" and "gateway gw1 (udp 10.0.0.2:5060) DOWN" in log.text
               for log in h.logs)
    # A call now goes straight to gw2: no INVITE to gw1, no invite_timeout to wait for.
    out = h.feed(caller_invite())
    assert select(out, GW1, method="INVITE") == []
    ci = only(out, GW2, method="INVITE")
    routed = [e for e in h.events if e["type"] == "call.routed"]
    assert [(e["vendor"], e["attempt"]) for e in routed] == [("gw2", 1)]
    out = h.feed(answer(ci, 200, body=SDP_B), GW2)
    assert only(out, CALLER, status=200)
    # The down gateway is still probed, and one answer (up_after 1) brings it back.
    out = h.advance(0.6)
    (o,) = options_to(out, GW1)
    reply(h, o, 200, GW1)
    up = [e for e in gateway_events(h) if e["gateway"] == "gw1"][-1]
    assert (up["type"], up["previous"]) == ("gateway.up", "down") and up["down_since"] == d["ts"]
    assert [e["seq"] for e in gateway_events(h) if e["gateway"] == "gw1"] == [1, 2, 3]
    out = h.feed(caller_invite(call_id="c2@10.0.0.1", branch="z9hG4bKc2"))
    assert only(out, GW1, method="INVITE")


def test_every_gateway_down_answers_503_at_once_and_the_call_says_why() -> None:
    h = probed()
    run(h, 2.0)
    assert {e["gateway"] for e in gateway_events(h) if e["type"] == "gateway.down"} == {"gw1", "gw2"}
    out = h.feed(caller_invite())
    assert labels(out) == ["100 INVITE -> 10.0.0.1", "503 INVITE -> 10.0.0.1"]
    assert only(out, status=503).reason == "All Gateways Down"
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"], term["sip_status"]) == ("no_route", "system", 503)
    assert "all 2 gateways of prefix '1555' are down: gw1 since " in term["detail"]
    assert "gw2 since" in term["detail"]
    of_call = [e["type"] for e in h.events if e["call_id"] == term["call_id"]]
    assert of_call == ["call.setup", "call.terminated"]
    assert h.core.gateway_table.health["gw1"].skipped == 1


def test_a_call_waiting_on_a_gateway_that_goes_down_moves_on_at_once() -> None:
    h = probed()
    out = h.advance(0.1)  # first probes out; gw1 stays silent, gw2 answers
    reply(h, options_to(out, GW2)[0], 200, GW2)
    out = h.feed(caller_invite())
    only(out, GW1, method="INVITE")  # gw1 is not judged yet: routable
    out = h.advance(1.0)
    for req in options_to(out, GW2):
        reply(h, req, 200, GW2)
    out = h.advance(0.5)  # gw1's second probe times out at 1.5 s: down, and the call moves on
    ci = only(out, GW2, method="INVITE")
    routed = [e for e in h.events if e["type"] == "call.routed"]
    assert [(e["vendor"], e["attempt"]) for e in routed] == [("carrier-one", 1), ("gw2", 2)]
    assert routed[1]["ts"].endswith(":41.500Z")  # WALL + 1.5 s, not the 5 s invite timeout
    out = h.feed(answer(ci, 200, body=SDP_B), GW2)
    assert only(out, CALLER, status=200)


def test_failover_skips_a_gateway_known_down() -> None:
    h = probed()
    # gw2 down, gw1 answering: a 503 of gw1 goes to the caller instead of a doomed attempt at gw2.
    run(h, 2.0, (GW1,))
    assert not h.core.gateway_table.usable("gw2") and h.core.gateway_table.usable("gw1")
    ci = only(h.feed(caller_invite()), GW1, method="INVITE")
    out = h.feed(answer(ci, 503), GW1)
    assert select(out, GW2, method="INVITE") == []
    assert only(out, CALLER, status=503)


def test_invite_timeouts_are_evidence_too() -> None:
    """Probes rare (60 s): two calls whose INVITEs to gw1 time out take it down; the third skips it."""
    h = probed(probe_interval=60.0, probe_timeout=0.5)
    out = h.advance(0.1)
    for dest in (GW1, GW2):
        reply(h, options_to(out, dest)[0], 200, dest)
    for n in (1, 2):
        out = h.feed(caller_invite(call_id=f"c{n}@10.0.0.1", branch=f"z9hG4bKc{n}"))
        only(out, GW1, method="INVITE")
        out = h.advance(5.0)  # invite_timeout: failover to gw2
        ci = only(out, GW2, method="INVITE")
        h.feed(answer(ci, 486, tag=f"busy{n}"), GW2)
    down = [e for e in gateway_events(h) if e["type"] == "gateway.down"]
    assert [(e["gateway"], e["cause"], e["losses"]) for e in down] == [("gw1", "invite_timeout", 2)]
    out = h.feed(caller_invite(call_id="c3@10.0.0.1", branch="z9hG4bKc3"))
    assert select(out, GW1, method="INVITE") == [] and only(out, GW2, method="INVITE")


def test_a_refused_status_counts_against_the_gateway_only_when_reply_codes_say_so() -> None:
    h = probed()
    for _ in range(3):
        out = h.advance(1.0)
        for req in options_to(out, GW1):
            reply(h, req, 404, GW1)  # a carrier refusing OPTIONS of a peer it does not know: alive
    assert h.core.gateway_table.usable("gw1")
    h2 = probed(probe_reply_codes=["2xx"])
    for _ in range(2):
        out = h2.advance(1.0)
        for req in options_to(out, GW1):
            reply(h2, req, 404, GW1)
    d = next(e for e in gateway_events(h2) if e["type"] == "gateway.down" and e["gateway"] == "gw1")
    assert (d["cause"], d["status"]) == ("probe_status", 404)


def test_tcp_gateways_are_probed_over_tcp() -> None:
    h = probed(transport="tcp")
    out = h.advance(0.1)
    (o,) = options_to(out, GW1)
    dest = next(d for m, d in out if m is o)
    assert dest.transport == "tcp" and o.top_via.transport == "TCP" and o.uri.endswith(";transport=tcp")


def test_probes_that_the_gateway_never_answers_leave_nothing_behind() -> None:
    h = probed()
    h.advance(30.0)
    table = h.core.gateway_table
    assert len(table.in_flight) <= 2 and len(h.core.layer.transactions) <= 2 + 2
    assert table.health["gw1"].probes_lost == 30
    # A late answer to an abandoned probe is a stray: ignored, nothing breaks.
    assert h.core.stats["internal_errors"] == 0


def test_a_call_whose_last_gateway_goes_down_while_it_waits_ends_at_once() -> None:
    """Both gateways silent from the start: the call tries gw1 (not judged yet), moves to gw2 when gw1 goes
    down, and ends with 408 when gw2 goes down too, long before the 5 s INVITE timeout."""
    h = probed()
    h.advance(0.1)  # first probes out; nobody answers
    only(h.feed(caller_invite()), GW1, method="INVITE")
    out = h.advance(1.5)  # the second probes time out: gw1, then gw2 down
    only(out, GW2, method="INVITE")
    assert only(out, CALLER, status=408)
    term = next(e for e in h.events if e["type"] == "call.terminated")
    assert (term["reason"], term["sip_status"]) == ("response_timeout", 408)
    assert term["detail"] == "gateway gw2 went down while the call waited for its answer"
    assert [e["gateway"] for e in gateway_events(h) if e["type"] == "gateway.down"] == ["gw1", "gw2"]
    # The next call is refused at once: every gateway of the route is down.
    out = h.feed(caller_invite(call_id="c2@10.0.0.1", branch="z9hG4bKc2"))
    assert only(out, CALLER, status=503) and select(out, GW1, method="INVITE") == []
