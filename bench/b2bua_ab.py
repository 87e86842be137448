#!/usr/bin/env python3
"""CPU a call of two builds of sipledger's B2BUA, alternated run by run: A, B, A, B, ...

On this machine kind the same code at 300 calls/s scatters from about 1.1 to 1.5 ms of CPU a call
between runs minutes apart (the host's load shows as slower memory, not as steal time), so a single
run of each side cannot see a change of a few percent. Alternating puts both sides under the same
drift; the medians, and how often each side was the cheaper one of a pair, are what to read.

Each side is a source tree (a git worktree of the revision, with its SIP core compiled:
``python3 -m b2bua.native_build`` run in it) and an interpreter; every run is
``bench/b2bua_cps.py --only sipledger`` of that tree, with ``PYTHONPATH`` set to the tree.

    git worktree add /tmp/base <revision> && (cd /tmp/base && PYTHONPATH=$PWD python3 -m b2bua.native_build)
    python3 bench/b2bua_ab.py --a /tmp/base --b . --runs 6 [--rates 300] [--step-seconds 20]
    python3 bench/b2bua_ab.py --a . --b . --python-b "$(bench/optimized_python.sh)"   # interpreters
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(tree: Path, python: str, rates: str, seconds: float, workdir: Path) -> list[float | None]:
    """CPU ms a call of each rate step, in the order of ``rates`` (None: the step failed or did not
    run; why is printed from the run's own output)."""
    out = workdir / "results.json"
    argv = [python, "bench/b2bua_cps.py", "--only", "sipledger", "--rates", rates, "--step-seconds",
            str(seconds), "--retries", "0", "--skip", "faults", "--skip", "concurrency",
            "--workdir", str(workdir), "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    wanted = [int(r) for r in rates.split(",")]
    try:
        steps = json.loads(out.read_text())["ladders"]["sipledger"]
    except (OSError, ValueError, KeyError):
        steps = []
    # Step by step in the order run: a rate may come twice (``--rates 300,300``, the second step carrying
    # the first one's deferred transaction timers), so steps are not looked up by rate.
    by_step = [s for s in steps if s["rate"] in wanted]
    figures = [s["cpu_ms_per_call"] if s.get("passed") else None for s in by_step]
    figures += [None] * (len(wanted) - len(figures))
    if None in figures:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        print(f"  (a step failed or did not run; the run's last lines: {' | '.join(tail)})", flush=True)
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="source tree of side A")
    p.add_argument("--b", type=Path, required=True, help="source tree of side B")
    p.add_argument("--python-a", default=sys.executable)
    p.add_argument("--python-b", default=sys.executable)
    p.add_argument("--runs", type=int, default=6, help="runs of each side, alternated")
    p.add_argument("--rates", default="300", help="rate steps of each run (the last one is compared)")
    p.add_argument("--step-seconds", type=float, default=20.0)
    args = p.parse_args()
    sides = {"A": (args.a.resolve(), args.python_a), "B": (args.b.resolve(), args.python_b)}
    figures: dict[str, list[float]] = {"A": [], "B": []}
    b_cheaper = pairs = 0
    with tempfile.TemporaryDirectory(prefix="b2bua-ab-") as tmp:
        for run in range(1, args.runs + 1):
            pair: dict[str, float | None] = {}
            for name, (tree, python) in sides.items():
                steps = one_run(tree, python, args.rates, args.step_seconds, Path(tmp) / f"{name}{run}")
                pair[name] = steps[-1]
                if steps[-1] is not None:
                    figures[name].append(steps[-1])
                shown = ", ".join("failed" if s is None else f"{s:.2f}" for s in steps)
                print(f"run {run} {name}: {shown} ms a call", flush=True)
            a, b = pair["A"], pair["B"]
            if a is not None and b is not None:
                pairs += 1
                b_cheaper += b < a
    for name, (tree, python) in sides.items():
        got = figures[name]
        if got:
            print(f"{name} ({tree}, {python}): median {statistics.median(got):.2f}, min {min(got):.2f}, "
                  f"max {max(got):.2f} ms a call at {args.rates.split(',')[-1]}/s over {len(got)} runs")
        else:
            print(f"{name} ({tree}, {python}): no passed run")
    if figures["A"] and figures["B"]:
        ratio = statistics.median(figures["B"]) / statistics.median(figures["A"])
        print(f"B/A (medians) {ratio:.3f}; B was the cheaper of a pair in {b_cheaper} of {pairs}")
    lost = args.runs - min(len(figures["A"]), len(figures["B"]))
    if lost:
        print(f"note: {lost} run(s) of a side gave no figure; the medians are over different counts")
    print("target (issue 16): <= 1.2 ms a call at 300 calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
