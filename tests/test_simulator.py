"""The traffic simulator speaking real SIP over UDP on loopback: against SIPp and against itself.

SIPp is the independent peer: a simulator caller must satisfy SIPp carrier scenarios and a
simulator carrier must satisfy SIPp caller scenarios. Then callers and carriers of the simulator
run a full behaviour mix against each other (no B2BUA), which is what the demo relies on.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sip_harness import SippProcess, SippResult
from sip_harness.fixtures import start_caller, start_carrier

from b2bua.sip.transaction import TimerConfig
from sipledger.simulator import (
    Caller,
    CallerBehaviour,
    Carrier,
    CarrierBehaviour,
    MixEntry,
    TrafficPlan,
    callee_number,
    carrier_kind_from_callee,
    run_traffic,
    start_carriers,
    summarize,
)

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
# Short transaction timers so a silent peer (no_answer) times out within seconds.
FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5, timer_d=0.5)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_sipp(proc: SippProcess, timeout: float = 15.0) -> SippResult:
    return await asyncio.to_thread(proc.wait, timeout)


# -- simulator caller -> SIPp carrier ------------------------------------------------------------


def test_caller_no_timer_bye_against_sipp_uas(tmp_path: Path) -> None:
    uas = start_carrier("uas_answer_wait_bye", workdir=tmp_path, timeout_s=15)

    async def scenario() -> tuple[Any, SippResult]:
        async with Caller("phone", number="1001") as caller:
            outcome = await caller.place_call(
                (LOOPBACK, uas.local_port), "4420001", CallerBehaviour("no_timer_bye", talk_time=0.3)
            )
            return outcome, await wait_sipp(uas)

    with uas:
        outcome, result = run(scenario())
    assert result.ok, result.describe()
    assert result.first_line_sequence("received") == ["INVITE", "ACK", "BYE"]
    invite = result.requests("INVITE", "received")[0]
    assert invite.header("Session-Expires") is None and invite.body.startswith("v=0")
    assert outcome.answered and outcome.status == 200
    assert outcome.ended_by == "caller" and outcome.end_reason == "talk time over"
    assert outcome.bye_status == 200
    assert outcome.talk_time is not None and 0.25 < outcome.talk_time < 2.0


@pytest.mark.parametrize("method", ["update", "invite"])
def test_caller_timer_refresh_against_sipp_uas(tmp_path: Path, method: str) -> None:
    se = 2  # refresh every se/2 = 1 s
    uas = start_carrier("uas_answer_refreshes", workdir=tmp_path, timeout_s=15)
    behaviour = CallerBehaviour(
        "timer_refresh", talk_time=3.5, session_expires=se, min_se=1, refresh_method=method
    )  # type: ignore[arg-type]

    async def scenario() -> tuple[Any, SippResult]:
        async with Caller("phone") as caller:
            outcome = await caller.place_call((LOOPBACK, uas.local_port), "4420002", behaviour)
            return outcome, await wait_sipp(uas)

    with uas:
        outcome, result = run(scenario())
    assert result.ok, result.describe()
    wire = method.upper()
    invite = result.requests("INVITE", "received")[0]
    assert invite.session_expires() == (se, "uac")
    assert "timer" in (invite.header("Supported") or "")
    received = result.requests(wire, "received")
    refreshes = received[1:] if wire == "INVITE" else received  # the first INVITE is the call itself
    assert len(refreshes) == 3, result.describe()
    assert result.log_lines() == [f"refresh={wire}"] * 3
    for refresh in refreshes:
        assert refresh.session_expires() == (se, "uac")
    stamps = [invite.timestamp, *(r.timestamp for r in refreshes)]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]  # type: ignore[operator]
    assert all(0.8 < g < 1.4 for g in gaps), gaps
    assert outcome.answered and outcome.ended_by == "caller" and outcome.bye_status == 200
    assert outcome.session_expires == se and outcome.refresher == "uac"
    assert outcome.refreshes_sent == outcome.refreshes_answered == 3


def test_caller_answers_digest_challenge(tmp_path: Path) -> None:
    uas = start_carrier("selftest_uas_auth", workdir=tmp_path, timeout_s=15)

    async def scenario() -> tuple[Any, SippResult]:
        async with Caller("pbx", number="2000", username="alice", password="secret") as caller:
            outcome = await caller.place_call(
                (LOOPBACK, uas.local_port), "4420003", CallerBehaviour("no_timer_bye", talk_time=0.2)
            )
            return outcome, await wait_sipp(uas)

    with uas:
        outcome, result = run(scenario())
    assert result.ok, result.describe()
    assert result.log_lines() == ["auth_valid=true"]
    first, second = result.requests("INVITE", "received")
    assert first.cseq is not None and second.cseq is not None and second.cseq[0] == first.cseq[0] + 1
    assert second.call_id == first.call_id and second.tag("From") == first.tag("From")
    assert outcome.auth_challenges == 1 and outcome.answered and outcome.ended_by == "caller"


# -- SIPp caller -> simulator carrier ------------------------------------------------------------


async def _sipp_against_carrier(
    tmp_path: Path, scenario: str, callee: str, carrier: Carrier, **kwargs: Any
) -> SippResult:
    async with carrier:
        proc = start_caller(
            scenario, f"{LOOPBACK}:{carrier.port}", workdir=tmp_path, service=callee, timeout_s=15, **kwargs
        )
        with proc:
            result = await wait_sipp(proc)
        await asyncio.sleep(0.1)  # let the carrier's call script record the end
        return result


def test_sipp_basic_call_to_carrier_answer(tmp_path: Path) -> None:
    carrier = Carrier("gw-a", CarrierBehaviour("answer", ring_delay=0.3))
    result = run(_sipp_against_carrier(tmp_path, "uac_basic_bye", "4420004", carrier, pause_ms=300))
    assert result.ok, result.describe()
    assert result.first_line_sequence("received") == ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
    ok = result.responses(200, "received", method="INVITE")[0]
    assert ok.body.startswith("v=0") and ok.header("Contact")
    assert ok.tag("To") == result.responses(180, "received")[0].tag("To")
    (record,) = carrier.records
    assert record.behaviour == "answer" and record.answered and record.final_status == 200
    assert record.ended_by == "remote" and record.end_reason == "BYE received"


def test_sipp_busy_from_callee_code(tmp_path: Path) -> None:
    # No picker: the behaviour comes from the callee number's two-digit code.
    callee = callee_number("4420", 5, "busy")
    assert carrier_kind_from_callee(callee) == "busy"
    carrier = Carrier("gw-b")
    result = run(_sipp_against_carrier(tmp_path, "uac_expect_486", callee, carrier))
    assert result.ok, result.describe()
    assert "final_status=486 (SIP/2.0 486)" in result.log_lines()
    (record,) = carrier.records
    assert record.behaviour == "busy" and record.final_status == 486 and not record.answered


def test_sipp_cancel_to_ring_forever(tmp_path: Path) -> None:
    carrier = Carrier("gw-c", lambda invite: "ring_forever")
    result = run(_sipp_against_carrier(tmp_path, "uac_cancel", "4420006", carrier, pause_ms=300))
    assert result.ok, result.describe()
    assert result.responses(487, "received", method="INVITE")
    assert result.responses(200, "received", method="CANCEL")
    assert not result.responses(200, "received", method="INVITE")
    (record,) = carrier.records
    assert record.cancelled and record.final_status == 487 and record.ended_by == "cancel"


# -- simulator caller -> simulator carrier ---------------------------------------------------------

EXPECTED = {
    # (caller, carrier): (answered, ended_by, status)
    ("no_timer_bye", "answer"): (True, "caller", 200),
    ("timer_refresh", "answer"): (True, "caller", 200),
    ("timer_uas_refresher", "answer"): (True, "caller", 200),
    ("no_timer_bye", "answer_then_bye"): (True, "remote", 200),
    ("no_timer_bye", "busy"): (False, "rejected", 486),
    ("no_timer_bye", "fail"): (False, "rejected", 503),
    ("cancel", "ring_forever"): (False, "cancel", 487),
    ("no_timer_bye", "no_answer"): (False, "timeout", None),
    # The carrier does not refresh (the caller asked to) and tears the session down at expiry.
    ("timer_silent", "answer"): (True, "remote", 200),
    # Nobody but a B2BUA cap would end this one: the caller watches and reports a survivor.
    ("no_timer_vanish", "answer"): (True, "none", 200),
}


def test_mix_caller_to_carrier_direct() -> None:
    plan = TrafficPlan(
        calls=20,
        window=1.0,
        seed=11,
        mix=tuple(MixEntry(c, g, 1) for c, g in EXPECTED),  # type: ignore[arg-type]
        callee_prefix="4430",
        talk_time=(3.6, 4.0),
        carrier_ring=(0.1, 0.3),
        cancel_after=(0.2, 0.4),
        session_expires=3,
        min_se=1,
        reinvite_share=0.5,
        open_refresher_share=0.0,
        watch_time=4.0,
        timeout=20.0,
    )
    seen: list[int] = []

    async def scenario() -> tuple[list[Any], dict[str, Carrier], list[Any]]:
        carriers = await start_carriers(["gw-1"], timers=FAST, max_call_time=8.0)
        gw = carriers["gw-1"]
        callers = [await Caller(f"c{i}", number=f"100{i}", timers=FAST).start() for i in range(2)]
        try:
            outcomes = await run_traffic(
                gw.address, plan, carriers, callers, progress=lambda o, done, total: seen.append(done)
            )
            await asyncio.sleep(0.3)
            return outcomes, carriers, list(gw.records)
        finally:
            for c in callers:
                await c.close()
            await gw.close()

    outcomes, _, records = run(scenario(), timeout=40)
    assert len(outcomes) == 20 and sorted(seen) == list(range(1, 21))
    assert {(o.behaviour, o.carrier_behaviour) for o in outcomes} == set(EXPECTED)
    for o in outcomes:
        answered, ended_by, status = EXPECTED[(o.behaviour, o.carrier_behaviour)]  # type: ignore[index]
        assert (o.answered, o.ended_by, o.status) == (answered, ended_by, status), o
    by_kind = {o.behaviour: o for o in outcomes if o.carrier_behaviour == "answer"}
    refresh = by_kind["timer_refresh"]
    assert refresh.refresher == "uac" and refresh.refreshes_sent >= 2
    assert refresh.refreshes_answered == refresh.refreshes_sent
    uas_refresher = by_kind["timer_uas_refresher"]
    # The carrier was made refresher and refreshed every se/2; the caller answered each one.
    assert uas_refresher.refresher == "uas" and uas_refresher.refreshes_sent == 0
    assert uas_refresher.refreshes_received >= 2
    silent = by_kind["timer_silent"]
    assert silent.ignored and silent.ignored[0] == "BYE" and silent.refreshes_sent == 0
    assert by_kind["no_timer_vanish"].ignored == []
    # The carrier side agrees.
    carrier_view = {(r.call_id): r for r in records}
    for o in outcomes:
        if o.carrier_behaviour == "answer_then_bye":
            assert carrier_view[o.call_id].ended_by == "carrier"
        if o.behaviour == "timer_silent":
            assert carrier_view[o.call_id].end_reason == "session expired"
    summary = summarize(outcomes)
    assert summary["calls"] == 20 and summary["answered"] == 12


def test_global_timeout_aborts_and_cleans_up() -> None:
    plan = TrafficPlan(
        calls=3,
        window=0.0,
        mix=(MixEntry("no_timer_bye", "ring_forever"),),
        answer_timeout=60.0,
        timeout=1.0,
        drain=2.0,
    )

    async def scenario() -> tuple[list[Any], Carrier]:
        carriers = await start_carriers({"gw": None}, max_call_time=30.0)
        caller = await Caller("impatient").start()
        try:
            outcomes = await run_traffic(f"{LOOPBACK}:{carriers['gw'].port}", plan, carriers, [caller])
            await asyncio.sleep(0.3)
            return outcomes, carriers["gw"]
        finally:
            await caller.close()
            await carriers["gw"].close()

    outcomes, gw = run(scenario())
    assert [o.ended_by for o in outcomes] == ["aborted"] * 3
    # Aborting a ringing call sends CANCEL: the carrier saw every call cancelled.
    assert [r.ended_by for r in gw.records] == ["cancel"] * 3


def test_bad_datagrams_are_dropped() -> None:
    async def scenario() -> tuple[Any, int]:
        async with Carrier("gw", "answer") as gw, Caller("phone") as caller:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00\xffgarbage\r\n\r\n", gw.address)
                s.sendto(b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\n\r\n", gw.address)
                s.sendto(b"SIP/2.0 200 OK\r\nCSeq: x\r\n\r\n", caller.address)
            await asyncio.sleep(0.1)
            outcome = await caller.place_call(
                gw.address, "4420007", CallerBehaviour("no_timer_bye", talk_time=0.2)
            )
            return outcome, gw.endpoint.stats.bad_datagrams + caller.endpoint.stats.bad_datagrams

    outcome, bad = run(scenario())
    assert bad == 3
    assert outcome.answered and outcome.ended_by == "caller"


def test_plan_is_seeded_and_exact() -> None:
    plan = TrafficPlan(calls=50, seed=3)
    again = TrafficPlan(calls=50, seed=3)
    assert plan.planned_calls() == again.planned_calls()
    assert plan.planned_calls() != TrafficPlan(calls=50, seed=4).planned_calls()
    counts = plan.mix_counts()
    assert sum(counts.values()) == 50
    total = sum(e.weight for e in plan.mix)
    for entry in plan.mix:
        assert abs(counts[(entry.caller, entry.carrier)] - 50 * entry.weight / total) < 1
    calls = plan.planned_calls()
    assert all(0 <= c.at <= plan.window for c in calls)
    assert [c.at for c in calls] == sorted(c.at for c in calls)
    assert all(carrier_kind_from_callee(c.callee) == c.carrier.kind for c in calls)
    assert len({c.callee for c in calls}) == 50
