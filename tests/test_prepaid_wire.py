"""Prepaid balances on the wire: SIPp callers and carrier through the B2BUA with the embedded pipeline
and chDB, all as processes, top-ups written by `sipledger balance add`.

* solo: 0.62 at 1.00/min 6/6 pays for 37 s, so the call gets a BYE on both legs at 36 s (the last whole
  increment), end reason credit_limit; its CDR bills 36 s = 0.60, which is its debit;
* duo: 0.90 and two concurrent calls. The first is capped by max_call_duration (38 s, billed 42 = 0.70),
  which is what it holds; the second, a second later, gets what is left: 12 s, credit_limit;
* broke: 0.50, below its minimum balance 1.00: refused 402 Insufficient Balance, with a CDR that says so.

Then `sipledger replay` of the log into a fresh store gives the same balances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sip_harness.sipp import SippProcess, free_udp_port
from waiting import wait_until

from sipledger.eventlog import read_journal
from sipledger.store.remote import open_reader

REPO = Path(__file__).resolve().parents[1]
RATES = """\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,currency,effective_from
solo,1555,1.00,6,6,0,0,USD,2026-01-01
duo,1555,1.00,6,6,0,0,USD,2026-01-01
broke,1555,1.00,6,6,0,0,USD,2026-01-01
"""

pytestmark = pytest.mark.sipp


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sipledger", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=log.parent, env=_env(), start_new_session=True)


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sipledger", *args], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for _, raw in read_journal(path)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _balances(cfg: Path, *extra: str) -> dict[str, dict[str, Any]]:
    return {b["account"]: b for b in json.loads(_cli("balance", "--json", "--config", str(cfg), *extra))}


def test_prepaid_calls_end_at_the_last_paid_increment_share_a_balance_replay_alike(tmp_path: Path) -> None:
    carrier = SippProcess("uas_answer_wait_bye", workdir=tmp_path / "carrier", name="carrier", calls=10,
                          timeout_s=None).start()
    carrier.wait_listening()
    (tmp_path / "rates.csv").write_text(RATES)
    journal = tmp_path / "log" / "events.jsonl"
    port = free_udp_port()
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text(f"""
[node]
id = "n1"
[sip]
listen_host = "127.0.0.1"
listen_port = {port}
resend_interval_ms = 100
[timers]
max_call_duration = 38
[events]
log = "file://{journal}"
heartbeat_interval = 0.5
[store]
url = "chdb://{tmp_path}/store"
[pipeline]
sell_rates = "rates.csv"
[[accounts]]
name = "solo"
ips = ["127.0.0.2"]
prepaid = true
[[accounts]]
name = "duo"
ips = ["127.0.0.3"]
prepaid = true
[[accounts]]
name = "broke"
ips = ["127.0.0.4"]
prepaid = true
min_balance = "1.00"
[[gateways]]
name = "carrier"
host = "127.0.0.1"
port = {carrier.local_port}
probe = false
[[routes]]
prefix = "1555"
gateways = ["carrier"]
""")
    procs: list[subprocess.Popen[bytes]] = []
    callers: list[SippProcess] = []
    try:
        procs.append(_spawn(["pipeline", "--config", str(cfg)], tmp_path / "pipeline.log"))
        procs.append(_spawn(["b2bua", "--config", str(cfg)], tmp_path / "b2bua.log"))
        wait_until(lambda: "listening" in (tmp_path / "b2bua.log").read_text(), 30, "the B2BUA", every=0.1)
        # Top-ups are facts of the log; the same id twice counts once.
        for account, amount, topup_id in (("solo", "0.62", "t-solo"), ("solo", "0.62", "t-solo"),
                                          ("duo", "0.90", "t-duo"), ("broke", "0.50", "t-broke")):
            _cli("balance", "add", account, amount, "--id", topup_id, "--note", "wire test",
                 "--config", str(cfg))
        balances = journal.parent / "balances.jsonl"
        wait_until(lambda: {r["account"] for r in _lines(balances)} == {"solo", "duo", "broke"}, 30,
                   "the pipeline's balance records", every=0.1)
        time.sleep(0.6)  # the node polls the balances journal every 0.2 s
        node = f"127.0.0.1:{port}"
        callers.append(SippProcess("uac_no_timer_wait_bye", remote=node, local_ip="127.0.0.2",
                                   workdir=tmp_path / "solo", name="solo", service="15551230001", calls=1,
                                   timeout_s=60).start())
        callers.append(SippProcess("uac_no_timer_wait_bye", remote=node, local_ip="127.0.0.3",
                                   workdir=tmp_path / "duo", name="duo", service="15551230002", calls=2,
                                   rate=1, timeout_s=60).start())
        broke = SippProcess("uac_expect_error", remote=node, local_ip="127.0.0.4", workdir=tmp_path / "broke",
                            name="broke", service="15551230003", calls=1, timeout_s=20).start()
        refused = broke.wait(30)
        assert refused.ok, refused.describe()
        finals = [m for m in refused.responses(direction="received") if m.status and m.status >= 200]
        assert [(m.status, m.reason) for m in finals] == [(402, "Insufficient Balance")]
        results = {c.name: c.wait(90) for c in callers}
        for r in results.values():
            assert r.ok, r.describe()  # each caller got the B2BUA's BYE and answered it
        # solo: the BYE came 36 s after the answer (the timer fires 0.25 s early, see b2bua/credit.py).
        ok = next(m for m in results["solo"].responses(direction="received") if m.status == 200)
        (bye,) = results["solo"].requests("BYE", "received")
        assert ok.timestamp and bye.timestamp
        talk = (bye.timestamp - ok.timestamp).total_seconds()
        assert 35.0 < talk <= 36.2, talk
        time.sleep(0.5)
        carrier.stop()
        carrier_byes = carrier.wait(5).requests("BYE", "received")
        assert len(carrier_byes) == 3  # the carrier leg of each answered call got its BYE too

        events = _lines(journal)
        wait_until(lambda: sum(e["type"] == "call.terminated" for e in _lines(journal)) == 4, 10,
                   "4 calls ended", every=0.1)
        wait_until(lambda: all(b["reserved"] == "0.000000" for b in _balances(cfg).values()) and
                   _balances(cfg)["solo"]["debit_count"] == 1, 20, "every debit stored", every=0.1)
        live = _balances(cfg)
        with open_reader(f"chdb://{tmp_path}/store", str(tmp_path)) as store:
            cdrs = {r["account"] + str(r["effective_limit_s"]): r for r in store.query(
                "SELECT call_id, account, toString(end_reason) AS reason, effective_limit_s, duration_ms, "
                "billed_seconds, sell_cost, sip_status FROM cdrs FINAL")}
            debits = {r["entry_id"][5:]: r["amount"] for r in store.query(
                "SELECT entry_id, amount FROM account_ledger FINAL WHERE kind = 'debit'")}
        events = _lines(journal)
    finally:
        for c in callers:
            c.stop()
        carrier.stop()
        for p in reversed(procs):
            _stop(p)

    solo = cdrs["solo36"]
    assert (solo["reason"], solo["billed_seconds"], solo["sell_cost"]) == ("credit_limit", 36, Decimal("0.6"))
    assert 35_000 < solo["duration_ms"] <= 36_000
    duo_first, duo_second = cdrs["duo38"], cdrs["duo12"]
    assert (duo_first["reason"], duo_first["billed_seconds"], duo_first["sell_cost"]) == \
        ("max_duration_limit", 42, Decimal("0.7"))
    assert (duo_second["reason"], duo_second["billed_seconds"], duo_second["sell_cost"]) == \
        ("credit_limit", 12, Decimal("0.2"))
    (no,) = [c for c in cdrs.values() if c["account"] == "broke"]
    assert (no["reason"], no["sip_status"], no["sell_cost"]) == ("insufficient_balance", 402, 0)
    # Every CDR's cost is its debit, one per call (the refused call held nothing: no entry).
    assert debits == {c["call_id"]: c["sell_cost"] for c in cdrs.values() if c["account"] != "broke"}
    setups = {e["call_id"]: e for e in events if e["type"] == "call.setup"}
    assert setups[duo_second["call_id"]]["credit"]["available"] == "0.200000"  # the first call's hold counted
    assert {a: (b["balance"], b["reserved"], b["available"], b["topup_count"]) for a, b in live.items()} == {
        "solo": ("0.020000", "0.000000", "0.020000", 1), "duo": ("0.000000", "0.000000", "0.000000", 1),
        "broke": ("0.500000", "0.000000", "0.500000", 1)}

    # The log is the truth: replayed into a fresh store, the ledger gives the same balances.
    _cli("replay", "--from", f"file://{journal}", "--to", f"chdb://{tmp_path}/replayed", "--config", str(cfg))
    assert _balances(cfg, "--store", f"chdb://{tmp_path}/replayed") == live
