#!/usr/bin/env python3
"""Call setups/s and memory per call: sipledger's B2BUA against the Sippy B2BUA, driven by SIPp.

For each B2BUA, in the same run and on loopback:

1. fault checks (cheap, observed rather than assumed): one call whose caller and carrier Contacts
   carry ``transport=UDP`` (upper case) and one with ``transport=udp``; then 300 calls at 100/s
   with SIPp's message trace on, counting calls whose provisional responses reached the caller
   after (or in a different order than) the carrier sent them;
2. a call-rate ladder: SIPp UAS carrier behind the B2BUA, SIPp UAC in front, 1 s calls for
   ``--step-seconds`` per rate. A step passes with zero failed calls (caller and carrier side),
   retransmissions below ``--max-retrans-pct`` of all SIP messages (SIPp ``-trace_counts``
   ``*_Retrans`` columns, both directions, both SIPp instances) and at least 90% of the offered
   setup rate achieved. The B2BUA's CPU (user+sys / wall from /proc/<pid>/stat) and RSS
   (VmRSS max / VmHWM from /proc/<pid>/status) are recorded per step;
3. a concurrency test on a fresh B2BUA process: ``--conc-calls`` calls (default 10,000) held long
   enough that all are up at once; the B2BUA's RSS is sampled while they are.

sipledger runs with its embedded file journal (events are published: that is the point). Sippy runs
as ``b2bua -f -u -A 0 -s <carrier>`` (no RADIUS, static route) with ``SIPLOG_BEND=none``.

Stray messages (SIPp "unexpected" counts, e.g. a 180 arriving after the 200) are reported but do
not fail a step: a real UAC drops a provisional response that arrives after the 2xx. ``--strict``
restores SIPp's default of aborting the call on them, which then counts as a failed call.

Every process this script starts gets its own process group; all are killed (SIGTERM, then
SIGKILL) on exit, on error, on Ctrl-C and when ``--time-limit`` runs out.

    python3 bench/b2bua_cps.py --quick      # smoke run, ~3 min
    python3 bench/b2bua_cps.py              # full run, ~20-30 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cps.b2buas import B2BUA, KamailioB2BUA, SipledgerB2BUA, SippyB2BUA, kamailio_binary
from cps.env import FULL_RATES, HOST, QUICK_RATES, SIPP
from cps.measure import contact_check, order_check, run_concurrency, run_ladders
from cps.procs import COMMANDS, PROCS, TimeUp
from cps.pyspy import pyspy_binary
from cps.report import print_profile, print_report
from cps.results import ConcResult, StepResult
from cps.system import free_port, mem_kb


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few short steps, 1,000-call concurrency")
    p.add_argument("--rates", help=f"comma-separated calls/s (default {FULL_RATES}; quick {QUICK_RATES})")
    p.add_argument("--step-seconds", type=float, help="seconds of calls per rate (default 12; quick 5)")
    p.add_argument("--hold", type=float, default=1.0, help="call duration, s (default 1)")
    p.add_argument("--cooldown", type=float, default=2.0, help="pause between steps, s")
    p.add_argument("--retries", type=int, help="re-runs of a failed step on a restarted B2BUA (1; quick 0)")
    p.add_argument("--max-retrans-pct", type=float, default=1.0,
                   help="retransmission ceiling, %% of messages")
    p.add_argument("--strict", action="store_true", help="stray messages abort calls (SIPp default)")
    p.add_argument("--conc-calls", type=int, help="concurrent calls to hold (default 10000; quick 1000)")
    p.add_argument("--conc-rate", type=int,
                   help="setup rate of the concurrency test (default 150; quick 100)")
    p.add_argument("--conc-hold", type=float, default=0.0,
                   help="call duration of the concurrency test, s (default calls/rate + 20)")
    p.add_argument("--only", choices=("sipledger", "sippy", "kamailio"), help="benchmark one system only")
    p.add_argument("--systems", default="sipledger,sippy,kamailio",
                   help="comma-separated systems to run (default all three: sipledger, sippy, kamailio)")
    p.add_argument("--kamailio-children", type=int, default=4, help="Kamailio's UDP worker processes")
    p.add_argument("--skip", action="append", default=[], choices=("faults", "ladder", "concurrency"),
                   help="skip a phase (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="run sipledger under cProfile and print its hottest functions at the end")
    p.add_argument("--py-spy", type=int, default=0, metavar="RATE",
                   help="sample sipledger with py-spy during its step at RATE calls/s and print the "
                        "functions most often on top of the stack")
    p.add_argument("--sipledger-gc-threshold", default="", metavar="G0,G1,G2",
                   help="EXPERIMENT: run sipledger with gc.set_threshold(G0,G1,G2) (not how it ships)")
    p.add_argument("--sipledger-rcvbuf", type=int, default=0, metavar="BYTES",
                   help="EXPERIMENT: set SO_RCVBUF on sipledger's UDP socket (not how it ships)")
    p.add_argument("--time-limit", type=float, help="whole-run limit, s (default 2400; quick 420)")
    p.add_argument("--workdir", help="where SIPp/B2BUA files go (default: a new folder under /tmp)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    q = args.quick
    args.rate_list = [int(x) for x in (args.rates or (QUICK_RATES if q else FULL_RATES)).split(",") if x]
    args.step_seconds = args.step_seconds or (5.0 if q else 12.0)
    args.retries = args.retries if args.retries is not None else (0 if q else 1)
    args.conc_calls = args.conc_calls or (1000 if q else 10_000)
    args.conc_rate = args.conc_rate or (100 if q else 150)
    args.time_limit = args.time_limit or (420.0 if q else 2400.0)
    return args


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise TimeUp


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        signal.alarm(0)
        PROCS.kill_all()
        for s, h in old.items():
            signal.signal(s, h)


def check_tools(systems: set[str]) -> None:
    if not Path(SIPP).exists():
        sys.exit(f"SIPp not found ({SIPP}); set SIPP_BINARY")
    if "sippy" in systems:
        try:
            import sippy  # noqa: F401
        except ImportError:
            sys.exit("the Sippy B2BUA is not installed: python3 -m pip install sippy==2.5.0 "
                     "(pyproject extra 'bench')")
    if "kamailio" in systems and kamailio_binary() is None:
        sys.exit("Kamailio is not installed: apt-get install kamailio (deploy/install.sh installs it)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools({args.only} if args.only else {x.strip() for x in args.systems.split(",")})
    if args.py_spy and pyspy_binary() is None:
        sys.exit("py-spy is not installed: python3 -m pip install py-spy (pyproject extra 'bench')")
    t_start = time.monotonic()
    deadline = t_start + args.time_limit
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="b2bua_cps-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}; time limit {args.time_limit:.0f} s; SIPp {SIPP}", flush=True)
    b2buas: list[B2BUA] = []
    systems = {args.only} if args.only else {x.strip() for x in args.systems.split(",") if x.strip()}
    if "sipledger" in systems:
        b2buas.append(SipledgerB2BUA(work / "sipledger", free_port(), profile=args.profile,
                                     gc_threshold=args.sipledger_gc_threshold,
                                     rcvbuf=args.sipledger_rcvbuf))
    if "sippy" in systems:
        b2buas.append(SippyB2BUA(work / "sippy", free_port()))
    if "kamailio" in systems:
        b2buas.append(KamailioB2BUA(work / "kamailio", free_port(), children=args.kamailio_children))
    ladders: dict[str, list[StepResult]] = {}
    conc: dict[str, ConcResult] = {}
    contacts: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    stopped = ""
    journal_lines: int | None = None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(args.time_limit) + 60)  # hard stop should a wait ever overrun the deadline
    with cleanup():
        try:
            for b2 in b2buas:
                b2.workdir.mkdir(parents=True, exist_ok=True)
                b2.start()
                print(f"{b2.name}: {b2.describe()}\n  listening on {HOST}:{b2.port}, carrier on "
                      f"{HOST}:{b2.carrier_port}, pid {b2.pid}, RSS {mem_kb(b2.pid)[0] / 1024:.1f} MB",
                      flush=True)
            if "faults" not in args.skip:
                for b2 in b2buas:
                    for ct in ("UDP", "udp"):
                        c = contact_check(b2, ct, b2.workdir / f"contact-{ct}", deadline)
                        contacts.append(c)
                        print(f"  {b2.name}: contact transport={ct}: INVITE -> {c['invite_final']}; carrier "
                              f"got {','.join(c['carrier_received'])}; caller call "
                              f"{'ok' if c['call_ok'] else 'FAILED'}, carrier call "
                              f"{'ok' if c['carrier_call_ok'] else 'FAILED'}", flush=True)
                    o = order_check(b2, b2.workdir / "order", deadline)
                    orders.append(o)
                    print(f"  {b2.name}: order: provisional after 200 in {o['provisional_after_200']}/"
                          f"{o['calls']} calls, stray {o['stray']}", flush=True)
                    if not b2.alive():
                        b2.restart()
            if "ladder" not in args.skip:
                ladders = run_ladders(b2buas, args.rate_list, args, deadline)
            for b2 in b2buas:
                if isinstance(b2, SipledgerB2BUA):
                    journal_lines = b2.journal_lines()
                b2.stop()
            if "concurrency" not in args.skip:
                for b2 in b2buas:
                    need = args.conc_calls / args.conc_rate * 2 + 60
                    if time.monotonic() + need > deadline:
                        print(f"{b2.name}: not enough time left for the concurrency test", flush=True)
                        stopped = "concurrency test skipped (time limit)"
                        continue
                    print(f"{b2.name}: concurrency test, {args.conc_calls} calls at {args.conc_rate}/s ...",
                          flush=True)
                    conc[b2.name] = c = run_concurrency(b2, args, b2.workdir / "concurrency", deadline)
                    print(f"  peak {c.peak_up} up, RSS {c.rss_at_peak_mb} MB (idle {c.idle_rss_mb} MB), "
                          f"failed {c.uac_failed}/{c.uas_failed}", flush=True)
                    if isinstance(b2, SipledgerB2BUA):
                        journal_lines = b2.journal_lines()
        except TimeUp:
            stopped = "stopped at the time limit"
            print("time limit reached; stopping", flush=True)
        except KeyboardInterrupt:
            stopped = "interrupted"
            print("interrupted; stopping", flush=True)
        finally:
            for b2 in b2buas:
                b2.stop()
    report = print_report(b2buas, ladders, conc, contacts, orders, args, journal_lines,
                          time.monotonic() - t_start, stopped)
    print("\nCommands")
    for b2 in b2buas:
        print(f"  {b2.name}: {b2.describe()}")
    for kind, cmd in COMMANDS.items():
        print(f"  {kind} (last one run): {cmd}")
    print(f"  every step keeps its SIPp stat/count/rtt/error files under {work}/<b2bua>/ladder/<rate>/")
    if args.profile:
        for prof in sorted(work.glob("sipledger/profile-*.prof")):
            print_profile(prof)
    results = {"args": {k: v for k, v in vars(args).items()}, "ladders": {k: [asdict(r) for r in v]
               for k, v in ladders.items()}, "concurrency": {k: asdict(v) for k, v in conc.items()},
               "contact_checks": contacts, "order_checks": orders, **report, "stopped": stopped}
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
