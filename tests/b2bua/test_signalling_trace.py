"""Call analysis in the sans-I/O core: which calls are recorded, what a record holds (both legs' messages
in order, the memos of each decision), when it is published, and the bounds per call and per node."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest
from test_b2bua_core_harness import (
    CALLER,
    GW1,
    GW2,
    SDP_B,
    WALL,
    Call,
    Harness,
    answer,
    caller_invite,
    only,
)
from test_b2bua_core_takeover import _answered_on_node2, _takeover_cmd
from test_b2bua_core_timers import finish_byes, timer_invite

from b2bua.actions import Action, Address, PublishTrace
from b2bua.signalling_trace import CallTrace, SignallingRecorder, TraceSettings
from b2bua.sip.message import Request
from schemas.validation import validate_signalling


class Traced(Harness):
    """The harness, keeping the records the core publishes (each checked against its schema)."""

    def __init__(self, raw: dict[str, Any] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        super().__init__(raw)

    def apply(self, actions: Iterable[Action]) -> None:
        actions = list(actions)
        for a in actions:
            if isinstance(a, PublishTrace):
                validate_signalling(a.record)
                self.records.append(a.record)
        super().apply(actions)


def sampled(**trace: Any) -> Traced:
    return Traced({"trace": {"sample_rate": 1.0, **trace}})


def hang_up(h: Harness, c: Call) -> None:
    out = h.feed(c.caller.create_bye(branch="z9hG4bKbye1"))
    finish_byes(h, out)


def ladder(rec: dict[str, Any]) -> list[str]:
    """Entries as short text: "<leg> <in|out> <first word(s)>" for messages, "memo: ..." for memos."""
    out = []
    for e in rec["entries"]:
        if e["kind"] == "memo":
            out.append(f"memo: {e['text']}")
        else:
            first = e["first_line"]
            what = " ".join(first.split()[1:3]) if first.startswith("SIP/2.0") else first.split()[0]
            out.append(f"{e['leg']} {e['direction']} {what}")
    return out


def memos(rec: dict[str, Any]) -> list[str]:
    return [e["text"] for e in rec["entries"] if e["kind"] == "memo"]


# -- what a record holds ---------------------------------------------------------------------------
def test_a_call_records_both_legs_in_order_with_its_memos_and_is_published_after_the_linger() -> None:
    h = sampled(linger=2.0, bodies=True)
    c = Call(h)
    h.advance(1)
    out = h.feed(c.caller.create_bye(branch="z9hG4bKbye1"))
    assert h.records == []  # the 200 to our BYE is still to come
    bye = only(out, GW1, method="BYE")
    h.advance(0.3)  # before its retransmission (T1 = 0.5 s)
    h.feed(answer(bye, 200), GW1)
    h.advance(1.6)
    assert h.records == []
    h.advance(0.2)
    (rec,) = h.records
    assert ladder(rec) == [
        "caller in INVITE", "caller out 100 Trying",
        "memo: route: prefix '1555' for 15551230000, gateways gw1, gw2 (account acme)",
        "memo: attempt 1 of 2: gateway gw1 (vendor carrier-one) at udp 10.0.0.2:5060",
        "carrier out INVITE", "carrier in 180 Ringing", "caller out 180 Ringing", "carrier in 200 OK",
        "carrier out ACK", "caller out 200 OK",
        "memo: answered by gw1: caller leg without timer; carrier leg without timer",
        "memo: limit armed: 3600 s from timers.no_timer_max_duration, at 2026-05-28T21:26:40.000Z",
        "caller in ACK", "caller in BYE", "caller out 200 OK", "carrier out BYE",
        "memo: call ended: normal_caller_bye by caller", "carrier in 200 OK",
    ]
    assert [e["n"] for e in rec["entries"]] == list(range(1, 19))
    assert (rec["call_id"], rec["node"], rec["account"], rec["selected_by"]) == \
        (c.call_id, "node-1", "acme", "sample")
    assert (rec["end_reason"], rec["failed"], rec["dropped_entries"], rec["local"]) == \
        ("normal_caller_bye", False, 0, "127.0.0.1:5060")
    assert rec["start"] == "2026-05-28T20:26:40.000Z" and rec["end"] == "2026-05-28T20:26:41.000Z"
    first = rec["entries"][0]
    assert (first["transport"], first["remote"], first["sip_call_id"]) == \
        ("udp", "10.0.0.1:5061", "c1@10.0.0.1")
    assert first["first_line"] == "INVITE sip:15551230000@10.0.0.9:5060 SIP/2.0"
    assert "\r\nCall-ID: c1@10.0.0.1\r\n" in first["headers"] and first["body"].startswith("v=0")
    carrier_invite = rec["entries"][4]
    assert (carrier_invite["sip_call_id"], carrier_invite["remote"]) == \
        (c.out_invite.call_id, "10.0.0.2:5060")
    assert rec["entries"][-1]["ts"] == "2026-05-28T20:26:41.300Z"
    assert h.core.trace is not None and h.core.trace.traces == {} and h.core.trace.by_sip == {}


def test_bodies_are_left_out_unless_asked_for_and_messages_received_keep_their_headers() -> None:
    h = sampled(linger=0.0)
    c = Call(h)
    hang_up(h, c)
    h.advance(0.1)
    (rec,) = h.records
    invite = rec["entries"][0]
    assert invite["body"] is None and invite["body_bytes"] == len(c.invite.body)
    # What arrived is recorded as it came, before the core stamps received/rport on its Via.
    assert "Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKc1;rport\r\n" in invite["headers"]


def test_recording_off_holds_no_recorder_and_publishes_nothing() -> None:
    h = Traced()
    assert h.core.trace is None
    c = Call(h)
    hang_up(h, c)
    h.advance(5)
    assert h.records == []


# -- selection -------------------------------------------------------------------------------------
def test_an_account_with_trace_is_always_recorded_and_the_sample_rate_draws_the_rest() -> None:
    accounts = [{"name": "acme", "ips": ["10.0.0.1"], "trace": True}]
    h = Traced({"accounts": accounts})
    c = Call(h)
    hang_up(h, c)
    h.advance(3)
    assert [r["selected_by"] for r in h.records] == ["account"]

    rec = SignallingRecorder(TraceSettings(sample_rate=0.25), "n", Address("127.0.0.1", 5060), 0.0,
                             random.Random(1))
    draws = [rec.select("other") for _ in range(4000)]
    assert set(draws) == {"sample", None}
    assert 900 < draws.count("sample") < 1100
    assert SignallingRecorder(TraceSettings(failed_calls=True), "n", Address("h", 1), 0.0,
                              random.Random(1)).select("x") == "failed_calls"


def test_failed_calls_only_publishes_calls_that_failed_or_failed_over() -> None:
    h = Traced({"trace": {"failed_calls": True, "linger": 0.5}})
    c = Call(h)  # a clean call: recorded, then discarded
    hang_up(h, c)
    h.advance(1)
    assert h.records == [] and h.core.trace is not None and h.core.trace.stats["discarded"] == 1

    out = h.feed(caller_invite(call_id="c2@10.0.0.1", branch="z9hG4bKc2"))  # failover, then answered
    first = only(out, GW1, method="INVITE")
    out = h.feed(answer(first, 503), GW1)
    second = only(out, GW2, method="INVITE")
    h.feed(answer(second, 200, body=SDP_B, contact="<sip:gw@10.0.0.3:5060>"), GW2)
    h.advance(1)
    assert h.records == []  # still up
    call_id = h.events[-1]["call_id"]
    h.command({"command_id": "cmd-1", "type": "call.terminate", "call_id": call_id, "node": "node-1",
               "reason": "pipeline_terminate", "issued_by": "test"})
    h.advance(1)
    (rec,) = h.records
    assert (rec["selected_by"], rec["failed"], rec["end_reason"]) == \
        ("failed_calls", True, "pipeline_terminate")
    assert memos(rec)[2:5] == [
        "attempt 1 to gw1 failed: 503 Service Unavailable; failing over to gw2",
        "attempt 2 of 2: gateway gw2 (vendor gw2) at udp 10.0.0.3:5060",
        "answered by gw2: caller leg without timer; carrier leg without timer",
    ]
    assert "terminate command cmd-1 from test obeyed (pipeline_terminate): BYE on both legs" in memos(rec)

    out = h.feed(caller_invite(call_id="c3@10.0.0.1", branch="z9hG4bKc3", callee="16661230000"))
    h.feed(answer(only(out, GW1, method="INVITE"), 486), GW1)  # busy: an abnormal end
    h.advance(1)
    assert [r["end_reason"] for r in h.records] == ["pipeline_terminate", "busy"]
    assert memos(h.records[1])[-2:] == ["attempt 1 to gw1 failed: 486 Busy Here; not a failover status",
                                        "call ended: busy by callee, SIP 486"]
    assert ladder(h.records[1])[-2:] == ["caller out 486 Busy", "memo: call ended: busy by callee, SIP 486"]


def test_a_refused_call_of_an_account_is_recorded_with_its_refusal() -> None:
    accounts = [{"name": "acme", "ips": ["10.0.0.1"], "max_concurrent_calls": 1}]
    h = Traced({"accounts": accounts, "trace": {"failed_calls": True, "linger": 0.5}})
    Call(h)
    h.feed(caller_invite(call_id="c2@10.0.0.1", branch="z9hG4bKc2"))
    h.advance(1)
    (rec,) = h.records
    assert rec["end_reason"] == "call_limit_exceeded" and rec["failed"]
    assert ladder(rec)[:2] == ["caller in INVITE", "caller out 100 Trying"]
    assert ladder(rec)[2].startswith("caller out ") and memos(rec)[0].startswith("refused: ")


# -- memos of each decision --------------------------------------------------------------------------
def test_refreshes_sent_and_received_and_an_expiry_are_memos() -> None:
    h = sampled(linger=0.0)
    c = Call(h, invite=timer_invite(90, "uas"))  # the B2BUA refreshes the caller
    out = h.advance(45)
    update = only(out, CALLER, method="UPDATE")
    h.feed(answer(update, 200, tag=c.invite.from_.tag or "",
                  headers=[("Session-Expires", "90;refresher=uac")]))
    h.advance(45)  # the next refresh gets no answer: the call ends
    out = h.advance(40)
    finish_byes(h, out)
    h.advance(1)
    (rec,) = h.records
    m = memos(rec)
    assert m[2] == ("answered by gw1: caller leg session timer 90 s, refresher b2bua; carrier leg without "
                    "timer")
    assert m[3] == ("no duration limit armed (timers.max_call_duration and timers.no_timer_max_duration do "
                    "not apply)")
    assert m[4:8] == ["refresh sent on the caller leg (UPDATE, Session-Expires 90)",
                      "refresh on the caller leg (UPDATE) answered 200: session 90 s",
                      "refresh sent on the caller leg (UPDATE, Session-Expires 90)",
                      "refresh failed on the caller leg: UPDATE timeout"]
    assert m[-1].startswith("call ended: session_refresh_failed by system")

    h = sampled(linger=0.0)
    c = Call(h, invite=timer_invite(90, "uac"))
    h.advance(40)
    upd = c.caller.create_update(branch="z9hG4bKu1", content_type=None,
                                 headers=[("Session-Expires", "90;refresher=uac"), ("Supported", "timer")])
    h.feed(upd)
    finish_byes(h, h.advance(70))  # no refresh from the caller any more
    h.advance(1)
    m = memos(h.records[0])
    assert "refresh received on the caller leg (UPDATE): session 90 s, refresher peer" in m
    assert "session of the caller leg expired: no refresh from the peer within 90 s" in m


def test_probes_sent_answered_and_failed_and_a_limit_fired_are_memos() -> None:
    h = Traced({"trace": {"sample_rate": 1.0, "linger": 0.0}, "timers": {"liveness_probe_interval": 20}})
    Call(h)
    out = h.advance(20)
    for msg, dest in out:
        h.feed(answer(msg, 200, tag=msg.to.tag or ""), dest)
    out = h.advance(20)
    probe = only(out, GW1, method="OPTIONS")
    finish_byes(h, h.feed(answer(probe, 481, tag=probe.to.tag or ""), GW1))
    h.advance(1)
    m = memos(h.records[0])
    assert m[4:8] == ["liveness probe sent on the caller leg (OPTIONS)",
                      "liveness probe sent on the carrier leg (OPTIONS)",
                      "liveness probe answered 200 on the caller leg: alive",
                      "liveness probe answered 200 on the carrier leg: alive"]
    assert "liveness probe failed on the carrier leg: 481" in m

    h = Traced({"trace": {"sample_rate": 1.0, "linger": 0.0}, "timers": {"no_timer_max_duration": 100}})
    Call(h)
    finish_byes(h, h.advance(100))
    h.advance(1)
    m = memos(h.records[0])
    assert "limit fired: no_timer_limit after 100.0 s (timers.no_timer_max_duration): BYE on both legs" in m
    assert m[-1] == "call ended: no_timer_limit by system (call duration limit reached)"


def test_a_takeover_records_the_byes_sent_as_the_lost_nodes_dialogs() -> None:
    _, call, dialogs = _answered_on_node2()
    node1 = Traced({"node": {"id": "node-1"}, "trace": {"failed_calls": True, "linger": 0.5}})
    out = node1.command(_takeover_cmd(dialogs, call.call_id))
    node1.feed(answer(only(out, CALLER, method="BYE"), 200), CALLER)
    node1.feed(answer(only(out, GW1, method="BYE"), 481), GW1)
    node1.advance(1)
    (rec,) = node1.records
    assert (rec["call_id"], rec["account"], rec["end_reason"], rec["failed"]) == \
        (call.call_id, "", "orphaned", True)
    assert ladder(rec) == [
        f"memo: takeover of call {call.call_id} of lost node node-2 (command tk-{call.call_id}): BYE on both "
        "legs as its dialogs",
        "caller out BYE", "carrier out BYE", "caller in 200 OK", "carrier in 481 Call/Transaction",
        "memo: takeover done: caller ended (200), carrier gone (481)",
    ]


# -- bounds ----------------------------------------------------------------------------------------
def test_a_long_call_keeps_its_first_and_last_entries_and_counts_the_rest() -> None:
    h = sampled(linger=0.0, max_messages=12)
    c = Call(h, invite=timer_invite(90, "uac"))
    for i in range(10):  # 10 refreshes: 10 x (UPDATE, 200, memo) = 30 entries more
        h.advance(40)
        h.feed(c.caller.create_update(branch=f"z9hG4bKu{i}", content_type=None,
                                      headers=[("Session-Expires", "90;refresher=uac")]))
    hang_up(h, c)
    h.advance(1)
    (rec,) = h.records
    ns = [e["n"] for e in rec["entries"]]
    assert len(ns) == 12 and ns[:6] == [1, 2, 3, 4, 5, 6]
    total = ns[-1]
    assert ns[6:] == list(range(total - 5, total + 1)) and rec["dropped_entries"] == total - 12
    assert ladder(rec)[-2:] == ["memo: call ended: normal_caller_bye by caller", "carrier in 200 OK"]


def test_the_bytes_of_one_call_are_bounded_too() -> None:
    settings = TraceSettings(sample_rate=1.0, max_messages=1000, max_call_bytes=4096,
                             max_buffered_bytes=1 << 20)
    rec = SignallingRecorder(settings, "n", Address("127.0.0.1", 5060), WALL, random.Random(1))
    trace = rec.start("call-1", "acme", "sample", 0.0)
    for i in range(100):
        rec.memo("call-1", float(i), f"memo {i:03d} " + "x" * 100)
    assert trace.bytes <= 4096 and rec.buffered == trace.bytes
    kept = [e[0] for e in trace.entries()]
    assert kept[0] == 1 and kept[-1] == 100 and trace.dropped == 100 - len(kept)


def test_the_node_bound_drops_the_oldest_calls_and_never_a_call() -> None:
    h = Traced({"trace": {"sample_rate": 1.0, "linger": 0.0, "max_call_bytes": 8192,
                          "max_buffered_bytes": 65536}})
    calls = []
    for i in range(40):  # about 3.5 KB each while up: the bound holds about 18 of them
        out = h.feed(caller_invite(call_id=f"c{i}@10.0.0.1", branch=f"z9hG4bKi{i}"))
        ci = only(out, GW1, method="INVITE")
        out = h.feed(answer(ci, 200, body=SDP_B, tag=f"gw{i}"), GW1)
        calls.append(only(out, CALLER, status=200))
    trace = h.core.trace
    assert trace is not None and trace.buffered <= 65536
    assert trace.stats["evicted"] >= 15 and trace.stats["evicted_bytes"] > 0
    assert len(trace.traces) == 40 - trace.stats["evicted"]
    assert h.core.active_calls == 40  # every call still up
    setups = [e["call_id"] for e in h.events if e["type"] == "call.setup"]
    assert list(trace.traces) == setups[trace.stats["evicted"]:]  # the oldest went first
    assert "c0@10.0.0.1" not in trace.by_sip  # an evicted call's messages are not recorded any more


def test_a_record_of_a_call_never_started_is_nothing() -> None:
    rec = SignallingRecorder(TraceSettings(sample_rate=1.0), "n", Address("127.0.0.1", 5060), 0.0,
                             random.Random(1))
    assert rec.flush("nope") is None and rec.end("nope", 1.0, "busy") is False
    rec.memo("nope", 1.0, "ignored")
    rec.seen_out(Request("OPTIONS", "sip:x", [("Call-ID", "zz")]), b"OPTIONS sip:x SIP/2.0\r\n\r\n",
                 Address("h", 1), 1.0)
    assert rec.buffered == 0 and isinstance(CallTrace("a", "b", "c", 0.0).entries(), list)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_message_is_recorded_with_its_transport(transport: str) -> None:
    h = sampled(linger=0.0)
    invite = caller_invite()
    h.apply(h.core.receive(invite, Address("10.0.0.1", 5061, transport), h.now))
    h.take()
    call_id = h.events[0]["call_id"]
    h.command({"command_id": "x", "type": "call.terminate", "call_id": call_id, "node": "node-1",
               "reason": "pipeline_terminate", "issued_by": "t"})
    h.advance(1)
    assert h.records[0]["entries"][0]["transport"] == transport
