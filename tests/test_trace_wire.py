"""Call analysis on the wire: SIPp calls through the real B2BUA, the records stored by the embedded
pipeline (chDB), `sipledger trace` against SIPp's own message logs, the exported capture read by tshark
(and sngrep, when installed) and imported back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from metrics_scrape import Samples, by, one, scrape
from sip_harness.b2bua_runner import RunningB2BUA, make_config
from sip_harness.fixtures import start_caller, start_carrier
from sip_harness.sipp import SippResult

from pipeline.embedded import EmbeddedPipeline
from schemas.validation import validate_signalling
from sipledger.cli import main
from sipledger.config import Config, from_dict
from sipledger.ports import free_port
from sipledger.trace_ladder import Ladder, header_value, render_text
from sipledger.trace_pcap import read_capture

pytestmark = pytest.mark.sipp


def journal_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_records(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        recs = journal_records(path)
        if len(recs) >= count or time.monotonic() > deadline:
            return recs
        time.sleep(0.05)


def short(e: dict[str, Any]) -> str:
    """A message as SIPp's first_line_sequence names it: the method, or "<status> <CSeq method>"."""
    first = e["first_line"]
    if first.startswith("SIP/2.0 "):
        return f"{first.split()[1]} {(header_value(e['headers'], 'CSeq') or '').split()[-1]}"
    return first.split()[0]


def leg_sequence(ladder: Ladder, leg: str) -> list[str]:
    """The leg's messages as its SIPp peer logged them: what the B2BUA received, the peer sent (">")."""
    return [f"{'>' if e['direction'] == 'in' else '<'} {short(e)}"
            for e in ladder.messages() if e["leg"] == leg]


def sipp_sequence(result: SippResult) -> list[str]:
    return result.first_line_sequence(retransmissions=True)


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_node(cfg: Config, journal: Path, calls: Sequence[tuple[str, str, dict[str, Any]]],
             tmp_path: Path, before_stop: Callable[[], None] | None = None) -> list[SippResult]:
    node = RunningB2BUA(cfg, journal).start()
    results = []
    try:
        for scenario, callee, kw in calls:
            with start_caller(scenario, node.address, workdir=tmp_path, service=callee, timeout_s=20,
                              name=f"caller_{callee}_{len(results)}", **kw) as proc:
                results.append(proc.wait())
        node.wait_terminated(len(calls))
        time.sleep(cfg.trace.linger + 0.5)  # the records wait for the last answers
        if before_stop is not None:
            before_stop()
    finally:
        node.stop()
    return results


def test_a_sipp_call_is_traced_stored_shown_exported_and_imported(tmp_path: Path) -> None:
    journal = tmp_path / "events" / "events.jsonl"
    with start_carrier("uas_answer_wait_bye", workdir=tmp_path, timeout_s=20) as uas:
        raw = make_config(tmp_path, [uas.local_port], trace={"bodies": True, "linger": 0.5},
                          store={"url": f"chdb://{tmp_path}/store"})
        raw["accounts"][0]["trace"] = True  # recorded because of its account
        cfg = from_dict(raw, tmp_path)
        (caller,) = run_node(cfg, journal, [("uac_basic_bye", "15551230000", {"pause_ms": 300})], tmp_path)
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    recs = journal_records(tmp_path / "events" / "call-signalling.jsonl")
    assert len(recs) == 1
    validate_signalling(recs[0])
    call_id = next(e["call_id"] for e in journal_records(journal) if e["type"] == "call.setup")
    assert (recs[0]["call_id"], recs[0]["selected_by"], recs[0]["end_reason"]) == \
        (call_id, "account", "normal_caller_bye")

    # The embedded pipeline stores it; `sipledger trace` reads it through the pipeline's query endpoint.
    pipe = EmbeddedPipeline(cfg)
    try:
        pipe.serve_queries()
        deadline = time.monotonic() + 20
        while pipe.signalling.sink.stored < 1 and time.monotonic() < deadline:
            pipe.step(force_flush=True)
            time.sleep(0.05)
        assert pipe.signalling.sink.stored == 1 and pipe.signalling.sink.refused == 0
        store = ["--set", f'store.url="chdb://{tmp_path}/store"']
        caller_call_id = caller.requests("INVITE", "sent")[0].call_id
        carrier_call_id = gw.requests("INVITE", "received")[0].call_id
        shown = {}
        for key in (call_id, caller_call_id, carrier_call_id):  # any of the three ids finds the call
            res = cli("trace", key, *store, "--json")
            assert res.exit_code == 0, res.output
            shown[key] = json.loads(res.output)
        assert shown[call_id] == shown[caller_call_id] == shown[carrier_call_id]
        (stored,) = shown[call_id][0]["records"]
        assert stored == recs[0]  # the table gives back the very record
        ladder = Ladder.of([stored])
        # Every message of both legs, in order, as each SIPp peer saw them.
        assert leg_sequence(ladder, "caller") == sipp_sequence(caller)
        assert leg_sequence(ladder, "carrier") == sipp_sequence(gw)
        memos = [m["text"] for m in ladder.memos()]
        assert memos[0].startswith("route: prefix '1555'")
        assert memos[1].startswith("attempt 1 of 1: gateway gw1")
        assert any(m.startswith("answered by gw1: caller leg") for m in memos)
        assert any(m.startswith("limit armed: ") for m in memos) or \
            any(m.startswith("no duration limit") for m in memos)
        assert memos[-1] == "call ended: normal_caller_bye by caller"
        text = cli("trace", call_id, *store).output
        assert text == render_text(ladder)
        assert "|-- INVITE sip:15551230000@" in text and "<-- 200 BYE" not in text
        full = cli("trace", call_id, *store, "--full").output
        assert f"Call-ID: {carrier_call_id}" in full and "m=audio" in full
        page = cli("trace", call_id, *store, "--format", "html").output
        assert page.startswith("<!DOCTYPE html>") and page.count("<details>") == len(ladder.messages())

        pcapng, pcap = tmp_path / "call.pcapng", tmp_path / "call.pcap"
        for f in (pcapng, pcap):
            res = CliRunner().invoke(main, ["trace", call_id, *store, "--export", str(f)])
            assert res.exit_code == 0 and f"wrote {len(ladder.messages())} packets" in res.output, res.output
    finally:
        pipe.close()

    # tshark reads the same messages, in the same order, and the memos as packet comments.
    first_lines = [e["first_line"] for e in ladder.messages()]
    for f in (pcapng, pcap):
        assert tshark_first_lines(f) == first_lines
    comments = subprocess.run(["tshark", "-r", str(pcapng), "-T", "fields", "-e", "frame.comment"],
                              capture_output=True, text=True, check=True).stdout
    assert comments.count("sipledger memo #") == len(ladder.memos())
    if shutil.which("sngrep"):
        assert sngrep_dialogs(pcapng, tmp_path) == 2  # the caller leg and the carrier leg

    # --import gives back the same ladder: exactly from the pcapng, the same messages from the pcap.
    res = cli("trace", "--import", str(pcapng), "--full")
    assert res.exit_code == 0 and res.output == render_text(ladder, full=True)
    (imported,) = read_capture(pcap)
    assert [(e["leg"], e["direction"], e["first_line"], e["headers"]) for e in imported.messages()] == \
        [(e["leg"], e["direction"], e["first_line"], e["headers"]) for e in ladder.messages()]
    assert imported.call_id == caller_call_id and imported.memos() == []


def tshark_first_lines(path: Path) -> list[str]:
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-E", "separator=|",
                          "-e", "sip.Request-Line", "-e", "sip.Status-Line"],
                         capture_output=True, text=True, check=True).stdout
    return ["".join(line.split("|")) for line in out.splitlines() if line.strip("|")]


def sngrep_dialogs(path: Path, tmp_path: Path) -> int:
    """sngrep without its interface: it reads the file and says how many dialogs it found."""
    res = subprocess.run(["sngrep", "-N", "-I", str(path), "-O", str(tmp_path / "sngrep-out.pcap")],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    found = res.stdout.replace("\r", "\n").split("Dialog count: ")[1:]
    counts = [int(x.split()[0]) for x in found if x.split() and x.split()[0].isdigit()]
    return max(counts or [0])


def test_failed_calls_only_publishes_the_call_that_failed_over(tmp_path: Path) -> None:
    journal = tmp_path / "events" / "events.jsonl"
    with start_carrier("uas_503", workdir=tmp_path, name="busy_gw", timeout_s=20) as first, \
            start_carrier("uas_answer_wait_bye", workdir=tmp_path, name="good_gw", calls=2,
                          timeout_s=20) as second:
        port = free_port()
        raw = make_config(tmp_path, [first.local_port, second.local_port], trace={"failed_calls": True},
                          metrics={"b2bua_port": port})
        raw["routes"].append({"prefix": "1666", "gateways": ["gw2"]})
        cfg = from_dict(raw, tmp_path)
        scraped: list[Samples] = []
        results = run_node(cfg, journal, [("uac_basic_bye", "15551230000", {"pause_ms": 300}),
                                          ("uac_basic_bye", "16661230000", {"pause_ms": 300})], tmp_path,
                           before_stop=lambda: scraped.append(scrape(port)))
        r1, r2 = first.wait(10), second.wait(10)
    assert all(r.ok for r in (*results, r1, r2)), "".join(r.describe() for r in (*results, r1, r2))
    setups = [e["call_id"] for e in journal_records(journal) if e["type"] == "call.setup"]
    recs = journal_records(tmp_path / "events" / "call-signalling.jsonl")
    # Both calls were recorded, only the one whose first attempt failed is published; the node says so.
    assert [r["call_id"] for r in recs] == setups[:1]
    assert by(scraped[0], "sipledger_b2bua_traces_total", "outcome") == \
        {"recorded": 2, "published": 1, "discarded": 1}
    assert one(scraped[0], "sipledger_b2bua_trace_buffered_bytes") == 0  # nothing held once both ended
    rec = recs[0]
    validate_signalling(rec)
    assert (rec["selected_by"], rec["failed"], rec["end_reason"]) == \
        ("failed_calls", True, "normal_caller_bye")
    ladder = Ladder.of([rec])
    assert len(ladder.carriers) == 2
    to_first = [short(e) for e in ladder.messages() if e["leg"] == "carrier" and e["remote"] == first.address]
    assert to_first == ["INVITE", "100 INVITE", "503 INVITE", "ACK"]
    assert "attempt 1 to gw1 failed: 503 Service Unavailable; failing over to gw2" in \
        [m["text"] for m in ladder.memos()]
    assert leg_sequence(ladder, "caller") == sipp_sequence(results[0])
    text = render_text(ladder)
    assert "503 Service Unavailable [1]" in text and "(account acme, normal_caller_bye, failed, recorded: " \
        "failed_calls)" in text
