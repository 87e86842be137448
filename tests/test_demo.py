"""`sipledger demo --fast`: real SIP through two B2BUA processes, one killed; its CDRs pass the GX suite."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from sipledger.billing_audit import load_cdrs, load_deck, recompute, run_suite
from sipledger.cli import main
from sipledger.demo import FAST, rates_dir, run_demo

pytestmark = pytest.mark.sipp


def test_fast_demo_end_to_end(tmp_path: Path) -> None:
    out = io.StringIO()
    res = run_demo(tmp_path / "demo", fast=True, console=Console(file=out, width=200))
    text = out.getvalue()

    placed = FAST.calls + FAST.node2_calls
    assert len(res.outcomes) == placed
    assert res.cdrs == placed  # every call, ended or orphaned, has exactly one CDR
    reasons = res.end_reasons
    # what the mix is there to show
    for reason in (
        "normal_caller_bye",
        "normal_callee_bye",
        "session_expired",
        "no_timer_limit",
        "busy",
        "caller_cancel",
        "orphaned",
    ):
        assert reasons[reason] > 0, (reason, reasons)
    assert reasons["orphaned"] == FAST.node2_calls  # node-2 was killed with its calls up
    kinds = {a["kind"] for a in res.alerts}
    assert {"orphaned", "limit_reached", "refresh_failed"} <= kinds
    # node-2's clock stopped with it: nothing the log cannot justify (no enforcement_missed for its
    # calls); each of them is taken over by node-1, which hangs up both legs
    orphaned = {a["call_id"] for a in res.alerts if a["kind"] == "orphaned"}
    assert len(orphaned) == FAST.node2_calls
    assert all("taken over by node-1" in a["message"] for a in res.alerts if a["kind"] == "orphaned")
    assert not orphaned & {a["call_id"] for a in res.alerts if a["kind"] == "enforcement_missed"}
    orphan_cdrs = [c for c in load_cdrs(res.store_url).to_dict("records") if c["end_reason"] == "orphaned"]
    assert {c["call_id"] for c in orphan_cdrs} == orphaned
    # the carriers answered node-1's BYE: the exposure ran until it and is closed
    assert all(not c["exposure_open"] and c["exposure_ms"] > 0 and c["closed_by"] == "node"
               for c in orphan_cdrs)
    doomed = [o for o in res.outcomes if o.behaviour == "no_timer_bye" and o.callee.startswith("1")]
    assert len(doomed) == FAST.node2_calls
    assert all(o.ended_by == "remote" for o in doomed), [(o.ended_by, o.end_reason) for o in doomed]

    assert "Runaway cost by account" in text and "Zombie alerts" in text
    assert res.html_report.exists() and "data:image/png;base64," in res.html_report.read_text()

    # the CDRs are right by an independent recomputation, and still there for the CLI
    audited = recompute(
        load_cdrs(res.store_url), load_deck(rates_dir() / "sell.csv"), {"initech": "verified"}
    )
    result = run_suite(audited)
    assert result.success, result.failing[["call_id", "failed"]].to_string()
    cli = CliRunner().invoke(main, ["cdrs", "--config", str(res.config_path)])
    assert cli.exit_code == 0, cli.output
    assert len([json.loads(x) for x in cli.output.splitlines() if x]) == placed
