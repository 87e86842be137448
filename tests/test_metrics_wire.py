"""Prometheus endpoints scraped over HTTP while SIPp calls go through the real B2BUA and the embedded
pipeline (file journal + chDB): every counter is checked against the CDRs, alerts and commands the
pipeline stored or wrote, not against numbers of the test's own.

The calls: answered and ended by the caller's BYE, refused busy by the carrier, and answered by a caller
without session timers that the B2BUA cuts at ``timers.no_timer_max_duration`` (SIPp's
uac_no_timer_wait_bye waits for that BYE). A switch of another kind also publishes into the journal
(synthetic events of node ``ghost``) calls whose cap it never enforces, so the pipeline issues
call.terminate commands and enforcement_missed alerts of its own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from metrics_scrape import by, family_names, one, scrape
from sip_harness.b2bua_runner import RunningB2BUA, make_config
from sip_harness.fixtures import start_caller, start_carrier

from b2bua.metrics import NAMES as B2BUA_NAMES
from pipeline.domain.timeutil import format_ts
from pipeline.embedded import EmbeddedPipeline
from pipeline.metrics import EMBEDDED_NAMES, embedded_families, serve_pipeline
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.config import from_dict
from sipledger.eventlog import FileJournal
from sipledger.metrics import stop
from sipledger.ports import free_port

pytestmark = pytest.mark.sipp

ANSWERED, BUSY, CAPPED, GHOST = 5, 3, 2, 3


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_scraped_counters_match_the_cdrs(tmp_path: Path) -> None:
    b2bua_port, pipeline_port = free_port(), free_port()
    with start_carrier("uas_answer_wait_bye", workdir=tmp_path, name="answer", calls=ANSWERED) as answer, \
            start_carrier("uas_busy", workdir=tmp_path, name="busy", calls=BUSY) as busy, \
            start_carrier("uas_answer_wait_bye", workdir=tmp_path, name="capped", calls=CAPPED) as capped:
        raw = make_config(tmp_path, [answer.local_port, busy.local_port, capped.local_port],
                          timers={"no_timer_max_duration": 2},
                          routes=[{"prefix": "1555", "gateways": ["gw1"]},
                                  {"prefix": "1666", "gateways": ["gw2"]},
                                  {"prefix": "1777", "gateways": ["gw3"]}],
                          store={"url": f"chdb://{tmp_path / 'store'}"},
                          pipeline={"grace_period": 1.0, "node_timeout": 3600.0},
                          metrics={"b2bua_port": b2bua_port, "pipeline_port": pipeline_port})
        cfg = from_dict(raw, tmp_path)
        journal = tmp_path / "events" / "events.jsonl"
        node = RunningB2BUA(cfg, journal).start()
        pipe = EmbeddedPipeline(cfg)
        server = serve_pipeline(cfg, embedded_families(pipe))
        stop_pipe = threading.Event()
        runner = threading.Thread(target=pipe.run, args=(stop_pipe,), daemon=True)
        runner.start()
        try:
            results = []
            for scenario, service, n, kw in (("uac_basic_bye", "15551230000", ANSWERED, {"pause_ms": 300}),
                                             ("uac_expect_486", "16661230000", BUSY, {}),
                                             ("uac_no_timer_wait_bye", "17771230000", CAPPED, {})):
                with start_caller(scenario, node.address, workdir=tmp_path, service=service, calls=n,
                                  rate=10, timeout_s=30, **kw) as caller:
                    results.append(caller.wait())
            for carrier in (answer, busy, capped):
                results.append(carrier.wait(20))
            for r in results:
                assert r.ok, r.describe()
            assert [r.successful_calls for r in results[:3]] == [ANSWERED, BUSY, CAPPED]

            # Another switch's calls, an hour old, whose cap nobody enforced (no B2BUA of ours has them).
            ghost = FileJournal(journal)
            spec = SyntheticSpec(calls=GHOST, seed=5, nodes=("ghost",), no_timer_cap_s=5,
                                 t0_ms=int(time.time() * 1000) - 3_600_000)
            for event in generate(spec, mix={"zombie_missed": 1}):
                ghost.publish(event)
            # Its clock then runs past every cap (two heartbeats: a jump is believed once confirmed).
            for k, at in enumerate((spec.t0_ms + 600_000, spec.t0_ms + 601_000)):
                ghost.publish({"event_id": f"hb-ghost-late-{k}", "call_id": "node:ghost", "seq": 10_000 + k,
                               "type": "node.heartbeat", "ts": format_ts(at), "node": "ghost",
                               "schema_version": 1, "active_calls": GHOST})
            ghost.close()

            total = ANSWERED + BUSY + CAPPED
            wait_for(lambda: pipe.stats["cdrs"] >= total and pipe.stats["commands"] >= GHOST, 30,
                     "the pipeline's CDRs and commands")
            b2bua = scrape(b2bua_port)
            b2bua_families = family_names(b2bua_port)
        finally:
            node.stop()
        # The node stopped (no more heartbeats): the pipeline reads the journal to its end and stores all.
        wait_for(lambda: pipe.read_offset == journal.stat().st_size and pipe.sink.pending() == 0, 30,
                 "the pipeline to catch up")
        time.sleep(0.6)  # one more flush interval: the last rows acknowledged
        pipeline = scrape(pipeline_port)
        pipeline_families = family_names(pipeline_port)
        with pipe.lock:
            cdrs = pipe.store.query("SELECT end_reason, answer_ms, node FROM cdrs FINAL")
            alerts = pipe.store.query("SELECT kind FROM zombie_alerts FINAL")
        stop_pipe.set()
        runner.join(10)
        stop(server)
        pipe.close()

    lines = [ln for ln in journal.read_text().splitlines() if ln.strip()]
    commands = [ln for ln in pipe.paths.commands.read_text().splitlines() if ln.strip()]
    ours = [c for c in cdrs if c["node"] == "wire-node"]
    reasons = Counter(str(c["end_reason"]) for c in ours)
    print(f"\nB2BUA calls by result: {by(b2bua, 'sipledger_b2bua_calls_total', 'result')}; "
          f"CDRs: {dict(reasons)}")
    print(f"pipeline: events {one(pipeline, 'sipledger_pipeline_events_total'):.0f} of {len(lines)} journal "
          f"lines, CDRs {one(pipeline, 'sipledger_pipeline_cdrs_total'):.0f}, "
          f"alerts {by(pipeline, 'sipledger_pipeline_alerts_total', 'kind')}, "
          f"commands {by(pipeline, 'sipledger_pipeline_commands_total', 'type')}")

    # What the endpoints declare is what dashboards may name.
    assert b2bua_families == set(B2BUA_NAMES)
    assert pipeline_families == set(EMBEDDED_NAMES)

    # The B2BUA: every call it ended, by result, is a CDR with that end reason.
    assert reasons == Counter({"normal_caller_bye": ANSWERED, "busy": BUSY, "no_timer_limit": CAPPED})
    assert by(b2bua, "sipledger_b2bua_calls_total", "result") == dict(reasons)
    answered = sum(1 for c in ours if c["answer_ms"] is not None)
    assert one(b2bua, "sipledger_b2bua_setup_latency_seconds_count") == answered == ANSWERED + CAPPED
    buckets = {labels["le"]: v for labels, v in b2bua["sipledger_b2bua_setup_latency_seconds_bucket"]}
    assert buckets["+Inf"] == answered and one(b2bua, "sipledger_b2bua_setup_latency_seconds_sum") > 0
    # A caller's BYE is relayed to the carrier (one BYE of ours); a cap ends both legs (two).
    assert by(b2bua, "sipledger_b2bua_byes_sent_total", "reason") == {
        "normal_caller_bye": reasons["normal_caller_bye"], "no_timer_limit": 2 * reasons["no_timer_limit"]}
    assert one(b2bua, "sipledger_b2bua_active_calls") == 0
    assert by(b2bua, "sipledger_b2bua_info", "node") == {"wire-node": 1}
    assert one(b2bua, "sipledger_b2bua_spool_bytes") == 0  # a file journal: no spool

    # The pipeline: what it read, built, raised and issued is what the journal, the store and the
    # commands journal hold.
    assert one(pipeline, "sipledger_pipeline_events_total") == len(lines)
    assert one(pipeline, "sipledger_pipeline_cdrs_total") == len(cdrs) == ANSWERED + BUSY + CAPPED
    assert by(pipeline, "sipledger_pipeline_alerts_total", "kind") == dict(Counter(str(a["kind"])
                                                                               for a in alerts))
    assert by(pipeline, "sipledger_pipeline_alerts_total", "kind")["enforcement_missed"] == GHOST
    assert by(pipeline, "sipledger_pipeline_commands_total", "type") == {"call.terminate": len(commands)}
    assert len(commands) == GHOST
    written = by(pipeline, "sipledger_pipeline_sink_rows_written_total", "table")
    assert written["cdrs"] == len(cdrs) and written["zombie_alerts"] == len(alerts)
    assert one(pipeline, "sipledger_pipeline_sink_pending_rows") == 0
    assert one(pipeline, "sipledger_pipeline_sink_oldest_pending_seconds") == 0
    assert one(pipeline, "sipledger_pipeline_journal_lag_bytes") == 0
    assert one(pipeline, "sipledger_pipeline_dead_letters_total") == 0
    # The ghost's calls are still open: nobody obeys the commands addressed to it.
    assert by(pipeline, "sipledger_pipeline_open_calls", "partition") == {"journal": GHOST}
