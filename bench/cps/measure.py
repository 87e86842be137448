"""The measurements: a rate step, the ladder of steps, the concurrency (memory) test and the fault
checks, each a run of SIPp on both sides of one B2BUA."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cps.b2buas import B2BUA, SipledgerB2BUA
from cps.env import HOST
from cps.procs import PROCS, TimeUp, wait_deadline
from cps.pyspy import format_top, start_record
from cps.report import fmt_step
from cps.results import ConcResult, StepResult
from cps.sipp import Sipp, call_counts, parse_trace, read_rtt, record_sipp, stat_int, status_of
from cps.system import Sampler, cpu_seconds, free_port, host_busy_seconds, mem_kb, percentile, udp_drops


def run_step(b2: B2BUA, rate: int, args: argparse.Namespace, workdir: Path, deadline: float,
             attempt: int = 1) -> StepResult:
    workdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    hold_ms = int(args.hold * 1000)
    res = StepResult(b2.name, rate, calls, attempt=attempt, workdir=str(workdir))
    spy = None
    expected = calls / rate + args.hold + 2
    uas = Sipp("uas", workdir, b2.carrier_port).start(
        calls=calls, recv_timeout_ms=max(10_000, hold_ms + 10_000), global_timeout_s=int(expected + 40),
        strict=args.strict)
    uac = Sipp("uac", workdir, free_port())
    sampler = Sampler(b2.pid, group=b2.group_cpu)
    drops0 = udp_drops(b2.port), udp_drops(uas.port)
    b2.step_started()
    try:
        uac.start(calls=calls, remote=f"{HOST}:{b2.port}", rate=rate, hold_ms=hold_ms,
                  limit=calls + 100, recv_timeout_ms=10_000, global_timeout_s=int(expected + 30),
                  strict=args.strict)
        uac_cpu0, uas_cpu0, t0 = cpu_seconds(uac.pid), cpu_seconds(uas.pid), time.monotonic()
        if getattr(args, "py_spy", 0) == rate and isinstance(b2, SipledgerB2BUA) and attempt == 1:
            # sampled over the step's calls, starting a second in (after the first setups)
            spy = start_record(b2.pid, max(1.0, args.step_seconds - 1), workdir / "pyspy.raw")
        busy0 = host_busy_seconds()
        uac_cpu = uas_cpu = 0.0
        end = time.monotonic() + expected + 35
        while uac.proc is not None and uac.proc.poll() is None:
            if time.monotonic() > min(end, deadline):
                if time.monotonic() > deadline:
                    raise TimeUp
                res.reason = "caller did not finish in time; "
                break
            sampler.poll()
            uac_cpu = cpu_seconds(uac.pid) - uac_cpu0
            uas_cpu = cpu_seconds(uas.pid) - uas_cpu0
            time.sleep(0.25)
        wall = max(0.001, time.monotonic() - t0)
        busy = host_busy_seconds() - busy0
        res.b2bua_proc = sampler.finish()
        b2_cpu = res.b2bua_proc["cpu_s"] * wall / max(0.001, res.b2bua_proc["wall_s"])
        res.other_load_pct = round(100 * max(0.0, busy - b2_cpu - uac_cpu - uas_cpu) / wall, 1)
        res.b2bua_udp_drops = udp_drops(b2.port) - drops0[0]
        res.sipp_udp_drops = udp_drops(uas.port) - drops0[1] + udp_drops(uac.port)
        res.uac_cpu_pct = round(100 * uac_cpu / wall, 1)
        res.uas_cpu_pct = round(100 * uas_cpu / wall, 1)
        uac.stop()
        # the carrier's last calls end one second (its closing pause) after their BYE
        wait_deadline(uas.proc, 5.0, deadline)  # type: ignore[arg-type]
    finally:
        uac.stop()
        uas.stop()
    if spy is not None:
        wait_deadline(spy, 15.0, deadline)
        PROCS.stop(spy)
        res.profile = format_top(workdir / "pyspy.raw")
        print(res.profile, flush=True)
    own = b2.step_finished()
    res.loop_stall_ms, res.gc_pause_ms = own.get("loop_stall_ms"), own.get("gc_pause_ms")
    res.cpu_ms_per_call = round(1000 * res.b2bua_proc.get("cpu_s", 0.0) / calls, 3)
    counts = record_sipp(res, uac, uas)
    res.messages, res.retrans, res.unexpected = counts.messages, counts.retrans, counts.unexpected
    res.retrans_pct = round(100 * counts.retrans / counts.messages, 3) if counts.messages else 0.0
    rtt = read_rtt(workdir, uac.scenario, uac.pid)
    if len(rtt) > 1:
        times = sorted(t for t, _ in rtt)
        span = (times[-1] - times[0]) / 1000
        res.achieved_cps = round((len(times) - 1) / span, 1) if span > 0 else 0.0
        setups = [ms for _, ms in rtt]
        res.setup_ms_p50 = percentile(setups, 50)
        res.setup_ms_p99 = percentile(setups, 99)
        res.setup_ms_max = max(setups)
    problems = []
    if res.uac_failed or res.uac_ok < calls:
        problems.append(f"caller: {res.uac_ok}/{calls} ok, {res.uac_failed} failed")
    if res.uas_failed or res.uas_ok < calls:
        problems.append(f"carrier: {res.uas_ok}/{calls} ok, {res.uas_failed} failed")
    if res.retrans_pct >= args.max_retrans_pct:
        problems.append(f"retransmissions {res.retrans_pct}% >= {args.max_retrans_pct}%")
    if calls >= 20 and res.achieved_cps < 0.9 * rate:
        problems.append(f"achieved {res.achieved_cps}/s < 90% of {rate}/s")
    if not b2.alive():
        problems.append("B2BUA process died")
    res.reason += "; ".join(problems)
    res.passed = not problems and not res.reason
    return res


def run_ladders(b2buas: list[B2BUA], rates: list[int], args: argparse.Namespace,
                deadline: float) -> dict[str, list[StepResult]]:
    """Step every B2BUA through the rates, interleaved (A at r, B at r, A at the next r, ...) so a
    change in the machine's other load hits both alike. A B2BUA leaves the ladder at its first step
    that fails (after --retries re-runs on the same process, following a longer pause)."""
    results: dict[str, list[StepResult]] = {b2.name: [] for b2 in b2buas}
    climbing = list(b2buas)
    step_time = args.step_seconds + args.hold + 10
    for rate in rates:
        for b2 in list(climbing):
            if time.monotonic() + step_time > deadline:
                print(f"  time limit: ladder stopped before {b2.name} at {rate}/s", flush=True)
                return results
            if not b2.alive():
                print(f"  {b2.name} is not running; restarting it", flush=True)
                b2.restart()
            r = run_step(b2, rate, args, b2.workdir / "ladder" / f"{rate:05d}", deadline)
            print(fmt_step(r), flush=True)
            results[b2.name].append(r)
            attempt = 1
            while not r.passed and attempt <= args.retries and time.monotonic() + 2 * step_time < deadline:
                attempt += 1
                time.sleep(args.cooldown * 3)
                if not b2.alive():
                    b2.restart()
                print(f"  {b2.name}: re-running {rate}/s (attempt {attempt})", flush=True)
                r = run_step(b2, rate, args, b2.workdir / "ladder" / f"{rate:05d}-try{attempt}", deadline,
                             attempt)
                print(fmt_step(r), flush=True)
                results[b2.name].append(r)
            if not r.passed:
                climbing.remove(b2)
            time.sleep(args.cooldown)
        if not climbing:
            break
    return results


def run_concurrency(b2: B2BUA, args: argparse.Namespace, workdir: Path, deadline: float) -> ConcResult:
    workdir.mkdir(parents=True, exist_ok=True)
    n, rate = args.conc_calls, args.conc_rate
    hold = args.conc_hold or (n / rate + 20)
    res = ConcResult(b2.name, n, rate, hold)
    b2.restart()
    time.sleep(2)
    res.idle_rss_mb = round(mem_kb(b2.pid)[0] / 1024, 1)
    total = n / rate + hold + 15
    uas = Sipp("uas", workdir, b2.carrier_port).start(
        calls=n, recv_timeout_ms=int((hold + 30) * 1000), global_timeout_s=int(total + 60),
        strict=args.strict)
    uac = Sipp("uac", workdir, free_port())
    sampler = Sampler(b2.pid)
    best_rss_kb = 0
    try:
        uac.start(calls=n, remote=f"{HOST}:{b2.port}", rate=rate, hold_ms=int(hold * 1000), limit=n + 100,
                  recv_timeout_ms=10_000, global_timeout_s=int(total + 40), strict=args.strict)
        end = time.monotonic() + total + 30
        while uac.proc is not None and uac.proc.poll() is None:
            if time.monotonic() > min(end, deadline):
                if time.monotonic() > deadline:
                    raise TimeUp
                res.note = "caller did not finish in time"
                break
            sampler.poll()
            uac_stat, uas_stat = uac.stat(), uas.stat()
            # calls up = answered at the carrier and not yet hung up by the caller
            up = min(stat_int(uas_stat, "CurrentCall"),
                     stat_int(uac_stat, "CurrentCall"))
            rss = mem_kb(b2.pid)[0]
            if up > res.peak_up or (up == res.peak_up and up > 0 and rss > best_rss_kb):
                res.peak_up, best_rss_kb = up, rss
                if isinstance(b2, SipledgerB2BUA):
                    res.b2bua_reported_active = b2.heartbeat_active_calls()
            time.sleep(1.0)
        proc = sampler.finish()
        res.cpu_pct = proc["cpu_pct"]
        res.hwm_mb = proc["hwm_mb"]
        res.rss_at_peak_mb = round(best_rss_kb / 1024, 1)
        uac.stop()
        wait_deadline(uas.proc, 5.0, deadline)  # type: ignore[arg-type]
    finally:
        uac.stop()
        uas.stop()
    counts = record_sipp(res, uac, uas)
    res.retrans, res.unexpected = counts.retrans, counts.unexpected
    res.held = res.peak_up >= n and res.uac_failed == 0 and res.uas_failed == 0 and res.uac_ok == n
    b2.stop()
    return res


def contact_check(b2: B2BUA, ctransport: str, workdir: Path, deadline: float) -> dict[str, Any]:
    """One call whose caller and carrier Contacts say transport=<ctransport>; what happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    uas = Sipp("uas", workdir, b2.carrier_port).start(calls=1, recv_timeout_ms=8000, global_timeout_s=20,
                                                     ctransport=ctransport, trace_msg=True)
    uac = Sipp("uac", workdir, free_port())
    try:
        uac.start(calls=1, remote=f"{HOST}:{b2.port}", rate=1, hold_ms=200, recv_timeout_ms=8000,
                  global_timeout_s=20, ctransport=ctransport, trace_msg=True)
        wait_deadline(uac.proc, 25, deadline)  # type: ignore[arg-type]
        wait_deadline(uas.proc, 8, deadline)  # type: ignore[arg-type]
    finally:
        uac.stop()
        uas.stop()
    caller = parse_trace(workdir / "uac_messages.log")
    carrier = parse_trace(workdir / "uas_messages.log")
    invite_responses = [f for d, f, _, m in caller if d == "received" and m == "INVITE"]
    finals = [f for f in invite_responses if (status_of(f) or 0) >= 200]
    bye_responses = [f for d, f, _, m in caller if d == "received" and m == "BYE"]
    carrier_got = [f.split()[0] for d, f, _, _m in carrier if d == "received" and status_of(f) is None]
    ok, failed, _ = call_counts(uac.stat())
    c_ok, c_failed, _ = call_counts(uas.stat())
    return {"b2bua": b2.name, "contact": f"transport={ctransport}",
            "carrier_call_ok": c_ok == 1 and not c_failed,
            "invite_final": finals[0] if finals else "(no final response)",
            "bye_final": bye_responses[0] if bye_responses else "(none)",
            "carrier_received": carrier_got, "call_ok": ok == 1 and failed == 0}


def order_check(b2: B2BUA, workdir: Path, deadline: float, calls: int = 300,
                rate: int = 100) -> dict[str, Any]:
    """`calls` calls with message traces: do responses reach the caller in the order sent?"""
    workdir.mkdir(parents=True, exist_ok=True)
    uas = Sipp("uas", workdir, b2.carrier_port).start(calls=calls, recv_timeout_ms=10_000,
                                                     global_timeout_s=60, trace_msg=True)
    uac = Sipp("uac", workdir, free_port())
    try:
        uac.start(calls=calls, remote=f"{HOST}:{b2.port}", rate=rate, hold_ms=500, recv_timeout_ms=10_000,
                  global_timeout_s=60, trace_msg=True, limit=calls + 10)
        wait_deadline(uac.proc, calls / rate + 30, deadline)  # type: ignore[arg-type]
        wait_deadline(uas.proc, 5, deadline)  # type: ignore[arg-type]
    finally:
        uac.stop()
        uas.stop()
    per_call: dict[str, list[int]] = {}
    for d, f, cid, m in parse_trace(workdir / "uac_messages.log"):
        st = status_of(f)
        if d == "received" and m == "INVITE" and st is not None:
            per_call.setdefault(cid, []).append(st)
    late_1xx = sum(1 for sts in per_call.values()
                   if any(s < 200 for s in sts[sts.index(200) + 1:]) if 200 in sts)
    swapped_100_180 = sum(1 for sts in per_call.values() if 100 in sts and 180 in sts
                          and sts.index(180) < sts.index(100))
    missing_180 = sum(1 for sts in per_call.values() if 180 not in sts)
    ok, failed, _ = call_counts(uac.stat())
    return {"b2bua": b2.name, "calls": calls, "rate": rate, "calls_traced": len(per_call),
            "provisional_after_200": late_1xx, "180_before_100": swapped_100_180,
            "no_180_seen": missing_180, "ok": ok, "failed": failed,
            "stray": (uac.counts() + uas.counts()).unexpected}
