"""Gateway health on the wire: the real B2BUA probes SIPp gateways, routes around a stopped one at once,
takes it back when it is restarted, answers 503 when every gateway is down; the embedded pipeline turns
the reports into alerts (journal and store), and the same log gives the same alerts again.

The gateways are SIPp call scenarios run with ``-aa`` (SIPp answers out-of-dialog OPTIONS 200 itself).
Probes every 0.3 s with a 0.2 s timeout, down after 3 losses, up after 2 answers; the INVITE timeout is
8 s, so a call that had to wait for it would show.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner
from metrics_scrape import scrape
from sip_harness.b2bua_runner import RunningB2BUA, make_config
from sip_harness.fixtures import start_caller
from sip_harness.sipp import SippProcess

from pipeline.domain.timeutil import parse_ts
from pipeline.embedded import EmbeddedPipeline
from pipeline.processor import Processor
from schemas.validation import validate_alert
from sipledger.cli import main
from sipledger.config import from_dict
from sipledger.eventlog.journal import read_journal
from sipledger.ports import free_port

pytestmark = pytest.mark.sipp

PROBE = {"probe": True, "probe_interval": 0.3, "probe_timeout": 0.2, "down_after": 3, "up_after": 2}
INVITE_TIMEOUT = 8.0


def gateway(tmp_path: Path, name: str, port: int | None = None, transport: str = "u1") -> SippProcess:
    proc = SippProcess("uas_answer_wait_bye", workdir=tmp_path / name, name=name, local_port=port,
                       calls=100_000, timeout_s=None, extra_args=["-aa"], transport=transport).start()
    if transport == "u1":
        proc.wait_listening()
    return proc


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def reports(node: RunningB2BUA, etype: str, gw: str) -> list[dict[str, Any]]:
    return [e for e in node.events() if e["type"] == etype and e.get("gateway") == gw]


def calls(tmp_path: Path, node: RunningB2BUA, scenario: str, n: int, name: str) -> list[dict[str, Any]]:
    """Run ``n`` calls; the events of those calls (by call id) once all of them ended."""
    before = {e["call_id"] for e in node.events() if e["type"] == "call.setup"}
    with start_caller(scenario, node.address, workdir=tmp_path, name=name, calls=n, rate=10,
                      pause_ms=200, timeout_s=20) as caller:
        res = caller.wait()
    assert res.ok and res.successful_calls == n, res.describe()
    events = node.wait_events(lambda ev: sum(e["type"] == "call.terminated" and e["call_id"] not in before
                                             for e in ev) >= n)
    return [e for e in events if e["call_id"] not in before and not e["call_id"].startswith("gateway:")]


def setup_to_answer_s(events: list[dict[str, Any]]) -> list[float]:
    setup = {e["call_id"]: parse_ts(e["ts"]) for e in events if e["type"] == "call.setup"}
    return [(parse_ts(e["ts"]) - setup[e["call_id"]]) / 1000 for e in events if e["type"] == "call.answered"]


class _Hook(BaseHTTPRequestHandler):
    """The operator's webhook endpoint: keeps what it is sent."""

    received: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        type(self).received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()


def test_a_stopped_gateway_goes_down_calls_route_around_it_at_once_and_it_comes_back(tmp_path: Path) -> None:
    gw1, gw2 = gateway(tmp_path, "gw1"), gateway(tmp_path, "gw2")
    port1, metrics_port = gw1.local_port, free_port()
    _Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    raw = make_config(tmp_path, [gw1.local_port, gw2.local_port], sip={"invite_timeout": INVITE_TIMEOUT},
                      store={"url": f"chdb://{tmp_path / 'store'}"}, metrics={"b2bua_port": metrics_port},
                      pipeline={"grace_period": 1.0, "node_timeout": 3600.0,
                                "webhook_url": f"http://127.0.0.1:{hook.server_address[1]}/alerts"})
    for g in raw["gateways"]:
        g.update(PROBE)
    cfg = from_dict(raw, tmp_path)
    node = RunningB2BUA(cfg, tmp_path / "events" / "events.jsonl").start()
    pipe = EmbeddedPipeline(cfg)
    stop_pipe = threading.Event()
    runner = threading.Thread(target=pipe.run, args=(stop_pipe,), daemon=True)
    runner.start()
    procs = [gw1, gw2]
    try:
        # Both answer their first probes: up (previous unknown: no alert).
        wait_for(lambda: reports(node, "gateway.up", "gw1") and reports(node, "gateway.up", "gw2"), 5,
                 "the first answers")
        first = calls(tmp_path, node, "uac_basic_bye", 1, "caller_before")
        assert [e["vendor"] for e in first if e["type"] == "call.routed"] == ["vendor1"]

        # gw1's SIPp stops: down within its probes (3 x 0.3 s + 0.2 s timeout).
        gw1.stop()
        stopped = time.time()
        (down,) = wait_for(lambda: reports(node, "gateway.down", "gw1"), 5, "gw1 down")
        detect_s = parse_ts(down["ts"]) / 1000 - stopped
        assert detect_s < 3 * 0.3 + 0.2 + 0.6, detect_s
        assert (down["cause"], down["losses"], down["last_status"]) == ("probe_timeout", 3, 200)

        # Calls now go to gw2 at once: first attempt, answered in milliseconds, not after 8 s.
        during = calls(tmp_path, node, "uac_basic_bye", 5, "caller_during")
        routed = [(e["vendor"], e["attempt"]) for e in during if e["type"] == "call.routed"]
        assert routed == [("vendor2", 1)] * 5
        latencies = setup_to_answer_s(during)
        assert len(latencies) == 5 and max(latencies) < 1.0, latencies
        metrics = scrape(metrics_port)
        up_now = {labels["gateway"]: v for labels, v in metrics["sipledger_b2bua_gateway_up"]}
        assert up_now == {"gw1": 0, "gw2": 1}
        rtt = {labels["gateway"]: v for labels, v in metrics["sipledger_b2bua_gateway_probe_rtt_seconds"]}
        assert set(rtt) == {"gw1", "gw2"} and all(0 < v < 0.2 for v in rtt.values())
        probes = {(labels["gateway"], labels["outcome"]): v
                  for labels, v in metrics["sipledger_b2bua_gateway_probes_total"]}
        assert probes[("gw1", "lost")] >= 3 and probes[("gw2", "answered")] >= 3
        assert {labels["gateway"]: v for labels, v in metrics["sipledger_b2bua_gateway_skips_total"]} == \
            {"gw1": 5, "gw2": 0}

        # gw1 is restarted on its port: up again after two answers, and calls go to it again.
        gw1 = gateway(tmp_path, "gw1-again", port=port1)
        procs.append(gw1)
        restarted = time.time()
        (up,) = wait_for(lambda: [e for e in reports(node, "gateway.up", "gw1") if e["previous"] == "down"],
                         5, "gw1 up")
        back_s = parse_ts(up["ts"]) / 1000 - restarted
        assert back_s < 2 * 0.3 + 0.6, back_s
        # down_since is the core's time of the transition, the event's ts the publisher's wall clock.
        assert abs(parse_ts(up["down_since"]) - parse_ts(down["ts"])) < 100 and up["answers"] == 2
        after = calls(tmp_path, node, "uac_basic_bye", 1, "caller_after")
        assert [e["vendor"] for e in after if e["type"] == "call.routed"] == ["vendor1"]

        # Every gateway stops: the caller gets 503 at once, and the call says why.
        gw1.stop()
        gw2.stop()
        wait_for(lambda: len(reports(node, "gateway.down", "gw1")) == 2
                 and reports(node, "gateway.down", "gw2"), 5, "both down")
        refused = calls(tmp_path, node, "uac_expect_503", 1, "caller_refused")
        term = next(e for e in refused if e["type"] == "call.terminated")
        assert (term["reason"], term["sip_status"]) == ("no_route", 503)
        assert "gateways of prefix '1555' are down: gw1 since" in term["detail"]
        assert [e["type"] for e in refused] == ["call.setup", "call.terminated"]
        print(f"\ngateway down {detect_s:.2f} s after its SIPp stopped, up {back_s:.2f} s after the restart; "
              f"setup to answer while down: max {max(latencies) * 1000:.0f} ms (invite timeout "
              f"{INVITE_TIMEOUT:g} s)")

        # The pipeline: one alert per change, in the alerts journal and the store.
        kinds = [("gateway_down", "gw1"), ("gateway_up", "gw1"), ("gateway_down", "gw1"),
                 ("gateway_down", "gw2")]

        def journal_alerts() -> list[dict[str, Any]]:
            if not pipe.paths.alerts.exists():
                return []
            return [json.loads(raw) for _, raw in read_journal(pipe.paths.alerts, 0)]

        alerts = wait_for(lambda: (a := journal_alerts()) and len(a) >= 4 and a, 15, "the gateway alerts")
        assert sorted((a["kind"], a["gateway"]) for a in alerts) == sorted(kinds)
        for a in alerts:
            validate_alert(a)
            assert a["node"] == "wire-node" and a["call_id"] == f"gateway:wire-node:{a['gateway']}"
        wait_for(lambda: pipe.sink.pending() == 0, 15, "the store")
        with pipe.lock:
            stored = pipe.store.query("SELECT alert_id FROM zombie_alerts FINAL")
            logged = pipe.store.query("SELECT count() AS n FROM call_events WHERE call_id LIKE 'gateway:%'")
        assert sorted(r["alert_id"] for r in stored) == sorted(a["alert_id"] for a in alerts)
        assert int(logged[0]["n"]) == len([e for e in node.events() if e["type"].startswith("gateway.")])

        # `sipledger route` shows what the node last reported, read through the pipeline holding the store.
        route_cfg = tmp_path / "route.toml"
        route_cfg.write_text(f'[store]\nurl = "chdb://{tmp_path / "store"}"\n' + "".join(
            f'[[gateways]]\nname = "{g["name"]}"\nport = {g["port"]}\n' for g in raw["gateways"])
            + '[[routes]]\nprefix = "1555"\ngateways = ["gw1", "gw2"]\n')
        res = CliRunner().invoke(main, ["route", "15551230000", "--config", str(route_cfg), "--format",
                                        "json"])
        assert res.exit_code == 0, res.output
        view = {g["gateway"]: g["reported"] for g in json.loads(res.output)["gateways"]}
        last_down = reports(node, "gateway.down", "gw1")[-1]
        assert view["gw1"] == [{"node": "wire-node", "state": "down", "since": last_down["ts"],
                                "evidence": "3 probes lost"}]
        table = CliRunner().invoke(main, ["route", "15551230000", "--config", str(route_cfg)])
        assert f"reported: down on wire-node since {last_down['ts']} (3 probes lost)" in table.output

        # The same alerts reach people: the webhook, and `sipledger alerts tail` reading the journal.
        wait_for(lambda: len(_Hook.received) >= 4, 15, "the webhook")
        assert sorted(a["alert_id"] for a in _Hook.received) == sorted(a["alert_id"] for a in alerts)
        tail_cfg = tmp_path / "tail.toml"
        tail_cfg.write_text(f'[events]\nlog = "file://{tmp_path / "events" / "events.jsonl"}"\n')
        tail = CliRunner().invoke(main, ["alerts", "tail", "--config", str(tail_cfg)])
        assert tail.exit_code == 0, tail.output
        lines = tail.output.strip().splitlines()
        assert [line.split()[1] for line in lines] == [a["kind"] for a in alerts]
        assert all("node wire-node: gateway gw" in line for line in lines), lines
    finally:
        hook.shutdown()
        node.stop()
        for p in procs:
            p.stop()
        stop_pipe.set()
        runner.join(10)
        pipe.close()

    # The same log gives the same alerts (replay's processor, no clock but the log's).
    proc = Processor.from_config(cfg)
    again: list[dict[str, Any]] = []
    for _, raw_event in read_journal(tmp_path / "events" / "events.jsonl", 0):
        proc.feed_raw(raw_event)
        again += proc.take().alerts
    assert json.dumps(again, sort_keys=True) == json.dumps(alerts, sort_keys=True)


def test_a_tcp_gateway_is_probed_over_tcp(tmp_path: Path) -> None:
    gw = gateway(tmp_path, "gw-tcp", transport="t1")
    port = gw.local_port
    raw = make_config(tmp_path, [port], transport="tcp", sip={"transports": ["udp", "tcp"]})
    raw["gateways"][0].update(PROBE)
    node = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "events" / "events.jsonl").start()
    try:
        (up,) = wait_for(lambda: reports(node, "gateway.up", "gw1"), 5, "the TCP gateway up")
        assert up["transport"] == "tcp" and up["status"] == 200
        gw.stop()  # its port closes: connections are refused, probes go unanswered
        (down,) = wait_for(lambda: reports(node, "gateway.down", "gw1"), 5, "the TCP gateway down")
        assert down["transport"] == "tcp" and down["cause"] == "probe_timeout"
        gw = gateway(tmp_path, "gw-tcp-again", port=port, transport="t1")
        wait_for(lambda: [e for e in reports(node, "gateway.up", "gw1") if e["previous"] == "down"], 5,
                 "the TCP gateway back")
    finally:
        node.stop()
        gw.stop()
