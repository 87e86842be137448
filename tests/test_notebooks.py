"""The notebooks run headless on pipeline-built CDRs; the GX suite fails loudly on corrupted ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from pipeline.synthetic import SyntheticSpec, generate
from sipledger.billing_audit import load_cdrs, load_deck, recompute, run_suite
from sipledger.cli import main
from sipledger.eventlog import FileJournal
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.store.tables import CDR_COLUMNS, cdr_to_row

REPO = Path(__file__).resolve().parents[1]
RATES = REPO / "sipledger" / "data" / "rates"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """CDRs built by the real pipeline path (replay of a generated log) into a chDB store."""
    tmp = tmp_path_factory.mktemp("nb")
    cfg = tmp / "sipledger.toml"
    cfg.write_text(f"""
[timers]
no_timer_max_duration = 60
[pipeline]
sell_rates = "{RATES}/sell.csv"
buy_rates = "{RATES}/buy.csv"
[[accounts]]
name = "initech"
bill_mode = "verified"
""")
    # With the node.lost verdict a live pipeline writes for the dead node: replay takes verdicts only from
    # the log (it has no end-of-log clock any more), and the orphans it closes carry open exposure.
    events = list(generate(SyntheticSpec(calls=600, seed=21, no_timer_cap_s=60), verdict_after_ms=30_000))
    j = FileJournal(tmp / "events.jsonl")
    for e in events:
        j.publish(e)
    j.close()
    res = CliRunner().invoke(
        main,
        [
            "replay",
            "--config",
            str(cfg),
            "--from",
            f"file://{tmp}/events.jsonl",
            "--to",
            f"chdb://{tmp}/store",
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp, cfg


def _run(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or json.dumps(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_billing_accuracy_notebook_passes_on_pipeline_cdrs(dataset: tuple[Path, Path]) -> None:
    tmp, cfg = dataset
    nb = _run("billing_accuracy.ipynb", {"SIPLEDGER_STORE_URL": f"chdb://{tmp}/store",
                                         "SIPLEDGER_CONFIG": str(cfg),
                                         "SIPLEDGER_EVENTS_LOG": f"file://{tmp}/events.jsonl"})
    text = _text(nb)
    assert "billing-accuracy suite passed; the store matches the event log" in text
    assert "0 failing rows" in text and "0 discrepancies" in text


def test_runaway_cost_notebook_runs_and_plots(dataset: tuple[Path, Path]) -> None:
    tmp, _ = dataset
    nb = _run("runaway_cost.ipynb", {"SIPLEDGER_STORE_URL": f"chdb://{tmp}/store"})
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    text = _text(nb)
    assert "recommended caps:" in text
    assert "exposure_sell_cost" in text and "exposure_buy_cost" in text
    # the dead node's calls were orphaned by the verdict in the log: their exposure is still open
    open_calls = re.search(r"calls with exposure still open at the carrier: (\d+)", text)
    assert open_calls is not None and int(open_calls.group(1)) > 0


def test_suite_fails_loudly_on_corrupted_cdrs(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    tmp, cfg = dataset
    src = open_store(f"chdb://{tmp}/store")
    good = fetch_cdrs(src)
    src.close()
    answered = [c for c in good if c["duration_ms"] > 10_000 and c["sell_rate"] is not None]
    overcharged = dict(answered[0], sell_cost="9.990000")
    inflated = dict(answered[1], verified_ms=answered[1]["duration_ms"] + 5000, unverified_ms=0)
    beyond = next(c for c in good if c["effective_limit_s"])
    beyond = dict(
        beyond,
        duration_ms=beyond["effective_limit_s"] * 1000 + 60_000,
        verified_ms=beyond["effective_limit_s"] * 1000 + 60_000,
        unverified_ms=0,
    )
    bad_store = open_store(f"chdb://{tmp_path}/bad")
    from sipledger.store import migrate

    migrate(bad_store)
    bad_store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in good])
    bad_store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 2) for c in (overcharged, inflated, beyond)])
    bad_store.close()

    audited = recompute(
        load_cdrs(f"chdb://{tmp_path}/bad"), load_deck(RATES / "sell.csv"), {"initech": "verified"}
    )
    result = run_suite(audited)
    assert not result.success
    failing = set(result.failing["call_id"])
    assert {overcharged["call_id"], inflated["call_id"], beyond["call_id"]} <= failing
    why = dict(zip(result.failing["call_id"], result.failing["failed"], strict=True))
    assert "sell_cost_text" in why[overcharged["call_id"]]
    assert "duration_ms, verified_ms" in why[inflated["call_id"]]
    assert "within_limit" in why[beyond["call_id"]]

    with pytest.raises(CellExecutionError) as err:
        _run(
            "billing_accuracy.ipynb",
            {"SIPLEDGER_STORE_URL": f"chdb://{tmp_path}/bad", "SIPLEDGER_CONFIG": str(cfg),
             "SIPLEDGER_EVENTS_LOG": f"file://{tmp}/events.jsonl"},
        )
    assert "failed the billing-accuracy suite" in str(err.value)


def test_reconciliation_fails_loudly_where_every_cdr_looks_fine_alone(dataset: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """A false 0 s orphan and a missing CDR pass the per-CDR suite; the log says otherwise."""
    tmp, cfg = dataset
    src = open_store(f"chdb://{tmp}/store")
    good = fetch_cdrs(src)
    src.close()
    victim = next(c for c in good if c["end_reason"] == "normal_caller_bye" and c["duration_ms"] > 10_000)
    false_orphan = dict(victim, end_reason="orphaned", ended_by="system", closed_by="pipeline", zombie=True,
                        end_ts=victim["answer_ts"], duration_ms=0, verified_ms=0, unverified_ms=0,
                        billed_seconds=0, sell_cost="0.000000", buy_cost="0.000000", margin="0.000000",
                        last_proof_of_life=victim["answer_ts"])
    missing = next(c for c in good if c["end_reason"] == "busy")
    rows = [false_orphan if c["call_id"] == victim["call_id"] else c for c in good if c is not missing]
    bad_store = open_store(f"chdb://{tmp_path}/bad")
    from sipledger.store import migrate

    migrate(bad_store)
    bad_store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in rows])
    bad_store.close()
    alone = run_suite(recompute(load_cdrs(f"chdb://{tmp_path}/bad"), load_deck(RATES / "sell.csv"),
                                {"initech": "verified"}))
    assert alone.success  # one CDR at a time, nothing is wrong
    with pytest.raises(CellExecutionError) as err:
        _run("billing_accuracy.ipynb", {"SIPLEDGER_STORE_URL": f"chdb://{tmp_path}/bad",
                                        "SIPLEDGER_CONFIG": str(cfg),
                                        "SIPLEDGER_EVENTS_LOG": f"file://{tmp}/events.jsonl"})
    assert "does not match the event log: 2 discrepancies" in str(err.value)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sipledger", "notebook", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_notebook_run_command_passes_and_writes_the_executed_notebook(dataset: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    tmp, cfg = dataset
    res = _cli("billing_accuracy", "--store", f"chdb://{tmp}/store", "--config", str(cfg),
               "--events-log", f"file://{tmp}/events.jsonl")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "billing-accuracy suite passed; the store matches the event log" in res.stdout
    # From another folder, by path, with the executed notebook written out (its figures in it).
    out = tmp_path / "runaway.ipynb"
    res = _cli(str(REPO / "notebooks" / "runaway_cost.ipynb"), "--store", f"chdb://{tmp}/store",
               "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "recommended caps:" in res.stdout and "[figure]" in res.stdout
    executed = nbformat.read(out, as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", [])) >= 3


def test_notebook_run_command_fails_with_the_audit(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    tmp, cfg = dataset
    src = open_store(f"chdb://{tmp}/store")
    good = fetch_cdrs(src)
    src.close()
    overcharged = dict(next(c for c in good if c["duration_ms"] > 10_000 and c["sell_rate"] is not None),
                       sell_cost="9.990000")
    bad = open_store(f"chdb://{tmp_path}/bad")
    from sipledger.store import migrate

    migrate(bad)
    bad.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in good] + [cdr_to_row(overcharged, 2)])
    bad.close()
    res = _cli("billing_accuracy", "--store", f"chdb://{tmp_path}/bad", "--config", str(cfg),
               "--events-log", f"file://{tmp}/events.jsonl")
    assert res.returncode == 1
    assert "notebook billing_accuracy.ipynb FAILED: AssertionError" in res.stderr
    assert "failed the billing-accuracy suite" in res.stdout + res.stderr
    res = _cli("no_such_notebook")
    assert res.returncode == 1 and "known are billing_accuracy, runaway_cost" in res.stderr
