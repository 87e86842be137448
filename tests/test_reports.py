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
from sipledger.report import render
from sipledger.report.quality import Thresholds, alarms, quality
from sipledger.report.runaway import Period, cost_impact, runaway_cost
from sipledger.report.what_if import STANDARD_CAPS, candidate_caps, configured_cap, what_if
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
    exposure_ms: int | None = None,
    schema_version: int = 2,
) -> dict:
    """A schema-valid CDR. ``exposure_ms`` is given for orphans (it runs past their billed end, to the
    detection); for calls a node ended it is their unverified time, as the pipeline records it."""
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
        "schema_version": schema_version,
    }
    if schema_version >= 2:
        orphan = reason == "orphaned"
        row["exposure_ms"] = exposure_ms if exposure_ms is not None else duration_ms - verified_ms
        row["exposure_open"] = orphan
        row["closed_by"] = "pipeline" if orphan else "node"
    validate_cdr(row)
    return row


DATASET = [
    cdr("a1", "acme", "carrier-a", "normal_caller_bye", 120_000, 120_000, "0.020000", "0.012000"),
    cdr("a2", "acme", "carrier-a", "no_timer_limit", 7_200_000, 0, "0.020000", "0.012000"),
    # node lost: billed to the last proof of life (5 min, nothing on faith); 15 min more of exposure ran
    # on until the detection, still open at the carrier
    cdr("a3", "acme", "carrier-a", "orphaned", 300_000, 300_000, "0.020000", "0.012000", exposure_ms=900_000),
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
    assert acme["zombie_minutes"] == Decimal("125.00")  # billed: (7,200,000 + 300,000) ms
    assert acme["unverified_minutes"] == Decimal("120.00")  # a2's; the orphan was billed only to its proof
    assert acme["exposure_minutes"] == Decimal("135.00")  # a2's 120 + the orphan's 15
    assert acme["exposure_sell_cost"] == Decimal("2.7000")  # 135 min x 0.02
    assert acme["exposure_buy_cost"] == Decimal("1.6200")  # 135 min x 0.012: what the carriers may bill
    assert acme["open_exposure_calls"] == 1  # the orphan: no BYE was ever sent
    assert (globex["calls"], globex["answered"], globex["zombie_calls"], globex["ended_at_limit"]) == (
        3,
        2,
        1,
        0,
    )
    assert globex["exposure_minutes"] == globex["unverified_minutes"] == Decimal("5.00")
    assert globex["exposure_sell_cost"] == Decimal("0.1500")
    assert globex["exposure_buy_cost"] == Decimal("0.0900")
    assert globex["open_exposure_calls"] == 0
    assert [r["account"] for r in rep.rows] == ["acme", "globex"]  # most expensive exposure first
    t = rep.totals
    assert (t["account"], t["calls"], t["open_exposure_calls"]) == ("TOTAL", 6, 1)
    assert (t["exposure_sell_cost"], t["exposure_buy_cost"]) == (Decimal("2.8500"), Decimal("1.7100"))
    assert t["unverified_minutes"] == Decimal("125.00") and t["exposure_minutes"] == Decimal("140.00")
    assert list(t) == list(rep.rows[0])  # same columns, same order (CSV, JSON)
    by_vendor = {r["vendor"]: r for r in runaway_cost(store, "vendor").rows}
    assert by_vendor["carrier-a"]["zombie_calls"] == 2
    assert by_vendor["carrier-a"]["exposure_buy_cost"] == Decimal("1.6200")
    assert [r["prefix"] for r in runaway_cost(store, "prefix").rows] == ["44"]
    assert [r["day"] for r in runaway_cost(store, "day").rows] == ["2026-11-25"]


def test_an_orphan_shows_its_exposure_cost(store: Store) -> None:
    """The orphan's unverified time is 0 (billed to its last proof), yet it ran on at the carrier: the
    reports used to show it as costing nothing; now it outranks a smaller zombie of a dearer account."""
    offenders = runaway_cost(store, "account").top_offenders
    assert [o["call_id"] for o in offenders] == ["a2", "a3", "g2"]
    a3 = offenders[1]
    assert a3["end_reason"] == "orphaned" and a3["closed_by"] == "pipeline" and a3["exposure_open"] is True
    assert a3["unverified_minutes"] == Decimal("0.00")
    assert a3["exposure_minutes"] == Decimal("15.00")
    assert (a3["exposure_sell_cost"], a3["exposure_buy_cost"]) == (Decimal("0.3000"), Decimal("0.1800"))
    assert offenders[2]["exposure_sell_cost"] == Decimal("0.1500")  # g2: 5 min x 0.03
    orphaned = {r["end_reason"]: r for r in cost_impact(store)}["orphaned"]
    assert orphaned["incidents"] == 1
    assert orphaned["avg_exposure_minutes"] == Decimal("15.00")
    assert orphaned["cost_per_incident"] == Decimal("0.3000")
    assert orphaned["buy_cost_per_incident"] == Decimal("0.1800")


def test_cdrs_written_before_exposure_read_their_unverified_time(store: Store) -> None:
    """A schema_version 1 CDR has no exposure (the migration fills 0); its unverified time is the
    exposure it recorded, so history keeps its cost after the upgrade."""
    old = cdr("h1", "hooli", "carrier-a", "no_timer_limit", 600_000, 0, "0.020000", "0.012000",
              schema_version=1)
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(old, 1)])
    hooli = {r["account"]: r for r in runaway_cost(store, "account").rows}["hooli"]
    assert hooli["exposure_minutes"] == hooli["unverified_minutes"] == Decimal("10.00")
    assert hooli["exposure_sell_cost"] == Decimal("0.2000")
    assert hooli["open_exposure_calls"] == 0


def test_period_filters_by_end_time(store: Store) -> None:
    rep = runaway_cost(store, "account", Period(since_ms=DAY + 9_000_000))
    # calls start at 01:00; only a2 (7,200 s after a 2 s PDD) ends after 02:30, at 03:00:02
    assert {r["account"]: r["calls"] for r in rep.rows} == {"acme": 1}


def test_cost_impact_per_incident_and_month(store: Store) -> None:
    rows = {r["end_reason"]: r for r in cost_impact(store, Period(DAY, DAY + 86_400_000))}
    cap = rows["no_timer_limit"]
    assert cap["incidents"] == 1
    assert cap["avg_exposure_minutes"] == Decimal("120.00")
    assert cap["cost_per_incident"] == Decimal("2.4000")  # 120 min x 0.02
    assert cap["buy_cost_per_incident"] == Decimal("1.4400")  # 120 min x 0.012
    assert cap["incidents_per_month"] == Decimal("30.0")  # one a day
    assert cap["cost_per_month"] == Decimal("72.00")
    assert cap["buy_cost_per_month"] == Decimal("43.20")
    assert rows["session_expired"]["cost_per_incident"] == Decimal("0.1500")
    assert rows["orphaned"]["cost_per_month"] == Decimal("9.00")  # 0.30 x 30


def test_what_if_around_the_7200_s_cap_in_force(store: Store) -> None:
    rows, best = what_if(store)
    table = {(r.account, r.cap_s): r for r in rows}
    # the candidates surround each account's cap in force (7200 s): C/4 ... 2C and the standard ones
    for account in ("acme", "globex"):
        assert [r.cap_s for r in rows if r.account == account] == [1800, 3600, 5400, 7200, 10800, 14400]
        assert {r.in_force_s for r in rows if r.account == account} == {7200}
    # acme: a 1800 s cap stops the capped zombie 5,400 s earlier: 90 min x 0.02 saved, nobody cut;
    # the orphan a3 is not in the what-if at all (no cap stops a call whose node is dead)
    assert table[("acme", 1800)].calls == 2
    assert table[("acme", 1800)].exposure_saved_minutes == Decimal("90.0000")
    assert table[("acme", 1800)].exposure_saved_cost == Decimal("1.8000")
    assert table[("acme", 1800)].cut_calls == 0
    assert table[("acme", 7200)].exposure_minutes == Decimal("120.0000")  # what happened: a2 alone
    assert table[("acme", 7200)].net_benefit == 0
    assert table[("acme", 14400)].exposure_saved_cost == Decimal("-2.4000")  # the zombie would run 2 h more
    # globex: its 4,000 s conversation would be cut by caps below it; none saves anything
    assert table[("globex", 1800)].cut_calls == 1
    assert table[("globex", 3600)].cut_minutes == Decimal("6.6667")
    assert table[("globex", 3600)].revenue_at_risk == Decimal("0.2000")
    assert table[("globex", 5400)].cut_calls == 0
    assert max(r.net_benefit for r in rows if r.account == "globex") == 0
    # acme lowers its cap; globex has nothing to gain from any change, so it keeps the cap in force
    assert best == {"acme": 1800, "globex": 7200}


# The demo's scaled caps: a 20 s no-timer cap in force for "initech", three conversations under it,
# two zombies the cap ended (one with a liveness probe 10 s in) and an orphan whose 43.5 s of
# exposure no cap could have stopped.
DEMO = [
    cdr("d1", "initech", "carrier-b", "normal_caller_bye", 8_000, 8_000, "0.060000", "0.030000", limit=20),
    cdr("d2", "initech", "carrier-b", "normal_callee_bye", 18_000, 18_000, "0.060000", "0.030000", limit=20),
    cdr("d3", "initech", "carrier-b", "normal_caller_bye", 12_000, 12_000, "0.060000", "0.030000", limit=20),
    cdr("z1", "initech", "carrier-b", "no_timer_limit", 20_300, 0, "0.060000", "0.030000", limit=20),
    cdr("z2", "initech", "carrier-b", "no_timer_limit", 20_200, 10_000, "0.060000", "0.030000", limit=20),
    cdr("o1", "initech", "carrier-b", "orphaned", 6_000, 6_000, "0.060000", "0.030000", limit=20,
        exposure_ms=43_500),
]


def test_what_if_around_the_demos_20_s_cap(store: Store) -> None:
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in DEMO])
    rows, best = what_if(store)
    mine = [r for r in rows if r.account == "initech"]
    assert [r.cap_s for r in mine] == [5, 10, 15, 20, 30, 40]
    assert {r.calls for r in mine} == {5}  # the orphan is left out
    table = {r.cap_s: r for r in mine}
    assert table[20].exposure_minutes == Decimal("0.5000")  # z1 stopped at 20 s, z2 10 s after its probe
    # above the cap in force the zombies would only have run longer
    assert all(table[c].exposure_saved_minutes < 0 for c in (30, 40))
    # 10 s: saves 20.5 s of exposure (x 0.06/min = 0.0205) and cuts 10 s of talk (0.0100)
    assert table[10].exposure_saved_cost == Decimal("0.0205")
    assert table[10].revenue_at_risk == Decimal("0.0100")
    assert table[10].net_benefit == Decimal("0.0105") == max(r.net_benefit for r in mine)
    assert best["initech"] == 10
    assert table[best["initech"]].exposure_saved_minutes > 0


def test_what_if_never_recommends_a_cap_that_only_adds_exposure(store: Store) -> None:
    """The old fixed candidates against the demo's 20 s cap: every row says negative exposure saved.
    The recommendation is then the cap in force, not the least bad of them."""
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in DEMO])
    rows, best = what_if(store, caps=STANDARD_CAPS)  # what a user's --caps 900,...,14400 asks for
    mine = [r for r in rows if r.account == "initech"]
    assert [r.cap_s for r in mine] == list(STANDARD_CAPS)  # the user's list wins
    assert all(r.exposure_saved_minutes < 0 and r.net_benefit < 0 for r in mine)
    assert best["initech"] == 20
    assert best["acme"] == 900  # a useful candidate of the user's list is still taken
    recs = {r["account"]: r for r in render.recommendations(rows, best)}
    assert recs["initech"] == {"account": "initech", "cap_in_force_s": 20, "recommended_no_timer_cap_s": 20,
                               "net_benefit": Decimal(0)}


def test_candidate_caps_and_the_cap_in_force_from_configuration(store: Store) -> None:
    assert candidate_caps(20) == (5, 10, 15, 20, 30, 40)
    assert candidate_caps(7200) == (1800, 3600, 5400, 7200, 10800, 14400)
    # halves round up; the standard values between C/4 and 2C join the fractions
    assert candidate_caps(30) == (8, 15, 23, 30, 45, 60)
    assert candidate_caps(3000) == (750, 900, 1500, 1800, 2250, 3000, 3600, 4500, 5400, 6000)
    assert candidate_caps(None) == STANDARD_CAPS
    assert configured_cap(7200, 0) == 7200 and configured_cap(7200, 3600) == 3600
    assert configured_cap(0, 0) is None
    # CDRs that carry no effective limit: the configured cap is the one in force
    nolimit = [dict(c, call_id=f"n{c['call_id']}", account="umbrella", effective_limit_s=None) for c in DEMO]
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in nolimit])
    rows, best = what_if(store, configured=20)
    assert [r.cap_s for r in rows if r.account == "umbrella"] == [5, 10, 15, 20, 30, 40]
    assert best["umbrella"] == 10
    rows, _ = what_if(store)  # neither says: the standard candidates
    assert [r.cap_s for r in rows if r.account == "umbrella"] == list(STANDARD_CAPS)


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
    assert "exposure" in table.output and "TOTAL" in table.output
    assert "orphaned" in table.output.split("Top offenders")[1]  # the orphan now has a cost to show
    js = json.loads(runner.invoke(main, ["report", "runaway-cost", *base, "--format", "json"]).output)
    assert js["totals"]["exposure_sell_cost"] == "2.8500"
    assert js["totals"]["exposure_buy_cost"] == "1.7100"
    assert js["totals"]["open_exposure_calls"] == 1
    assert [o["call_id"] for o in js["top_offenders"]] == ["a2", "a3", "g2"]
    csv_out = runner.invoke(main, ["report", "runaway-cost", *base, "--by", "vendor", "--format", "csv"])
    assert csv_out.output.splitlines()[0].startswith(
        "vendor,calls,answered,zombie_calls,zombie_minutes,exposure_minutes,exposure_sell_cost,"
        "exposure_buy_cost,open_exposure_calls,unverified_minutes"
    )
    assert csv_out.output.splitlines()[-1].startswith("TOTAL,6,")
    impact = runner.invoke(main, ["report", "cost-impact", *base, "--format", "json"])
    assert {r["end_reason"] for r in json.loads(impact.output)} == {
        "no_timer_limit",
        "orphaned",
        "session_expired",
    }
    whatif = runner.invoke(main, ["report", "what-if", *base])
    assert whatif.exit_code == 0, whatif.output
    assert "recommended no-timer cap for acme: 1800 s (in force: 7200 s; net benefit 1.8000)" in whatif.output
    assert "recommended no-timer cap for globex: 7200 s (keep the cap in force" in whatif.output
    user = runner.invoke(main, ["report", "what-if", *base, "--caps", "900,3600", "--format", "json"])
    assert sorted({r["cap_s"] for r in json.loads(user.output)}) == [900, 3600]  # the user's caps win
    bad = runner.invoke(main, ["report", "what-if", *base, "--caps", "0,60"])
    assert bad.exit_code != 0 and "at least 1 s" in bad.output
    q = runner.invoke(main, ["report", "quality", *base, "--min-asr", "0.99"])
    assert q.exit_code == 3  # an alarm fired
    page = tmp_path / "report.html"
    res = runner.invoke(main, ["report", "runaway-cost", *base, "--format", "html", "-o", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "<img" in text and "data:image/png;base64," in text and "http" not in text.split("<body>")[1]
    # only the real TOTAL row is bold: top offenders, cost impact and what-if have no total
    assert "tr:last-child" not in text and "tr.total td{font-weight:600}" in text
    sections = {sec.split("</h2>")[0]: sec for sec in text.split("<h2>")[1:]}
    assert sections["Runaway cost by account"].count("<tr class='total'>") == 1
    assert "<tr class='total'><td class=''>TOTAL</td>" in sections["Runaway cost by account"]
    for title in ("Top offenders", "Cost impact per zombie incident", "No-timer cap what-if"):
        assert "class='total'" not in sections[title], title
    assert "exposure cost (sell)" in text and "calls with exposure open" in text

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
