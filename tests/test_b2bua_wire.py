"""Real SIPp peers through the real B2BUA (asyncio in a thread, UDP/TCP on a free port).

Each test starts its own B2BUA with a scaled-down configuration (T1 = 100 ms, Session-Expires of a
few seconds), carrier SIPp scenarios as gateways and a caller SIPp scenario, then asserts on what
each side saw on the wire (SIPp message traces) and on the events in the B2BUA's journal.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sip_harness.b2bua_runner import RunningB2BUA
from sip_harness.fixtures import start_caller, start_carrier
from sip_harness.sipp import SippProcess, SippResult

pytestmark = pytest.mark.sipp

CALLEE = "15551230000"


def carrier(tmp_path: Path, scenario: str, **kw: Any) -> SippProcess:
    kw.setdefault("timeout_s", 20)
    if kw.get("transport") != "t1":
        return start_carrier(scenario, workdir=tmp_path, **kw)
    # The harness waits for a UDP bind; a TCP-only SIPp is waited for here.
    proc = SippProcess(scenario, workdir=tmp_path / f"carrier_{scenario}", **kw).start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((proc.local_ip, proc.local_port))
            except OSError:
                return proc
        time.sleep(0.02)
    proc.stop()
    raise TimeoutError(f"{scenario} did not listen on TCP {proc.address}")


def call(tmp_path: Path, scenario: str, node: RunningB2BUA, **kw: Any) -> SippResult:
    kw.setdefault("timeout_s", 20)
    with start_caller(
        scenario, node.address, workdir=tmp_path, service=kw.pop("service", CALLEE), **kw
    ) as proc:
        return proc.wait()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def only_event(events: list[dict[str, Any]], etype: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == etype]
    assert len(found) == 1, types(events)
    return found[0]


def seq(result: SippResult) -> list[str]:
    return result.first_line_sequence()


def assert_lifecycle(events: list[dict[str, Any]], reason: str, initiator: str) -> dict[str, Any]:
    assert len({e["call_id"] for e in events}) == 1, events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    term = only_event(events, "call.terminated")
    assert (term["reason"], term["initiator"]) == (reason, initiator), term
    assert events[-1]["type"] == "call.terminated" and events[0]["type"] == "call.setup"
    return term


# =============================================================================================
# Basic calls
# =============================================================================================


def test_normal_call_caller_hangs_up(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_basic_bye", node, pause_ms=500)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert seq(caller) == [
        "> INVITE",
        "< 100 INVITE",
        "< 180 INVITE",
        "< 200 INVITE",
        "> ACK",
        "> BYE",
        "< 200 BYE",
    ]
    assert seq(gw) == [
        "< INVITE",
        "> 100 INVITE",
        "> 180 INVITE",
        "> 200 INVITE",
        "< ACK",
        "< BYE",
        "> 200 BYE",
    ]
    # Topology hiding: the legs share no Call-ID, tags or addresses.
    caller_invite, gw_invite = caller.requests("INVITE", "sent")[0], gw.requests("INVITE", "received")[0]
    assert caller_invite.call_id != gw_invite.call_id
    caller_port = caller_invite.header("Via", "").split(":")[-1].split(";")[0]
    assert f":{caller_port}" not in gw_invite.raw
    assert caller_invite.tag("From") != gw_invite.tag("From")
    assert "m=audio" in caller.responses(200, "received", method="INVITE")[0].body
    events = node.wait_terminated()
    assert types(events) == ["call.setup", "call.routed", "call.progress", "call.answered", "call.terminated"]
    assert_lifecycle(events, "normal_caller_bye", "caller")
    routed = only_event(events, "call.routed")
    assert (routed["vendor"], routed["gateway"], routed["attempt"]) == ("vendor1", uas.address, 1)


def test_calls_through_paced_udp_reading(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    """``sip.udp_read_interval_ms`` > 0: the socket is read every 2 ms, all that waits at once, and
    replies go out from the same socket. Ten calls, SIPp on both sides, each with its whole flow."""
    with carrier(tmp_path, "uas_answer_wait_bye", calls=10) as uas:
        node = b2bua([uas.local_port], sip={"udp_read_interval_ms": 2})
        caller = call(tmp_path, "uac_basic_bye", node, calls=10, rate=20, limit=10, pause_ms=100)
        gw = uas.wait(15)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert caller.successful_calls == 10 and caller.failed_calls == 0
    assert gw.successful_calls == 10
    assert caller.first_line_sequence("received").count("200 BYE") == 10


def test_carrier_hangs_up_and_its_bye_gets_200(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_then_bye", pause_ms=500) as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_wait_remote_bye", node)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert gw.responses(200, "received", method="BYE") and not gw.responses(481, "received")
    assert caller.requests("BYE", "received")
    assert_lifecycle(node.wait_terminated(), "normal_callee_bye", "callee")


def test_cancel_while_ringing(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_ring_forever") as uas:
        node = b2bua([uas.local_port], sip={"call_progress_timeout": 10.0})
        caller = call(tmp_path, "uac_cancel", node, pause_ms=500)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert caller.responses(487, "received", method="INVITE") and caller.responses(
        200, "received", method="CANCEL"
    )
    assert gw.requests("CANCEL", "received") and gw.requests("ACK", "received")
    term = assert_lifecycle(node.wait_terminated(), "caller_cancel", "caller")
    assert term["sip_status"] == 487


def test_carrier_busy_is_relayed(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_busy") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_expect_486", node)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert gw.requests("ACK", "received")  # the carrier's 486 is ACKed on its own leg
    term = assert_lifecycle(node.wait_terminated(), "busy", "callee")
    assert term["sip_status"] == 486


def test_no_route_is_404(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9])
    caller = call(tmp_path, "uac_expect_404", node, service="4420000")
    assert caller.ok, caller.describe()
    events = node.wait_terminated()
    assert types(events) == ["call.setup", "call.terminated"]
    assert only_event(events, "call.terminated")["reason"] == "no_route"


# =============================================================================================
# Timeouts and failover
# =============================================================================================


def test_invite_timeout_gives_408(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_silent", keys={"silence_ms": 4000}) as uas:
        node = b2bua([uas.local_port])
        started = time.monotonic()
        caller = call(tmp_path, "uac_expect_408_or_480", node)
        elapsed = time.monotonic() - started
        uas.wait(10)
    assert caller.ok, caller.describe()
    assert "final_status=408" in caller.logs
    assert 1.5 < elapsed < 5.0
    term = assert_lifecycle(node.wait_terminated(), "response_timeout", "system")
    assert term["sip_status"] == 408


def test_call_progress_timeout_cancels_the_carrier(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA]
) -> None:
    with carrier(tmp_path, "uas_ring_forever") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_expect_408_or_480", node)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert gw.requests("CANCEL", "received")
    assert caller.responses(180, "received")
    assert_lifecycle(node.wait_terminated(), "call_progress_timeout", "system")


def test_failover_to_the_second_gateway(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_503") as first, carrier(tmp_path, "uas_answer_wait_bye") as second:
        node = b2bua([first.local_port, second.local_port])
        caller = call(tmp_path, "uac_basic_bye", node, pause_ms=300)
        r1, r2 = first.wait(10), second.wait(10)
    assert caller.ok and r1.ok and r2.ok, caller.describe() + r1.describe() + r2.describe()
    assert not caller.responses(503, "received")
    events = node.wait_terminated()
    routed = [e for e in events if e["type"] == "call.routed"]
    assert [(e["attempt"], e["gateway"]) for e in routed] == [(1, first.address), (2, second.address)]
    assert_lifecycle(events, "normal_caller_bye", "caller")


# =============================================================================================
# Session timers
# =============================================================================================


def test_422_then_a_good_retry(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_422_retry", node, keys={"se": 2}, pause_ms=300)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    too_small = caller.responses(422, "received")[0]
    assert too_small.header("Min-SE") == "4"
    assert len(gw.requests("INVITE", "received")) == 1  # the 422 never reached the carrier
    events = node.wait_terminated()
    assert types(events).count("call.setup") == 1
    assert only_event(events, "call.answered")["session_expires"] == 4


@pytest.mark.parametrize(
    "scenario, method", [("uac_timer_refresh_update", "UPDATE"), ("uac_timer_refresh_reinvite", "INVITE")]
)
def test_caller_refreshes_and_survives_past_session_expires(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA], scenario: str, method: str
) -> None:
    with carrier(tmp_path, "uas_answer_refreshes") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, scenario, node, keys={"se": 4, "refreshes": 3})
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert len(caller.responses(200, "received", method=method)) >= 3 + (method == "INVITE")
    events = node.wait_terminated()
    refreshed = [e for e in events if e["type"] == "session.refreshed"]
    assert sum(e["leg"] == "caller" and e["method"] == method for e in refreshed) >= 3
    answered = only_event(events, "call.answered")
    assert answered["refresher"] == {"caller": "peer", "carrier": "b2bua"}
    assert_lifecycle(events, "normal_caller_bye", "caller")


def test_silent_refresher_gets_bye_on_both_legs_near_expiry(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA]
) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_timer_silent", node, keys={"se": 6})
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert gw.requests("BYE", "received"), "the carrier leg must be hung up too"
    ok = caller.responses(200, "received", method="INVITE")[0]
    bye = caller.requests("BYE", "received")[0]
    assert ok.timestamp and bye.timestamp
    held = (bye.timestamp - ok.timestamp).total_seconds()
    assert 3.5 < held < 5.0  # SE - min(32, SE/3) = 4 s
    events = node.wait_terminated()
    assert only_event(events, "session.refresh_failed")["cause"] == "expired"
    assert_lifecycle(events, "session_expired", "system")


def test_b2bua_refreshes_the_caller_and_hangs_up_when_it_stops_answering(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA]
) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port])
        caller = call(tmp_path, "uac_timer_refresher_uas", node, keys={"se": 4, "answers": 1})
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    refreshes = caller.requests("UPDATE", "received")
    assert refreshes and refreshes[0].session_expires() == (4, "uac")
    assert caller.requests("BYE", "received") and gw.requests("BYE", "received")
    events = node.wait_terminated()
    assert [e["leg"] for e in events if e["type"] == "session.refreshed"] == ["caller"]
    assert only_event(events, "session.refresh_failed")["leg"] == "caller"
    assert only_event(events, "call.answered")["refresher"]["caller"] == "b2bua"
    assert_lifecycle(events, "session_refresh_failed", "system")


def test_no_timer_cap(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port], timers={"no_timer_max_duration": 2})
        caller = call(tmp_path, "uac_no_timer_wait_bye", node)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert caller.requests("BYE", "received") and gw.requests("BYE", "received")
    events = node.wait_terminated()
    answered = only_event(events, "call.answered")
    assert (answered["timer_mode"], answered["effective_limit_s"], answered["limit_source"]) == (
        "no_timer",
        2,
        "no_timer_max_duration",
    )
    assert_lifecycle(events, "no_timer_limit", "system")


def test_max_duration_shorter_than_the_session_timer(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA]
) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port], timers={"max_call_duration": 2})
        caller = call(tmp_path, "uac_timer_silent", node, keys={"se": 6})
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    events = node.wait_terminated()
    answered = only_event(events, "call.answered")
    assert (answered["effective_limit_s"], answered["limit_source"]) == (2, "max_call_duration")
    assert "session.refresh_failed" not in types(events)
    assert_lifecycle(events, "max_duration_limit", "system")


# =============================================================================================
# Admission
# =============================================================================================

ROAMER = [{"name": "roamer", "username": "roam", "password": "s3cret"}]


def test_digest_challenge_then_call(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port], accounts=ROAMER)
        caller = call(tmp_path, "uac_auth", node, auth_user="roam", auth_password="s3cret", pause_ms=300)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert caller.responses(401, "received")
    assert "Authorization" not in gw.requests("INVITE", "received")[0].raw
    events = node.wait_terminated()
    assert types(events).count("call.setup") == 1  # the challenge itself is not a call
    assert only_event(events, "call.setup")["account"] == "roamer"
    assert_lifecycle(events, "normal_caller_bye", "caller")


def test_wrong_password_locks_the_account(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9], accounts=ROAMER, admission={"auth_lock_failures": 2, "auth_retry_limit": 5})
    first = call(tmp_path, "uac_auth_wrong", node, auth_user="roam", auth_password="bad", name="wrong1")
    second = call(tmp_path, "uac_auth_wrong", node, auth_user="roam", auth_password="bad", name="wrong2")
    right = call(tmp_path, "uac_auth_wrong", node, auth_user="roam", auth_password="s3cret", name="right")
    assert first.ok and second.ok and right.ok, first.describe() + second.describe() + right.describe()
    assert "final_status=401" in first.logs
    assert "final_status=403" in second.logs and "final_status=403" in right.logs
    assert right.responses(403, "received")[0].reason == "Account Locked"
    # The failure that locked the account is a record of it; refusals while locked are only counted
    # (one address could otherwise write to the journal as fast as it sends).
    events = node.wait_terminated(1)
    terms = [e for e in events if e["type"] == "call.terminated"]
    assert [(t["reason"], t["sip_status"]) for t in terms] == [("auth_failed", 403)]
    assert "call.routed" not in types(events)
    assert node.server is not None and node.server.core is not None
    assert node.server.core.refusals.by_cause["locked"] == 1


def test_unknown_source_is_refused(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9], accounts=[{"name": "acme", "ips": ["192.0.2.7"]}])
    caller = call(tmp_path, "uac_expect_error", node)
    assert caller.ok, caller.describe()
    assert "final_status=403" in caller.logs
    # Traffic of no account is counted, not written as calls (a spoofed flood would fill the journal).
    assert node.server is not None and node.server.core is not None
    core = node.server.core
    assert core.refusals.by_cause == {"unknown_source": 1}
    assert dict(core.refusals.by_source) == {"127.0.0.1": 1}
    assert node.events() == []


def test_concurrent_call_limit(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua(
            [uas.local_port], accounts=[{"name": "acme", "ips": ["127.0.0.1"], "max_concurrent_calls": 1}]
        )
        with start_caller(
            "uac_basic_bye",
            node.address,
            workdir=tmp_path,
            service=CALLEE,
            pause_ms=2500,
            timeout_s=20,
            name="first",
        ) as first:
            node.wait_events(lambda ev: "call.answered" in types(ev))
            second = call(tmp_path, "uac_expect_503", node, name="second")
            r1 = first.wait()
        gw = uas.wait(10)
    assert r1.ok and second.ok and gw.ok, r1.describe() + second.describe() + gw.describe()
    assert second.responses(503, "received")[0].reason == "Call Limit Exceeded"
    events = node.wait_terminated(2)
    terms = {e["reason"]: e for e in events if e["type"] == "call.terminated"}
    assert terms["call_limit_exceeded"]["sip_status"] == 503
    assert "normal_caller_bye" in terms


# =============================================================================================
# Commands
# =============================================================================================


def test_terminate_command_hangs_up_both_legs(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port])
        with start_caller(
            "uac_wait_remote_bye", node.address, workdir=tmp_path, service=CALLEE, timeout_s=20
        ) as proc:
            events = node.wait_events(lambda ev: "call.answered" in types(ev))
            call_id = only_event(events, "call.answered")["call_id"]
            node.append_command(
                {
                    "command_id": "c-1",
                    "type": "call.terminate",
                    "call_id": call_id,
                    "node": "wire-node",
                    "reason": "orphaned",
                    "issued_by": "test",
                    "deadline": "2026-01-01T00:00:00.000Z",
                    "ts": "2026-01-01T00:00:01.000Z",
                    "schema_version": 1,
                }
            )
            caller = proc.wait()
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert caller.requests("BYE", "received") and gw.requests("BYE", "received")
    assert_lifecycle(node.wait_terminated(), "orphaned", "system")


def test_tcp_caller_and_tcp_gateway(tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with carrier(tmp_path, "uas_answer_wait_bye", transport="t1") as uas:
        node = b2bua([uas.local_port], transport="tcp")
        caller = call(tmp_path, "uac_basic_bye", node, pause_ms=300, transport="t1")
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    assert {m.transport for m in caller.messages} == {"TCP"} and {m.transport for m in gw.messages} == {"TCP"}
    assert_lifecycle(node.wait_terminated(), "normal_caller_bye", "caller")


def test_malformed_datagrams_get_400_or_are_dropped_and_the_node_keeps_working(
    tmp_path: Path, b2bua: Callable[..., RunningB2BUA]
) -> None:
    node = b2bua([9])
    host, port = node.address.split(":")
    bad = (
        b"INVITE sip:1555@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad\r\n"
        b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: bad1\r\nCSeq: 1 BYE\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        bad = bad.replace(b"127.0.0.1:9", f"127.0.0.1:{s.getsockname()[1]}".encode())
        s.sendto(b"\x00\xffgarbage\r\n\r\n", (host, int(port)))
        s.sendto(b"SIP/2.0 200 OK\r\n\r\n", (host, int(port)))
        s.sendto(bad, (host, int(port)))
        data, _ = s.recvfrom(65535)
    assert data.startswith(b"SIP/2.0 400 ")
    assert node.server is not None and node.server.core is not None
    assert node.server.core.stats["parse_errors"] == 3
    caller = call(tmp_path, "uac_expect_404", node, service="4420000")
    assert caller.ok, caller.describe()


def test_bound_to_every_address_it_tells_peers_the_advertised_one(
        tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    # As in a container: listen on 0.0.0.0, advertise the address peers reach. The caller's ACK and BYE
    # and the carrier's replies follow what the B2BUA wrote in its Contact and Via.
    with carrier(tmp_path, "uas_answer_wait_bye") as uas:
        node = b2bua([uas.local_port], sip={"listen_host": "0.0.0.0", "advertised_host": "127.0.0.1"})
        caller = call(tmp_path, "uac_basic_bye", node, pause_ms=300)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    port = node.address.rsplit(":", 1)[1]
    ok = caller.responses(200, "received", method="INVITE")[0]
    assert ok.header("Contact") == f"<sip:b2bua@127.0.0.1:{port}>"
    invite = gw.requests("INVITE", "received")[0]
    assert invite.header("Contact") == f"<sip:b2bua@127.0.0.1:{port}>"
    assert f"SIP/2.0/UDP 127.0.0.1:{port};" in invite.header("Via", "")
    assert "0.0.0.0" not in ok.raw + invite.raw
    assert_lifecycle(node.wait_terminated(), "normal_caller_bye", "caller")
