"""Takeover in embedded mode, with PJSIP as the independent judge of dialog matching (issue 13).

Two B2BUA nodes and the embedded pipeline as processes on one journal; SIPp callers call through
node-2 (50 calls to a SIPp carrier, one to a pjsua2 callee) and wait for the far end's BYE. node-2 is
SIGKILLed with every call up; the pipeline probes it, writes node.lost into the journal and hands the
calls to node-1, which sends BYE on both legs as node-2's dialog. PJSIP accepts the BYE as its own
dialog's and answers it where the request came from (RFC 3261 18.2.2), so node-1 hears the 200 for
that leg; SIPp answers at the address its call came from (the dead node). Every call gets one CDR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sip_harness.sipp import SippProcess, free_udp_port
from waiting import wait_until

from sipledger.eventlog import read_journal
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "tests" / "pjsua_agent.py"
CALLS = 50
NODE_TIMEOUT = 4

pytestmark = pytest.mark.sipp


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for _, raw in read_journal(path)]


def test_node1_ends_node2s_calls_and_a_pjsua2_callee_sees_its_bye(tmp_path: Path) -> None:
    carrier = SippProcess("uas_answer_wait_bye", workdir=tmp_path / "carrier", name="carrier",
                          calls=1_000_000, timeout_s=None).start()
    carrier.wait_listening()
    pj_log = tmp_path / "pjsua.log"
    pjsua = _spawn([str(AGENT), "callee", "--port", "0", "--max-wait", "120"], pj_log)
    procs: list[subprocess.Popen[bytes]] = [pjsua]
    callers: list[SippProcess] = []
    try:
        wait_until(lambda: '"listening"' in pj_log.read_text(), 15, "the pjsua2 callee", every=0.2)
        pj_port = int(next(json.loads(x) for x in pj_log.read_text().splitlines()
                           if '"listening"' in x)["address"].rsplit(":", 1)[1])
        ports = [free_udp_port(), free_udp_port()]
        journal = tmp_path / "log" / "events.jsonl"
        cfg = tmp_path / "sipledger.toml"
        cfg.write_text(f"""
[sip]
listen_host = "127.0.0.1"
resend_interval_ms = 100
[timers]
session_ttl = 120
min_se = 90
[events]
log = "file://{journal}"
heartbeat_interval = 0.5
[store]
url = "chdb://{tmp_path}/store"
[pipeline]
node_timeout = {NODE_TIMEOUT}
probe_timeout = 0.5
[[accounts]]
name = "acme"
ips = ["127.0.0.1"]
[[gateways]]
name = "sipp"
host = "127.0.0.1"
port = {carrier.local_port}
probe = false
[[gateways]]
name = "pjsua"
host = "127.0.0.1"
port = {pj_port}
[[routes]]
prefix = "1555"
gateways = ["sipp"]
[[routes]]
prefix = "1666"
gateways = ["pjsua"]
""")
        for i, port in enumerate(ports, 1):
            procs.append(_spawn(["-m", "sipledger", "b2bua", "--config", str(cfg), "--set", f'node.id="n{i}"',
                                 "--set", f"sip.listen_port={port}"], tmp_path / f"n{i}.log"))
        pipeline = _spawn(["-m", "sipledger", "pipeline", "--config", str(cfg)], tmp_path / "pipeline.log")
        procs.append(pipeline)
        wait_until(lambda: all("listening" in (tmp_path / f"n{i}.log").read_text() for i in (1, 2)), 30,
                   "nodes", every=0.2)
        node2 = f"127.0.0.1:{ports[1]}"
        callers.append(SippProcess("uac_wait_remote_bye", remote=node2, workdir=tmp_path / "callers",
                                   name="callers", service="15551230000", calls=CALLS, rate=25,
                                   timeout_s=90).start())
        callers.append(SippProcess("uac_wait_remote_bye", remote=node2, workdir=tmp_path / "pj_caller",
                                   name="pj_caller", service="16661230000", calls=1, timeout_s=90).start())
        wait_until(lambda: sum(e["type"] == "call.answered" for e in _journal(journal)) == CALLS + 1, 60,
                   "every call answered", every=0.2)
        killed_at = time.time()
        os.kill(procs[2].pid, signal.SIGKILL)  # node-2, without a goodbye

        results = [c.wait(120) for c in callers]
        for r in results:
            assert r.ok, r.describe()  # every caller got its BYE (from node-1) and answered it
        byes = [m for r in results for m in r.requests("BYE", "received")]
        assert len(byes) == CALLS + 1
        delays = sorted(m.timestamp.timestamp() - killed_at for m in byes if m.timestamp)
        print(f"\nkill -> BYE at the callers: p50 {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s")
        assert delays[-1] <= NODE_TIMEOUT + 5
        wait_until(lambda: '"disconnected"' in pj_log.read_text(), 30, "the pjsua2 callee's hang-up",
                   every=0.2)
        ended = [e for e in _journal(journal) if e["type"] == "call.terminated" and e["node"] == "n1"]
        wait_until(lambda: len([e for e in _journal(journal) if e["type"] == "call.terminated"
                           and e["node"] == "n1"]) == CALLS + 1, 30, "node-1's reports", every=0.2)
        ended = [e for e in _journal(journal) if e["type"] == "call.terminated" and e["node"] == "n1"]
        verdicts = [e for e in _journal(journal) if e["type"] == "node.lost"]
        assert [v["node"] for v in verdicts] == ["n2"] and verdicts[0]["takeover_by"] == ["n1"]
        pj_call = next(e for e in ended if e["takeover"]["legs"]["carrier"]["outcome"] == "ended")
        assert pj_call["takeover"]["legs"]["carrier"]["status"] == 200  # PJSIP matched and answered it
        time.sleep(2)  # the pipeline folds the last reports
    finally:
        for c in callers:
            c.stop()
        carrier.stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    store = open_store(f"chdb://{tmp_path}/store")
    cdrs = {c["call_id"]: c for c in fetch_cdrs(store)}
    store.close()
    assert len(cdrs) == CALLS + 1 and all(c["end_reason"] == "orphaned" for c in cdrs.values())
    pj_cdr = cdrs[pj_call["call_id"]]
    assert pj_cdr["closed_by"] == "node" and not pj_cdr["exposure_open"] and pj_cdr["exposure_ms"] > 0
