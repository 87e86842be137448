"""The report: one line per step, the summary table, the ratios against the peers measured in the
same run, and the profile when asked."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cps.b2buas import B2BUA
from cps.results import ConcResult, StepResult


def fmt_step(r: StepResult) -> str:
    p = r.b2bua_proc
    return (f"  {r.b2bua:9s} {r.rate:5d}/s x{r.calls:6d}  {'PASS' if r.passed else 'FAIL'}  "
            f"ok {r.uac_ok}/{r.uas_ok} failed {r.uac_failed}/{r.uas_failed}  "
            f"retrans {r.retrans} ({r.retrans_pct}%)  stray {r.unexpected}  "
            f"achieved {r.achieved_cps}/s  setup p50/p99/max {r.setup_ms_p50:.0f}/{r.setup_ms_p99:.0f}/"
            f"{r.setup_ms_max:.0f} ms  B2BUA cpu {p.get('cpu_pct', 0)}% = {r.cpu_ms_per_call:.2f} ms/call"
            + (f"  loop stall max {r.loop_stall_ms:.0f} ms (gc {r.gc_pause_ms:.0f} ms)"
               if r.loop_stall_ms is not None and r.gc_pause_ms is not None else "")
            + f"  rss {p.get('rss_max_mb', 0)} MB "
            f"hwm {p.get('hwm_mb', 0)} MB  udp drops B2BUA {r.b2bua_udp_drops} SIPp {r.sipp_udp_drops}  "
            f"sipp cpu uac {r.uac_cpu_pct}% uas {r.uas_cpu_pct}%  other load {r.other_load_pct}%"
            + (f"  [{r.reason}]" if r.reason else ""))


def best_step(results: list[StepResult]) -> StepResult | None:
    passed = [r for r in results if r.passed]
    return max(passed, key=lambda r: r.rate) if passed else None


def print_report(b2buas: list[B2BUA], ladders: dict[str, list[StepResult]], conc: dict[str, ConcResult],
                 contacts: list[dict[str, Any]], orders: list[dict[str, Any]], args: argparse.Namespace,
                 journal_lines: int | None, elapsed: float, stopped: str) -> dict[str, Any]:
    print("\n" + "=" * 100)
    print(f"B2BUA call-rate benchmark  ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"run took {elapsed:.0f} s{', ' + stopped if stopped else ''})")
    print(f"steps: {args.step_seconds:g} s per rate, {args.hold:g} s calls; pass = 0 failed calls, "
          f"retransmissions < {args.max_retrans_pct:g}% of messages, >= 90% of the rate achieved"
          + ("; strict: stray messages abort calls" if args.strict else "; stray messages reported only"))
    # The interpreter matters for both Python B2BUAs (bench/optimized_python.sh: a sixth apart here).
    print(f"python (sipledger and Sippy): {sys.executable} {platform.python_version()}")
    if args.sipledger_gc_threshold or args.sipledger_rcvbuf:
        print(f"EXPERIMENT: sipledger ran with gc threshold {args.sipledger_gc_threshold or 'default'}, "
              f"SO_RCVBUF {args.sipledger_rcvbuf or 'default'} - not the shipped configuration")
    print("=" * 100)
    for title, rows in (("Fault checks: Contact transport parameter (one call each)", contacts),):
        if rows:
            print(f"\n{title}")
            for c in rows:
                print(f"  {c['b2bua']:9s} {c['contact']:15s} INVITE -> {c['invite_final']:28s} "
                      f"BYE -> {c['bye_final']:20s} carrier got {','.join(c['carrier_received']) or '-':18s} "
                      f"caller call {'ok' if c['call_ok'] else 'FAILED'}, carrier call "
                      f"{'ok' if c['carrier_call_ok'] else 'FAILED'}")
    if orders:
        print("\nFault checks: response order seen by the caller (message traces)")
        for o in orders:
            print(f"  {o['b2bua']:9s} {o['calls']} calls at {o['rate']}/s: provisional after the 200 in "
                  f"{o['provisional_after_200']} calls, 180 before 100 in {o['180_before_100']}, "
                  f"no 180 in {o['no_180_seen']}; calls ok {o['ok']}, failed {o['failed']}, "
                  f"stray messages {o['stray']}")
    print("\nCall-rate ladder")
    for b2 in b2buas:
        for r in ladders.get(b2.name, []):
            print(fmt_step(r))
    for r in (r for rs in ladders.values() for r in rs if r.profile):
        print(f"\n{r.b2bua} at {r.rate}/s: {r.profile}")
    print("\nSummary")
    hdr = (f"  {'B2BUA':9s} {'max clean cps':>13s} {'CPU% @max':>9s} {'RSS MB @max':>11s} {'HWM MB':>7s} "
           f"{'setup p99 ms':>12s} {'calls up':>9s} {'RSS MB @up':>10s} {'idle MB':>7s} {'KB/call':>7s} "
           f"{'held':>5s}")
    print(hdr)
    summary: dict[str, dict[str, Any]] = {}
    for b2 in b2buas:
        best = best_step(ladders.get(b2.name, []))
        c = conc.get(b2.name)
        row: dict[str, Any] = {
            "max_cps": best.rate if best else 0,
            "cpu_pct": best.b2bua_proc.get("cpu_pct") if best else None,
            "rss_mb": best.b2bua_proc.get("rss_max_mb") if best else None,
            "hwm_mb": best.b2bua_proc.get("hwm_mb") if best else None,
            "setup_p99_ms": round(best.setup_ms_p99) if best else None,
            "conc_up": c.peak_up if c else None, "conc_rss_mb": c.rss_at_peak_mb if c else None,
            "idle_mb": c.idle_rss_mb if c else None, "conc_held": c.held if c else None,
        }
        per_call = (round((c.rss_at_peak_mb - c.idle_rss_mb) * 1024 / c.peak_up, 1)
                    if c and c.peak_up else None)
        row["kb_per_call"] = per_call
        summary[b2.name] = row

        def f(v: Any, w: int) -> str:
            return f"{'-' if v is None else v!s:>{w}s}"

        print(f"  {b2.name:9s} {f(row['max_cps'], 13)} {f(row['cpu_pct'], 9)} {f(row['rss_mb'], 11)} "
              f"{f(row['hwm_mb'], 7)} {f(row['setup_p99_ms'], 12)} {f(row['conc_up'], 9)} "
              f"{f(row['conc_rss_mb'], 10)} {f(row['idle_mb'], 7)} {f(per_call, 7)} "
              f"{f(row['conc_held'], 5)}")
    steps = [r for rs in ladders.values() for r in rs]
    if steps:
        other = statistics.mean(r.other_load_pct for r in steps)
        print(f"  other load on the machine during the ladder steps: mean {other:.0f}% of one core "
              f"(max {max(r.other_load_pct for r in steps):.0f}%, {os.cpu_count()} cores)"
              + ("  ** results affected by other work on this machine **" if other > 25 else ""))
    for c in conc.values():
        extra = (f", B2BUA's own last heartbeat said {c.b2bua_reported_active} active"
                 if c.b2bua_reported_active is not None else "")
        print(f"  concurrency {c.b2bua}: {c.calls} calls at {c.rate}/s held {c.hold_s:.0f} s; "
              f"peak {c.peak_up} up, ok {c.uac_ok}/{c.uas_ok}, failed {c.uac_failed}/{c.uas_failed}, "
              f"retrans {c.retrans}, stray {c.unexpected}, CPU {c.cpu_pct}% over the test{extra}"
              + (f" [{c.note}]" if c.note else ""))
    if journal_lines is not None:
        print(f"  sipledger published {journal_lines} events to its file journal during the run")
    verdict = issue16_verdict(ladders, summary, conc, args)
    return {"summary": summary, "verdict": verdict}


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        print(f"(no profile written at {path})")
        return
    print(f"\nsipledger B2BUA profile ({path}), top {top} by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def _step_at(ladder: list[StepResult], rate: int) -> StepResult | None:
    """The last run of the step at ``rate`` (a re-run replaces a failed first try)."""
    runs = [r for r in ladder if r.rate == rate]
    return runs[-1] if runs else None


def issue16_verdict(ladders: dict[str, list[StepResult]], summary: dict[str, dict[str, Any]],
                    conc: dict[str, ConcResult], args: argparse.Namespace) -> dict[str, Any]:
    """sipledger against issue 16's targets, with the peers of the same run beside it."""
    sl = summary.get("sipledger")
    if not sl:
        return {}
    verdict: dict[str, Any] = {}
    ladder = ladders.get("sipledger", [])
    kam, sippy = summary.get("kamailio"), summary.get("sippy")
    print("\nIssue 16 targets (sipledger; peers from the same run)")
    top = ladder[-1].rate if ladder and all(r.passed for r in ladder) else None
    peers = ", ".join(f"{name} {row['max_cps']}"
                      for name, row in (("Kamailio", kam), ("Sippy", sippy)) if row)
    verdict["max_clean_cps"] = sl["max_cps"]
    verdict["rate_goal_met"] = bool(kam) and sl["max_cps"] >= kam["max_cps"] and sl["max_cps"] >= 800
    verdict["rate_floor_met"] = sl["max_cps"] >= 600 and (not sippy or sl["max_cps"] >= 4 * sippy["max_cps"])
    print(f"  clean rate: {sl['max_cps']} calls/s ({peers or 'no peer ran'}); goal >= 800 and Kamailio's: "
          f"{'MET' if verdict['rate_goal_met'] else 'NOT MET'}; floor >= 600 and 4x Sippy: "
          f"{'MET' if verdict['rate_floor_met'] else 'NOT MET'}"
          + (f"  [passed the top step tried, {top}/s]" if top else ""))
    at150 = _step_at(ladder, 150)
    best = best_step(ladder)
    if at150 is not None:
        verdict["p99_at_150_ms"] = at150.setup_ms_p99
        print(f"  setup p99 at 150/s: {at150.setup_ms_p99:.0f} ms (target < 20: "
              f"{'MET' if at150.passed and at150.setup_ms_p99 < 20 else 'NOT MET'})")
    if best is not None:
        verdict["p99_at_top_ms"] = best.setup_ms_p99
        print(f"  setup p99 at the top clean rate ({best.rate}/s): {best.setup_ms_p99:.0f} ms (target < 50: "
              f"{'MET' if best.setup_ms_p99 < 50 else 'NOT MET'})")
    stalls = [(r.rate, r.loop_stall_ms) for r in ladder if r.loop_stall_ms is not None]
    if stalls:
        print("  longest loop stall per step: " + ", ".join(f"{rate}/s {ms:.0f} ms" for rate, ms in stalls))
    at300 = _step_at(ladder, 300)
    if at300 is not None:
        verdict["cpu_ms_per_call_at_300"] = at300.cpu_ms_per_call
        print(f"  CPU per call at 300/s: {at300.cpu_ms_per_call:.2f} ms (target <= 1.2: "
              f"{'MET' if at300.cpu_ms_per_call <= 1.2 else 'NOT MET'})"
              + "".join(f"; {name} {_step_at(ladders.get(name, []), 300).cpu_ms_per_call:.2f} ms"  # type: ignore[union-attr]
                        for name in ("kamailio", "sippy") if _step_at(ladders.get(name, []), 300)))
    c = conc.get("sipledger")
    if c is not None and c.peak_up:
        kb = sl.get("kb_per_call")
        verdict["kb_per_held_call"] = kb
        met = kb is not None and kb <= 10 and c.peak_up >= 10_000
        print(f"  memory per held call: {kb} KB with {c.peak_up} calls up (target <= 10 KB at "
              f"{args.conc_calls}: {'MET' if met else 'NOT MET'})")
    return verdict

