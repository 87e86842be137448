"""PJSIP (pjsua2) as an independent RFC 4028 implementation on both sides of the B2BUA.

A pjsua2 caller with session timers calls through the B2BUA to a pjsua2 callee. PJSIP refuses
intervals under 90 s, so the call is held past the first refresh point (SE/2 = 45 s): the
refreshes PJSIP negotiated and sent or answered must show up as session.refreshed events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sip_harness.b2bua_runner import RunningB2BUA, make_config

from sipledger.config import from_dict

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "tests" / "pjsua_agent.py"

pytestmark = pytest.mark.sipp


def _agent(args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen([sys.executable, str(AGENT), *args], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait_listening(log: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in _lines(log):
            if e["event"] == "listening":
                return int(e["address"].rsplit(":", 1)[1])
        time.sleep(0.05)
    raise AssertionError(f"pjsua2 agent did not start:\n{log.read_text()}")


def test_pjsua2_caller_and_callee_with_session_timers_through_the_b2bua(tmp_path: Path) -> None:
    callee_log, caller_log = tmp_path / "callee.log", tmp_path / "caller.log"
    callee = _agent(["callee", "--port", "0", "--max-wait", "120"], callee_log)
    caller = None
    node = None
    try:
        callee_port = _wait_listening(callee_log)
        raw = make_config(tmp_path, [callee_port], timers={"session_ttl": 90, "min_se": 90})
        node = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "events" / "events.jsonl").start()
        caller = _agent(["caller", "--port", "0", "--target", f"sip:15551230000@{node.address}",
                         "--talk", "58", "--max-wait", "110"], caller_log)
        assert caller.wait(120) == 0, caller_log.read_text()
        events = node.wait_terminated(timeout=15)
    finally:
        for p in (caller, callee):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
        if node is not None:
            node.stop()

    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    setup = by_type["call.setup"][0]
    assert setup["timer_supported"] is True
    answered = by_type["call.answered"][0]
    assert answered["timer_mode"] == "session_timer" and answered["session_expires"] == 90
    refreshes = by_type.get("session.refreshed", [])
    assert refreshes, f"no session.refreshed in {[e['type'] for e in events]}"
    # Every refresh PJSIP sent or answered on the wire appears as a session.refreshed event.
    caller_seen = [e for e in _lines(caller_log) if e["event"].startswith("refresh_")]
    callee_seen = [e for e in _lines(callee_log) if e["event"].startswith("refresh_")]
    assert caller_seen and callee_seen, (caller_seen, callee_seen)
    legs = {e["leg"] for e in refreshes}
    assert legs == {"caller", "carrier"}
    assert len([e for e in refreshes if e["leg"] == "caller"]) >= len(caller_seen)
    assert len([e for e in refreshes if e["leg"] == "carrier"]) >= len(callee_seen)
    for e in refreshes:
        assert e["session_expires"] == 90
    ended = by_type["call.terminated"][0]
    assert ended["reason"] == "normal_caller_bye" and ended["initiator"] == "caller"
    assert any(e["event"] == "disconnected" and e["code"] == 200 for e in _lines(callee_log))
    assert any(e["event"] == "disconnected" and e["connected_s"] >= 56 for e in _lines(caller_log))
