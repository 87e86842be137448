"""Reports against a small hand-computed dataset, identical on chDB and on ClickHouse 18.16."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.validation import validate_cdr
from sipledger.cli import main
from sipledger.report.quality import Thresholds, alarms, quality
from sipledger.report.runaway import Period, cost_impact, runaway_cost
from sipledger.report.what_if import what_if
from sipledger.store import Store, migrate, open_store
from sipledger.store.tables import CDR_COLUMNS, cdr_to_row, ms_to_ts

DAY = 1_795_564_800_000  # 2026-11-25T00:00:00Z


def cdr(
    call_id: str,
    account: str,
    vendor: str,
    reason: str,
    duration_ms: int,
    verified_ms: int,
    sell_rate: str,
    buy_rate: str,
    timer: str = "no_timer",
    limit: int | None = 7200,
    start_ms: int = DAY + 3_600_000,
    answered: bool = True,
    pdd: int = 2_000,
) -> dict:
    answer = start_ms + pdd if answered else None
    end = (answer or start_ms + pdd) + duration_ms
    zombie = reason in (
        "no_timer_limit",
        "max_duration_limit",
        "orphaned",
        "session_expired",
        "session_refresh_failed",
        "liveness_probe_failed",
        "pipeline_terminate",
    )
    row = {
        "call_id": call_id,
        "node": "n1",
        "account": account,
        "caller": "100",
        "callee": "4420123456",
        "source_ip": "127.0.0.1",
        "vendor": vendor,
        "gateway": "127.0.0.1:5070",
        "setup_ts": ms_to_ts(start_ms),
        "ring_ts": ms_to_ts(start_ms + pdd // 2),
        "answer_ts": ms_to_ts(answer),
        "end_ts": ms_to_ts(end),
        "pdd_ms": pdd,
        "duration_ms": duration_ms,
        "verified_ms": verified_ms,
        "unverified_ms": duration_ms - verified_ms,
        "billed_seconds": -(-duration_ms // 1000),
        "timer_mode": timer if answered else "none",
        "session_expires": 90 if timer == "session_timer" else None,
        "effective_limit_s": limit if answered else None,
        "refresh_count": 0,
        "last_proof_of_life": ms_to_ts((answer or start_ms) + verified_ms) if answered else None,
        "end_reason": reason,
        "ended_by": "system" if zombie else "caller",
        "sip_status": None,
        "zombie": zombie,
        "sell_rate": sell_rate,
        "sell_cost": "0.000000",
        "buy_rate": buy_rate,
        "buy_cost": "0.000000",
        "margin": "0.000000",
        "currency": "USD",
        "rate_deck_version": "t",
        "schema_version": 1,
    }
    validate_cdr(row)
    return row


DATASET = [
    cdr("a1", "acme", "carrier-a", "normal_caller_bye", 120_000, 120_000, "0.020000", "0.012000"),
    cdr("a2", "acme", "carrier-a", "no_timer_limit", 7_200_000, 0, "0.020000", "0.012000"),
    cdr("a3", "acme", "carrier-a", "orphaned", 600_000, 300_000, "0.020000", "0.012000"),
    cdr("g1", "globex", "carrier-b", "normal_callee_bye", 4_000_000, 4_000_000, "0.030000", "0.018000"),
    cdr(
        "g2",
        "globex",
        "carrier-b",
        "session_expired",
        900_000,
        600_000,
        "0.030000",
        "0.018000",
        timer="session_timer",
        limit=None,
    ),
    cdr("g3", "globex", "carrier-b", "busy", 0, 0, "0.030000", "0.018000", answered=False),
]


@pytest.fixture(params=["chdb", "clickhouse-18.16"])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "chdb":
        s = open_store(f"chdb://{tmp_path}/store")
    else:
        s = open_store(
            request.getfixturevalue("real_stack").clickhouse_url(f"rep_{abs(hash(tmp_path)) % 10**8}")
        )
    migrate(s)
    s.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in DATASET])
    s.insert("cdrs", CDR_COLUMNS, [cdr_to_row(DATASET[1], 1)])  # a redelivered zombie must not count twice
    yield s
    if request.param != "chdb":
        s.execute(f"DROP DATABASE IF EXISTS {s.database}")
    s.close()


def test_runaway_cost_by_account_matches_hand_computation(store: Store) -> None:
    rep = runaway_cost(store, "account")
    rows = {r["account"]: r for r in rep.rows}
    acme, globex = rows["acme"], rows["globex"]
    assert (acme["calls"], acme["answered"], acme["zombie_calls"], acme["ended_at_limit"]) == (3, 3, 2, 1)
    assert acme["zombie_minutes"] == Decimal("130.00")  # (7,200,000 + 600,000) ms
    assert acme["unverified_minutes"] == Decimal("125.00")  # 120 + 5 minutes
    assert acme["unverified_sell_cost"] == Decimal("2.5000")  # 125 min x 0.02
    assert acme["unverified_buy_cost"] == Decimal("1.5000")  # 125 min x 0.012
    assert (globex["calls"], globex["answered"], globex["zombie_calls"], globex["ended_at_limit"]) == (
        3,
        2,
        1,
        0,
    )
    assert globex["unverified_minutes"] == Decimal("5.00")
    assert globex["unverified_sell_cost"] == Decimal("0.1500")
    assert rep.totals["unverified_sell_cost"] == Decimal("2.6500")
    assert [o["call_id"] for o in rep.top_offenders] == ["a2", "g2", "a3"]
    by_vendor = {r["vendor"]: r for r in runaway_cost(store, "vendor").rows}
    assert by_vendor["carrier-a"]["zombie_calls"] == 2
    assert [r["prefix"] for r in runaway_cost(store, "prefix").rows] == ["44"]
    assert [r["day"] for r in runaway_cost(store, "day").rows] == ["2026-11-25"]


def test_period_filters_by_end_time(store: Store) -> None:
    rep = runaway_cost(store, "account", Period(since_ms=DAY + 9_000_000))
    # calls start at 01:00; only a2 (7,200 s after a 2 s PDD) ends after 02:30, at 03:00:02
    assert {r["account"]: r["calls"] for r in rep.rows} == {"acme": 1}


def test_cost_impact_per_incident_and_month(store: Store) -> None:
    rows = {r["end_reason"]: r for r in cost_impact(store, Period(DAY, DAY + 86_400_000))}
    cap = rows["no_timer_limit"]
    assert cap["incidents"] == 1
    assert cap["avg_zombie_minutes"] == Decimal("120.00")
    assert cap["cost_per_incident"] == Decimal("2.4000")  # 120 min x 0.02
    assert cap["incidents_per_month"] == Decimal("30.0")  # one a day
    assert cap["cost_per_month"] == Decimal("72.00")
    assert rows["session_expired"]["cost_per_incident"] == Decimal("0.1500")


def test_what_if_recommends_caps_with_the_trade_off(store: Store) -> None:
    rows, best = what_if(store)
    table = {(r.account, r.cap_s): r for r in rows}
    # acme: a 900 s cap stops the capped zombie 6,300 s earlier: 105 min x 0.02 saved, nobody cut
    assert table[("acme", 900)].exposure_saved_minutes == Decimal("105.0000")
    assert table[("acme", 900)].exposure_saved_cost == Decimal("2.1000")
    assert table[("acme", 900)].cut_calls == 0
    assert table[("acme", 14400)].exposure_saved_cost == Decimal("-2.4000")  # the zombie would run 2 h more
    # globex: its 4,000 s conversation would be cut by caps below it
    assert table[("globex", 900)].cut_calls == 1
    assert table[("globex", 3600)].cut_minutes == Decimal("6.6667")
    assert table[("globex", 3600)].revenue_at_risk == Decimal("0.2000")
    assert table[("globex", 5400)].cut_calls == 0
    assert best == {"acme": 900, "globex": 14400}


def test_quality_and_alarms(store: Store) -> None:
    rows = quality(store)
    b = {r["hour"]: r for r in rows if r["vendor"] == "carrier-b"}
    # g2 (ends 01:15) and g3 (busy, 01:00) fall in the 01:00 hour; g1 ends at 02:06
    assert sorted(b) == ["2026-11-25 01:00", "2026-11-25 02:00"]
    one = b["2026-11-25 01:00"]
    assert (one["calls"], one["answered"], one["asr"]) == (2, 1, Decimal("0.500"))
    assert one["acd_minutes"] == Decimal("15.00")  # g2's 900 s
    assert one["pdd_ms"] == 2000
    assert b["2026-11-25 02:00"]["acd_minutes"] == Decimal("66.67")  # g1's 4,000 s
    found = alarms(rows, Thresholds(min_asr=Decimal("0.9"), min_calls=2, max_zombie_minutes=Decimal("100")))
    assert any("ASR alarm: carrier-b" in a for a in found)
    assert any("zombie alarm: carrier-a" in a for a in found)


def test_report_cli_formats_and_html_renders_in_chromium(tmp_path: Path) -> None:
    s = open_store(f"chdb://{tmp_path}/store")
    migrate(s)
    s.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in DATASET])
    s.close()
    runner = CliRunner()
    base = ["--store", f"chdb://{tmp_path}/store"]
    table = runner.invoke(main, ["report", "runaway-cost", *base])
    assert table.exit_code == 0, table.output
    assert "acme" in table.output and "Top offenders" in table.output
    js = runner.invoke(main, ["report", "runaway-cost", *base, "--format", "json"])
    assert json.loads(js.output)["totals"]["unverified_sell_cost"] == "2.6500"
    csv_out = runner.invoke(main, ["report", "runaway-cost", *base, "--by", "vendor", "--format", "csv"])
    assert csv_out.output.splitlines()[0].startswith("vendor,calls,answered,zombie_calls")
    impact = runner.invoke(main, ["report", "cost-impact", *base, "--format", "json"])
    assert {r["end_reason"] for r in json.loads(impact.output)} == {
        "no_timer_limit",
        "orphaned",
        "session_expired",
    }
    whatif = runner.invoke(main, ["report", "what-if", *base])
    assert "recommended no-timer cap for acme: 900 s" in whatif.output
    q = runner.invoke(main, ["report", "quality", *base, "--min-asr", "0.99"])
    assert q.exit_code == 3  # an alarm fired
    page = tmp_path / "report.html"
    res = runner.invoke(main, ["report", "runaway-cost", *base, "--format", "html", "-o", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "<img" in text and "data:image/png;base64," in text and "http" not in text.split("<body>")[1]

    chromium = shutil.which("chromium")
    assert chromium, "chromium is installed by deploy/install.sh"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            f"file://{page}",
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colors = img.resize((60, 80)).getcolors(60 * 80)
    assert colors is not None and len(colors) > 20  # not a blank page
