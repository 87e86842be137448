"""`sipledger nettest` and `sipledger route` against real SIP servers (SIPp, the B2BUA, a silent port)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from sip_harness.b2bua_runner import RunningB2BUA, make_config
from sip_harness.sipp import SippProcess

from sipledger.cli import main
from sipledger.config import from_dict
from sipledger.nettest import NetTestResult
from sipledger.sip_ping import Ping

REPO = Path(__file__).resolve().parents[1]
RATES = REPO / "sipledger" / "data" / "rates"

pytestmark = pytest.mark.sipp


def test_the_figures_of_a_run() -> None:
    r = NetTestResult("gw", "udp")
    for p in (Ping(200, 10.0), Ping(200, 14.0), Ping(None, None, ""), Ping(503, 12.0)):
        r.add(p)
    d = r.as_dict()
    assert (d["sent"], d["answered"], d["loss_pct"]) == (4, 3, 25.0)
    assert (d["rtt_min_ms"], d["rtt_avg_ms"], d["rtt_max_ms"]) == (10.0, 12.0, 14.0)
    assert d["jitter_ms"] == 3.0 and d["statuses"] == {"200": 2, "no answer": 1, "503": 1}


def _config(tmp_path: Path, gateways: dict[str, int]) -> Path:
    gw = "".join(f'[[gateways]]\nname = "{n}"\nvendor = "carrier-a"\nhost = "127.0.0.1"\nport = {p}\n'
                 for n, p in gateways.items())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[pipeline]\nsell_rates = "{RATES}/sell.csv"\nbuy_rates = "{RATES}/buy.csv"\n'
                   '[timers]\nno_timer_max_duration = 3600\n'
                   '[[accounts]]\nname = "acme"\nips = ["127.0.0.1"]\n' + gw +
                   f'[[routes]]\nprefix = "44"\ngateways = {json.dumps(list(gateways))}\n')
    return cfg


def test_nettest_against_sipp_loses_nothing_and_against_a_silent_port_everything(tmp_path: Path) -> None:
    sipp = SippProcess("uas_options", workdir=tmp_path / "sipp", calls=1000, timeout_s=None).start()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # bound, never answering: no ICMP, every ping times out
    try:
        sipp.wait_listening()
        cfg = _config(tmp_path, {"gw-sipp": sipp.local_port})
        runner = CliRunner()
        ok = runner.invoke(main, ["nettest", "gw-sipp", "--config", str(cfg), "--count", "5", "--interval",
                                  "0.1", "--format", "json"])
        assert ok.exit_code == 0, ok.output
        (res,) = json.loads(ok.output)
        assert res["transport"] == "udp" and res["sent"] == 5 and res["loss_pct"] == 0.0
        assert res["statuses"] == {"200": 5} and res["rtt_max_ms"] < 1000
        port = silent.getsockname()[1]
        lost = runner.invoke(main, ["nettest", f"127.0.0.1:{port}", "--config", str(cfg), "--count", "3",
                                    "--interval", "0", "--timeout", "0.3"])
        assert lost.exit_code == 1
        assert "0/3 answered, loss 100.0%" in lost.output
    finally:
        sipp.stop()
        silent.close()


def test_nettest_over_udp_and_tcp_to_the_b2bua(tmp_path: Path) -> None:
    raw = make_config(tmp_path, [5999], sip={"transports": ["udp", "tcp"]})
    node = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "events" / "events.jsonl").start()
    try:
        res = CliRunner().invoke(main, ["nettest", node.address, "--count", "3", "--interval", "0.05",
                                        "--transport", "both", "--format", "json"])
        assert res.exit_code == 0, res.output
        by = {r["transport"]: r for r in json.loads(res.output)}
        assert by["udp"]["statuses"] == {"200": 3} and by["tcp"]["statuses"] == {"200": 3}
    finally:
        node.stop()


def test_route_names_prefix_gateways_rates_limits_and_health(tmp_path: Path) -> None:
    sipp = SippProcess("uas_options", workdir=tmp_path / "sipp", calls=1000, timeout_s=None).start()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        sipp.wait_listening()
        cfg = _config(tmp_path, {"gw-up": sipp.local_port, "gw-down": dead.getsockname()[1]})
        runner = CliRunner()
        res = runner.invoke(main, ["route", "+442071234567", "--account", "acme", "--config", str(cfg),
                                   "--probe", "--format", "json"])
        assert res.exit_code == 0, res.output
        view = json.loads(res.output)
        assert view["prefix"] == "44" and [g["gateway"] for g in view["gateways"]] == ["gw-up", "gw-down"]
        assert view["sell_rate"]["prefix"] == "4420" and view["sell_rate"]["rate_per_minute"] == "0.015000"
        assert view["sell_rate"]["increments"] == "6/6"
        assert view["gateways"][0]["buy_rate"]["rate_per_minute"] == "0.012000"
        assert view["gateways"][0]["health"].startswith("up (200")
        assert view["gateways"][1]["health"].startswith("down")
        assert view["limits"]["no_timer_cap_s"] == 3600
        assert view["gateways"][0]["reported"] == [] and view["gateways"][0]["probed_by_b2bua"]
        table = runner.invoke(main, ["route", "4420", "--account", "acme", "--config", str(cfg)])
        assert table.exit_code == 0, table.output
        assert "matches prefix '44'" in table.output and "0.015000 USD/min" in table.output
        # No store yet: the route still shows, with a note instead of the nodes' gateway reports.
        assert "reported: no report" in table.output and "no gateway reports: no store at" in table.output
        assert not (tmp_path / ".sipledger").exists()  # not created just to look
        quiet = runner.invoke(main, ["route", "4420", "--config", str(cfg), "--no-reports"])
        assert quiet.exit_code == 0 and "reported:" not in quiet.output
        nowhere = runner.invoke(main, ["route", "999", "--config", str(cfg)])
        assert nowhere.exit_code == 1 and "no route" in nowhere.output
    finally:
        sipp.stop()
        dead.close()


def test_last_reports_per_gateway_and_node() -> None:
    from sipledger.route_view import last_reports, reported_text

    def row(etype: str, node: str, **f: object) -> dict[str, str]:
        ev = {"type": etype, "node": node, "gateway": "gw1", "ts": f"2026-11-25T10:00:0{len(node)}.000Z", **f}
        return {"call_id": f"gateway:{node}:gw1", "payload": json.dumps(ev)}

    got = last_reports([row("gateway.up", "n2", status=200, rtt_ms=1.25),
                        row("gateway.down", "n1", losses=3, cause="invite_timeout")])
    assert got == {"gw1": [
        {"node": "n1", "state": "down", "since": "2026-11-25T10:00:02.000Z", "evidence": "3 INVITEs lost"},
        {"node": "n2", "state": "up", "since": "2026-11-25T10:00:02.000Z",
         "evidence": "answered 200 in 1.25 ms"},
    ]}
    assert reported_text(got["gw1"]).startswith("down on n1 since 2026-11-25T10:00:02.000Z (3 INVITEs lost); "
                                                "up on n2")
    assert reported_text(None) == "no report"
