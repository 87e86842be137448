"""`sipledger audit`: the store reconciled with the log finds missing, false and phantom CDRs."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from test_pipeline_embedded import follow_log, write_config, write_log

from pipeline.domain.timeutil import parse_ts
from pipeline.synthetic import SyntheticSpec, generate
from sipledger import config as config_mod
from sipledger.audit import (
    FALSE_ORPHAN,
    MISSING,
    NO_EVENTS,
    NO_EXPOSURE,
    UNEXPECTED,
    WRONG_TIME,
    audit,
)
from sipledger.cli import main
from sipledger.eventlog import read_journal
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.store.tables import CDR_COLUMNS, cdr_to_row


def _pipeline_run(tmp_path: Path) -> tuple[Path, list[bytes], list[dict]]:
    spec = SyntheticSpec(calls=400, seed=9, no_timer_cap_s=60)
    events = list(generate(spec))
    cfg_path = write_config(tmp_path)
    write_log(tmp_path / "log" / "events.jsonl", events, garbage=False)
    pipe = follow_log(config_mod.load(cfg_path), parse_ts(events[-1]["ts"]), batch=300)
    cdrs = fetch_cdrs(pipe.store)
    pipe.close()
    raw = [r for _, r in read_journal(tmp_path / "log" / "events.jsonl")]
    return cfg_path, raw, cdrs


def test_a_pipeline_built_store_passes_and_every_kind_of_falsified_store_fails(tmp_path: Path) -> None:
    _, raw, cdrs = _pipeline_run(tmp_path)
    clean = audit(raw, cdrs)
    assert clean.ok, clean.discrepancies[:5]
    assert clean.orphaned > 0 and clean.ended > 0 and clean.open > 0  # zombies still up are open
    assert clean.cdrs == len(cdrs) == clean.ended + clean.orphaned

    by_reason: dict[str, list[dict]] = {}
    for c in cdrs:
        by_reason.setdefault(c["end_reason"], []).append(c)
    normal, other_normal, orphan = by_reason["normal_caller_bye"][0], by_reason["normal_callee_bye"][0], \
        by_reason["orphaned"][0]
    falsified = [c for c in cdrs if c["call_id"] not in (normal["call_id"], other_normal["call_id"],
                                                         orphan["call_id"])]
    lost = falsified.pop()  # a CDR that never got stored
    falsified += [
        # a real call stored as a 0 s, $0 orphan (what a stalled store turned 24 calls into)
        dict(normal, end_reason="orphaned", closed_by="pipeline", end_ts=normal["answer_ts"], duration_ms=0),
        dict(other_normal, end_ts="2030-01-01T00:00:00.000Z"),  # a falsified end time
        dict(orphan, exposure_ms=0, exposure_open=False),  # an orphan that costs nothing on paper
        dict(normal, call_id="phantom-1"),  # a CDR no event backs
    ]
    res = audit(raw, falsified)
    kinds = {(d.kind, d.call_id) for d in res.discrepancies}
    assert (MISSING, lost["call_id"]) in kinds
    assert (FALSE_ORPHAN, normal["call_id"]) in kinds
    assert (WRONG_TIME, other_normal["call_id"]) in kinds
    assert (NO_EXPOSURE, orphan["call_id"]) in kinds
    assert (NO_EVENTS, "phantom-1") in kinds
    assert len(res.discrepancies) == 5

    # an open call (a zombie its node still has up) with a CDR: a verdict nobody wrote
    open_call = next(json.loads(r)["call_id"] for r in raw if json.loads(r)["type"] == "call.answered"
                     and json.loads(r)["call_id"] not in {c["call_id"] for c in cdrs})
    res = audit(raw, [*cdrs, dict(normal, call_id=open_call)])
    assert [(d.kind, d.call_id) for d in res.discrepancies] == [(UNEXPECTED, open_call)]


def test_cli_exits_1_naming_the_call(tmp_path: Path) -> None:
    cfg_path, _, cdrs = _pipeline_run(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "--config", str(cfg_path)])
    assert ok.exit_code == 0, ok.output
    assert "audit passed" in ok.output
    store = open_store(f"chdb://{tmp_path}/store")
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(dict(cdrs[0], call_id="ghost-7"), version=1)])
    store.close()
    bad = runner.invoke(main, ["audit", "--config", str(cfg_path)])
    assert bad.exit_code == 1 and "ghost-7" in bad.output and "audit FAILED: 1 discrepancies" in bad.output
    js = runner.invoke(main, ["audit", "--config", str(cfg_path), "--format", "json"])
    doc = json.loads(js.output)
    assert js.exit_code == 1 and doc["discrepancies"] == {NO_EVENTS: 1}
    assert doc["details"][0]["call_id"] == "ghost-7"
