"""Gateway reports into alerts: pipeline/domain/gateways.py and the processor that drives it."""

from __future__ import annotations

import json
from typing import Any

from pipeline.domain import Policy
from pipeline.domain.gateways import GatewayReports
from pipeline.processor import Processor
from schemas.validation import validate_alert, validate_event
from sipledger.audit import read_log
from sipledger.events_tools import check_lines

T0 = "2026-11-25T10:00:0"


def report(etype: str, seq: int, second: int, node: str = "sw1", gateway: str = "carrier-a",
           previous: str = "down", eid: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": eid or f"{node}-{gateway}-{seq}-{second}", "call_id": f"gateway:{node}:{gateway}",
        "seq": seq, "type": etype, "ts": f"2026-11-25T10:00:{second:02d}.000Z", "node": node,
        "schema_version": 2, "gateway": gateway, "vendor": f"vendor-{gateway}",
        "address": "203.0.113.20:5060", "transport": "udp",
    }
    if etype == "gateway.down":
        ev.update(cause="probe_timeout", losses=3, status=None, last_answer="2026-11-25T09:59:50.000Z",
                  last_status=200, last_rtt_ms=2.5, probe_interval_s=10.0, down_after=3)
    else:
        ev.update(cause="probe_answer", answers=2, status=200, rtt_ms=1.5, previous=previous,
                  down_since="2026-11-25T10:00:10.000Z" if previous == "down" else None)
    validate_event(ev)
    return ev


def run(events: list[dict[str, Any]],
        proc: Processor | None = None) -> tuple[Processor, list[dict[str, Any]]]:
    proc = proc or Processor(Policy())
    alerts = []
    for ev in events:
        assert proc.feed(ev)
        alerts += proc.take().alerts
    return proc, alerts


def test_down_then_up_raise_one_alert_each_and_nothing_else() -> None:
    events = [report("gateway.up", 1, 0, previous="unknown"), report("gateway.down", 2, 10),
              report("gateway.up", 3, 40)]
    proc, alerts = run(events)
    assert [a["kind"] for a in alerts] == ["gateway_down", "gateway_up"]
    for a in alerts:
        validate_alert(a)
    down, up = alerts
    assert (down["call_id"], down["node"], down["vendor"], down["gateway"], down["account"]) == \
        ("gateway:sw1:carrier-a", "sw1", "vendor-carrier-a", "carrier-a", "")
    assert (down["ran_ms"], down["unverified_ms"], down["estimated_cost"]) == (0, 0, "0.000000")
    assert down["ts"] == "2026-11-25T10:00:10.000Z"
    assert down["message"] == (
        "gateway carrier-a (vendor vendor-carrier-a, udp 203.0.113.20:5060) down on node sw1: 3 probes "
        "unanswered in a row; last answer 200 at 2026-11-25T09:59:50.000Z in 2.5 ms; calls are routed "
        "around it")
    assert "up again on node sw1: answered 200 in 1.5 ms, down since 2026-11-25T10:00:10.000Z" \
        in up["message"]
    assert down["alert_id"] != up["alert_id"]
    # No call state, no clock: these are no call's events.
    assert proc.states == {} and proc.clocks.now("sw1") is None


def test_redeliveries_restarts_and_older_reports_change_nothing() -> None:
    down = report("gateway.down", 1, 10)
    proc, alerts = run([down])
    assert len(alerts) == 1
    # The same report again, then the node restarts while the gateway is still dead (seq 1 again, a new
    # event, previous unknown): people were told already.
    _, again = run([down, report("gateway.down", 1, 30, eid="after-restart")], proc)
    assert again == []
    # An older up arriving late does not bring the gateway back.
    _, late = run([report("gateway.up", 1, 5, previous="unknown")], proc)
    assert late == [] and proc.gateways.last["gateway:sw1:carrier-a"][0] == "down"
    # The node's first judgement after its restart: up (previous unknown). The log knew it down: news.
    _, back = run([report("gateway.up", 2, 50, previous="unknown")], proc)
    assert [a["kind"] for a in back] == ["gateway_up"]
    assert "down since 2026-11-25T10:00:10.000Z" in back[0]["message"]


def test_each_node_reports_for_itself_and_a_log_that_begins_later_trusts_the_node() -> None:
    _, alerts = run([report("gateway.down", 1, 10, node="sw1"), report("gateway.down", 1, 11, node="sw2"),
                     report("gateway.up", 1, 12, node="sw3", previous="down")])
    assert [(a["kind"], a["node"]) for a in alerts] == [("gateway_down", "sw1"), ("gateway_down", "sw2"),
                                                        ("gateway_up", "sw3")]


def test_same_log_same_alerts_byte_for_byte_and_a_checkpoint_keeps_the_states() -> None:
    events = [report("gateway.down", 1, 10), report("gateway.up", 2, 20), report("gateway.down", 3, 30)]
    _, first = run(events)
    _, second = run(events)
    assert json.dumps(first) == json.dumps(second) and len(first) == 3
    proc, _ = run(events[:1])
    restored = Processor(Policy())
    restored.restore(json.loads(json.dumps(proc.snapshot())))
    _, after = run(events, restored)  # the first again (a redelivery), then the rest
    assert [a["alert_id"] for a in after] == [a["alert_id"] for a in first[1:]]
    assert GatewayReports.from_dict(proc.gateways.to_dict()).last == proc.gateways.last


def test_the_contract_tools_know_gateway_reports() -> None:
    events = [report("gateway.down", 1, 10), report("gateway.up", 2, 20)]
    lines = [(i + 1, json.dumps(e).encode()) for i, e in enumerate(events)]
    res = check_lines(lines)
    assert res.ok and res.calls == 0 and res.gateway_reports == 2, res.problems
    bad = {**events[0], "call_id": "gateway:sw9:carrier-a"}
    res = check_lines([(1, json.dumps(bad).encode())])
    assert [p.field for p in res.problems] == ["call_id"]
    calls, *_ = read_log(json.dumps(e).encode() for e in events)
    assert calls == {}  # the audit does not mistake them for calls without a setup
