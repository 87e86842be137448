"""`sipledger demo`: the whole system on one machine, over real SIP, in about two minutes.

Two B2BUA nodes run as processes on loopback. Simulated callers of three accounts (from
127.0.0.1, .2 and .3, admitted by source IP) call through them to two simulated carriers: timer
callers that refresh and timer callers that go silent, legacy callers that hang up and legacy
callers that vanish without BYE; carriers that answer, hang up, ring out, are busy or fail.
Midway, node-2 is killed with SIGKILL while its calls are up. Its heartbeats stop; once the
pipeline has been caught up with the journal for `node_timeout` and node-2 does not answer a SIP
OPTIONS probe either, the pipeline writes a node.lost verdict into the journal and hands each of
node-2's calls to node-1 (call.takeover), which sends BYE on both legs as node-2's dialog: the
phones and the carriers hang up, and the calls are closed as `orphaned`, billed to their last
proof of life, with their exposure (from that proof to node-1's BYE) recorded. The embedded
pipeline builds rated CDRs in chDB; at the end the runaway-cost report, the alerts and an HTML
report.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sipledger import config as config_mod
from sipledger.eventlog import read_journal
from sipledger.stack.process import terminate_group

# Each account's phones call from their own loopback address: admission is by source IP.
ACCOUNTS = (
    ("acme", "127.0.0.1", "full"),
    ("globex", "127.0.0.2", "full"),
    ("initech", "127.0.0.3", "verified"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    calls: int  # through node-1
    window: float  # seconds over which they start
    node2_calls: int  # long legacy calls through node-2, which dies
    talk: tuple[float, float]
    session_ttl: int
    no_timer_cap: int
    max_call: int
    node_timeout: float
    kill_node2_at: float  # seconds after traffic starts
    grace: float = 2.0


FULL = Profile(
    calls=140,
    window=55.0,
    node2_calls=8,
    talk=(4.0, 22.0),
    session_ttl=12,
    no_timer_cap=30,
    max_call=90,
    node_timeout=24.0,
    kill_node2_at=12.0,
)
FAST = Profile(
    calls=28,
    window=8.0,
    node2_calls=4,
    talk=(2.0, 5.0),
    session_ttl=6,
    no_timer_cap=9,
    max_call=40,
    node_timeout=12.0,
    kill_node2_at=4.0,
)


@dataclass
class DemoResult:
    folder: Path
    config_path: Path
    store_url: str
    html_report: Path
    outcomes: list[Any] = field(default_factory=list)
    cdrs: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    end_reasons: Counter[str] = field(default_factory=Counter)


def rates_dir() -> Path:
    return Path(str(resources.files("sipledger").joinpath("data", "rates")))


def write_config(folder: Path, profile: Profile, carriers: dict[str, int]) -> Path:
    rates = rates_dir()
    lines = [
        '[node]\nid = "node-1"\n',
        '[sip]\nlisten_host = "127.0.0.1"\nlisten_port = 0\ntransports = ["udp"]\nresend_interval_ms = 250\n'
        "invite_timeout = 4.0\ncall_progress_timeout = 12.0\n",
        f"[timers]\nsession_ttl = {profile.session_ttl}\nmin_se = 2\nsession_update_segment = 2\n"
        f"no_timer_max_duration = {profile.no_timer_cap}\nmax_call_duration = {profile.max_call}\n",
        f'[events]\nlog = "file://{folder}/events.jsonl"\nspool_dir = "{folder}/spool"\n'
        "heartbeat_interval = 1.0\n",
        f'[store]\nurl = "chdb://{folder}/store"\n',
        f"[pipeline]\ngrace_period = {profile.grace}\nnode_timeout = {profile.node_timeout}\n"
        f'sell_rates = "{rates}/sell.csv"\nbuy_rates = "{rates}/buy.csv"\n',
    ]
    for name, ip, mode in ACCOUNTS:
        lines.append(f'[[accounts]]\nname = "{name}"\nips = ["{ip}"]\nbill_mode = "{mode}"\n')
    for name, port in carriers.items():
        lines.append(f'[[gateways]]\nname = "{name}"\nvendor = "{name}"\nhost = "127.0.0.1"\nport = {port}\n')
    names = list(carriers)
    lines.append(f'[[routes]]\nprefix = "44"\ngateways = {json.dumps(names)}\n')
    lines.append(f'[[routes]]\nprefix = "1"\ngateways = {json.dumps(names[::-1])}\n')
    path = folder / "sipledger.toml"
    path.write_text("\n".join(lines))
    config_mod.load(path)  # fail here, not in a child process, if anything is off
    return path


class B2BUANode:
    """One B2BUA as its own process, as an operator would run it."""

    def __init__(self, config_path: Path, node_id: str, folder: Path) -> None:
        self.node_id = node_id
        self.log = folder / f"b2bua-{node_id}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sipledger",
                    "b2bua",
                    "--config",
                    str(config_path),
                    "--set",
                    f'node.id="{node_id}"',
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on udp 127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"B2BUA {self.node_id} did not start:\n{self.log.read_text(errors='replace')[-2000:]}"
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate_group(self.proc.pid, grace=10)


def _plans(profile: Profile, seed: int) -> tuple[Any, Any]:
    from sipledger.simulator.traffic import DEFAULT_MIX, MixEntry, TrafficPlan

    main = TrafficPlan(
        calls=profile.calls,
        window=profile.window,
        seed=seed,
        talk_time=profile.talk,
        session_expires=profile.session_ttl,
        min_se=2,
        watch_time=profile.no_timer_cap + profile.max_call,
        answer_timeout=20.0,
        timeout=profile.window + profile.max_call + 20,
        max_concurrent=200,
        mix=DEFAULT_MIX,
    )
    # node-2's calls are long legacy calls: they are up when the node dies, and their phones stay on
    # the line until node-1 takes them over (node timeout, then a 3 s probe) and hangs them up.
    doomed = TrafficPlan(
        calls=profile.node2_calls,
        window=1.0,
        seed=seed + 1,
        callee_prefix="1",
        talk_time=(profile.max_call * 2, profile.max_call * 2),
        watch_time=5.0,
        timeout=profile.kill_node2_at + profile.node_timeout + 15.0,
        drain=1.0,
        mix=(MixEntry("no_timer_bye", "answer", 1),),
    )
    return main, doomed


def run_demo(folder: Path, fast: bool = False, seed: int = 7, console: Console | None = None) -> DemoResult:
    console = console or Console()
    profile = FAST if fast else FULL
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return asyncio.run(_run(folder.resolve(), profile, seed, console))


async def _run(folder: Path, profile: Profile, seed: int, console: Console) -> DemoResult:
    from pipeline.embedded import EmbeddedPipeline
    from sipledger.simulator.caller import Caller
    from sipledger.simulator.traffic import close_all, run_traffic, start_carriers

    carriers = await start_carriers(["carrier-a", "carrier-b"])
    callers = [
        Caller(f"{name}-phones", number=f"+1555{i:03d}0000", host=ip)
        for i, (name, ip, _) in enumerate(ACCOUNTS)
    ]
    for c in callers:
        await c.start()
    cfg_path = write_config(folder, profile, {n: c.port for n, c in carriers.items()})
    cfg = config_mod.load(cfg_path)
    nodes: list[B2BUANode] = []
    pipe = None
    stop = threading.Event()
    runner: threading.Thread | None = None
    outcomes: list[Any] = []
    try:
        nodes = [B2BUANode(cfg_path, "node-1", folder), B2BUANode(cfg_path, "node-2", folder)]
        pipe = EmbeddedPipeline(cfg)
        endpoint = pipe.serve_queries()
        runner = threading.Thread(target=pipe.run, args=(stop,), name="pipeline", daemon=True)
        runner.start()
        console.print(
            f"[bold]sipledger demo[/bold]: B2BUA node-1 on udp 127.0.0.1:{nodes[0].port}, "
            f"node-2 on :{nodes[1].port}; carriers {', '.join(f'{n} :{c.port}' for n, c in carriers.items())}"
            f"; pipeline on {pipe.paths.events} -> {pipe.store.url} (queries at {endpoint})"
        )
        main_plan, doomed_plan = _plans(profile, seed)
        total = main_plan.calls + doomed_plan.calls
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            calls_task = bar.add_task("calls finished", total=total)
            phase = bar.add_task("", total=None)

            def progress(_o: Any, _done: int, _total: int) -> None:
                bar.advance(calls_task)

            def kill_node2() -> None:
                nodes[1].kill()
                bar.update(phase, description="[red]node-2 killed (SIGKILL) with calls up[/red]")

            loop = asyncio.get_running_loop()
            loop.call_later(profile.kill_node2_at, kill_node2)
            bar.update(phase, description="placing calls")
            main_run = run_traffic(
                ("127.0.0.1", nodes[0].port), main_plan, carriers, callers, progress=progress
            )
            doomed_run = run_traffic(
                ("127.0.0.1", nodes[1].port), doomed_plan, carriers, callers[:1], progress=progress
            )
            results = await asyncio.gather(main_run, doomed_run)
            outcomes = [o for r in results for o in r]
            bar.update(phase, description="waiting for the pipeline to enforce and close node-2's calls")
            await asyncio.to_thread(_wait_settled, pipe, profile)
            bar.update(phase, description="done")
    finally:
        for node in nodes:
            node.stop()
        await close_all(carriers.values(), callers)
        stop.set()
        if runner is not None:
            runner.join(30)
    assert pipe is not None
    return _finish(folder, cfg_path, pipe, outcomes, console)


def _wait_settled(pipe: Any, profile: Profile, timeout: float | None = None) -> None:
    """Until every call has a CDR except those still up, and node-2's calls are closed."""
    deadline = time.monotonic() + (timeout or profile.node_timeout + profile.no_timer_cap + 30)
    while time.monotonic() < deadline:
        with pipe.lock:
            open_calls = sum(1 for _ in pipe.processor.active_calls())
        if open_calls == 0:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # one more flush cycle


def _finish(folder: Path, cfg_path: Path, pipe: Any, outcomes: list[Any], console: Console) -> DemoResult:
    from sipledger.alerts_view import describe
    from sipledger.report import render
    from sipledger.report.runaway import Period, runaway_cost

    pipe.step(force_flush=True)
    store = pipe.store
    report = runaway_cost(store, "account", Period(), top=8)
    html = folder / "runaway-report.html"
    html.write_text(render.html_report(store, report, Period()))
    reasons = Counter(
        {
            r["end_reason"]: int(r["n"])
            for r in store.query(
                "SELECT toString(end_reason) AS end_reason, count() AS n FROM cdrs FINAL GROUP BY end_reason"
            )
        }
    )
    cdrs = sum(reasons.values())
    alerts = [json.loads(raw) for _, raw in read_journal(pipe.paths.alerts)]
    pipe.close()

    console.rule("Calls")
    placed = Counter(f"{o.behaviour} -> {o.carrier_behaviour}" for o in outcomes)
    for k, n in sorted(placed.items()):
        console.print(f"  {n:4d}  {k}")
    console.print("  end reasons in the CDRs: " + ", ".join(f"{k} {n}" for k, n in reasons.most_common()))
    console.rule("Runaway cost")
    render.runaway_table(report, console.file)
    console.rule(f"Zombie alerts ({len(alerts)})")
    seen: set[str] = set()
    for a in alerts:
        if a["alert_id"] not in seen:
            seen.add(a["alert_id"])
            console.print("  " + describe(a), highlight=False, soft_wrap=True)
    console.rule("Where things are")
    console.print(f"  HTML report: {html}")
    console.print(f"  CDRs:        sipledger cdrs --config {cfg_path}")
    console.print(f"  reports:     sipledger report runaway-cost --config {cfg_path}")
    console.print(f"  alerts:      sipledger alerts tail --config {cfg_path}")
    console.print(
        "  notebooks:   notebooks/billing_accuracy.ipynb and runaway_cost.ipynb with "
        f"SIPLEDGER_STORE_URL=chdb://{folder}/store SIPLEDGER_CONFIG={cfg_path}"
    )
    return DemoResult(folder, cfg_path, f"chdb://{folder}/store", html, outcomes, cdrs, alerts, reasons)
