"""Embedded pipeline (file journal + chDB) and replay, on generated traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from pipeline.domain.cdr import MONEY_FIELDS
from pipeline.domain.timeutil import format_ts, parse_ts
from pipeline.embedded import EmbeddedPipeline
from pipeline.synthetic import SyntheticSpec, expected_kinds, generate
from schemas.validation import validate_alert, validate_cdr, validate_command
from sipledger import config as config_mod
from sipledger.cli import main
from sipledger.eventlog import FileJournal, read_journal
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs

REPO = Path(__file__).resolve().parents[1]
RATES = REPO / "sipledger" / "data" / "rates"
EXPECTED_REASON = {"caller_bye": "normal_caller_bye", "callee_bye": "normal_callee_bye", "busy": "busy",
                   "cancel": "caller_cancel", "timer_refreshed": "normal_caller_bye",
                   "timer_expired": "session_expired", "no_timer_capped": "no_timer_limit",
                   "orphan": "orphaned"}


def write_config(tmp: Path, **pipeline: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in pipeline.items())
    text = f"""
[events]
log = "file://{tmp}/log/events.jsonl"
[store]
url = "chdb://{tmp}/store"
[timers]
no_timer_max_duration = 60
[pipeline]
grace_period = 2
node_timeout = 15
sell_rates = "{RATES}/sell.csv"
buy_rates = "{RATES}/buy.csv"
{extra}
[[accounts]]
name = "initech"
bill_mode = "verified"
"""
    path = tmp / "sipledger.toml"
    path.write_text(text)
    return path


def write_log(path: Path, events: list[dict], garbage: bool = True) -> None:
    j = FileJournal(path)
    for i, e in enumerate(events):
        j.publish(e)
        if garbage and i == 10:
            j.flush()
            with open(path, "ab") as fh:
                bad = dict(events[0], event_id="bad-1", seq=0)  # valid but for its seq
                fh.write(json.dumps(bad).encode() + b"\n")
    j.close()


def follow_log(cfg: config_mod.Config, end_ms: int, batch: int,
               live_nodes: tuple[str, ...] = SyntheticSpec().nodes) -> EmbeddedPipeline:
    """Run the embedded pipeline over the whole journal as if it happened live: the wall clock moves
    with the events (at most two minutes a step) while it reads the backlog, which decides nothing;
    once caught up, it runs on a second at a time for the node timeout and a little more while the
    live nodes go on heart-beating into the journal, so the silent node is judged (it advertises no
    address: no probe can answer for it), and the node.lost verdict is written and read back."""
    clock = [end_ms / 1000 - 3600]
    pipe = EmbeddedPipeline(cfg, clock=lambda: clock[0])
    while pipe.step(max_events=batch):
        clock[0] = min(end_ms / 1000, clock[0] + 120)
    clock[0] = end_ms / 1000
    journal = FileJournal(pipe.paths.events)
    for k in range(int(cfg.pipeline.node_timeout) + 4):
        clock[0] += 1
        for node in live_nodes:
            journal.publish({"event_id": f"hb-live-{node}-{k}", "call_id": f"node:{node}", "seq": 10**6 + k,
                             "type": "node.heartbeat", "ts": format_ts(int(clock[0] * 1000)), "node": node,
                             "schema_version": 1, "active_calls": 1})
        journal.flush()
        pipe.step()
        time.sleep(0.01)  # the verdict comes back from the probe pool
    journal.close()
    pipe.step(force_flush=True)
    return pipe


def test_embedded_pipeline_builds_one_rated_cdr_per_call_and_enforces_missed_deadlines(
        tmp_path: Path) -> None:
    spec = SyntheticSpec(calls=1500, seed=11, no_timer_cap_s=60)
    events = list(generate(spec))
    cfg = config_mod.load(write_config(tmp_path))
    write_log(tmp_path / "log" / "events.jsonl", events)
    pipe = follow_log(cfg, parse_ts(events[-1]["ts"]), batch=500)
    kinds = expected_kinds(spec)
    cdrs = fetch_cdrs(pipe.store)
    pipe.close()

    by_call = {c["call_id"]: c for c in cdrs}
    assert len(by_call) == len(cdrs)  # one CDR per call
    for call_id, kind in kinds.items():
        if kind == "zombie_missed":
            assert call_id not in by_call  # still up: the B2BUA has been told to hang it up
            continue
        cdr = by_call[call_id]
        validate_cdr(cdr)
        assert cdr["end_reason"] == EXPECTED_REASON[kind], (call_id, kind)
        assert 0 <= cdr["verified_ms"] <= cdr["duration_ms"]
        if cdr["duration_ms"] and cdr["account"] != "initech":
            assert cdr["sell_rate"] is not None and cdr["buy_rate"] is not None
    assert Counter(c["zombie"] for c in cdrs)[True] == sum(
        1 for k in kinds.values() if k in ("timer_expired", "no_timer_capped", "orphan"))

    commands = [json.loads(r) for _, r in read_journal(tmp_path / "log" / "commands.jsonl")]
    for c in commands:
        validate_command(c)
    missed = {cid for cid, k in kinds.items() if k == "zombie_missed"}
    assert missed and missed <= {c["call_id"] for c in commands}
    assert all(c["reason"] == "no_timer_limit" for c in commands if c["call_id"] in missed)
    alerts = [json.loads(r) for _, r in read_journal(tmp_path / "log" / "alerts.jsonl")]
    for a in alerts:
        validate_alert(a)
    assert missed <= {a["call_id"] for a in alerts if a["kind"] == "enforcement_missed"}
    orphans = {cid for cid, k in kinds.items() if k == "orphan"}
    assert orphans <= {a["call_id"] for a in alerts if a["kind"] == "orphaned"}

    dead = [json.loads(r) for _, r in read_journal(tmp_path / "log" / "dead-letter.jsonl")]
    assert len(dead) == 1 and dead[0]["field"] == "seq"


def _run_pipeline(cfg_path: Path) -> subprocess.Popen:
    with open(cfg_path.parent / "pipeline.out", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sipledger", "pipeline", "--config", str(cfg_path),
                                 "--log-level", "warning"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_for(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_sigkill_mid_stream_loses_and_duplicates_nothing_and_readers_work_meanwhile(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    spec = SyntheticSpec(calls=2000, seed=5, t0_ms=now_ms - 600_000, spacing_ms=100, no_timer_cap_s=60)
    events = list(generate(spec))
    events = [e for e in events if parse_ts(e["ts"]) <= now_ms]  # the log so far
    cfg_path = write_config(tmp_path)
    log = tmp_path / "log" / "events.jsonl"
    half = len(events) // 2
    write_log(log, events[:half], garbage=False)
    proc = _run_pipeline(cfg_path)
    try:
        checkpoint = tmp_path / "log" / "pipeline-checkpoint.json"
        _wait_for(lambda: checkpoint.exists() and json.loads(checkpoint.read_text())["offset"] > 0)
        # while the pipeline holds the chDB store, readers go through it
        runner = CliRunner()
        res = runner.invoke(main, ["cdrs", "--config", str(cfg_path)])
        assert res.exit_code == 0, res.output
        assert res.output.count("\n") > 0
        calls = runner.invoke(main, ["calls", "--config", str(cfg_path), "--format", "json"])
        assert calls.exit_code == 0, calls.output
        assert isinstance(json.loads(calls.output), list)
        j = FileJournal(log)
        for e in events[half:]:
            j.publish(e)
        j.close()
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream, no goodbye
        proc.wait(10)
        proc = _run_pipeline(cfg_path)
        size = log.stat().st_size
        _wait_for(lambda: json.loads(checkpoint.read_text())["offset"] >= size, 120)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    store = open_store(f"chdb://{tmp_path}/store")
    cdrs = fetch_cdrs(store)
    physical = store.query("SELECT count() AS n FROM cdrs")[0]["n"]
    store.close()
    ended = {e["call_id"] for e in events if e["type"] == "call.terminated"}
    got = [c["call_id"] for c in cdrs]
    assert len(got) == len(set(got))  # none duplicated in what readers see
    assert ended <= set(got)  # none lost
    assert physical >= len(got)


def test_replay_rebuilds_identical_cdrs_and_rerating_changes_only_money(tmp_path: Path) -> None:
    spec = SyntheticSpec(calls=800, seed=3, no_timer_cap_s=60)
    events = list(generate(spec))
    cfg_path = write_config(tmp_path)
    cfg = config_mod.load(cfg_path)
    write_log(tmp_path / "log" / "events.jsonl", events)
    end_ms = parse_ts(events[-1]["ts"])
    pipe = follow_log(cfg, end_ms, batch=400)
    live = {c["call_id"]: c for c in fetch_cdrs(pipe.store)}
    pipe.close()

    runner = CliRunner()
    res = runner.invoke(main, ["replay", "--config", str(cfg_path), "--from", f"file://{tmp_path}/log/events.jsonl",
                               "--to", f"chdb://{tmp_path}/replayed"])
    assert res.exit_code == 0, res.output
    assert "1 invalid skipped" in res.output
    s = open_store(f"chdb://{tmp_path}/replayed")
    replayed = {c["call_id"]: c for c in fetch_cdrs(s)}
    s.close()
    assert replayed == live  # field for field

    res2 = runner.invoke(main, ["replay", "--config", str(cfg_path), "--from", f"file://{tmp_path}/log/events.jsonl",
                                "--to", f"chdb://{tmp_path}/rerated",
                                "--rates", str(RATES / "sell-2027.csv")])
    assert res2.exit_code == 0, res2.output
    s = open_store(f"chdb://{tmp_path}/rerated")
    rerated = {c["call_id"]: c for c in fetch_cdrs(s)}
    s.close()
    assert rerated.keys() == live.keys()
    changed = 0
    for cid, old in live.items():
        new = rerated[cid]
        assert {k: v for k, v in new.items() if k not in MONEY_FIELDS} == \
            {k: v for k, v in old.items() if k not in MONEY_FIELDS}
        changed += new["sell_cost"] != old["sell_cost"]
    assert changed > 0  # acme's 44 rate doubled in the new deck

    # replaying into a store that already has CDRs is refused unless asked
    res3 = runner.invoke(main, ["replay", "--config", str(cfg_path), "--from", f"file://{tmp_path}/log/events.jsonl",
                                "--to", f"chdb://{tmp_path}/replayed"])
    assert res3.exit_code != 0 and "--replace" in res3.output
