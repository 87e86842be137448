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
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sipledger.ports import free_port as shared_free_port
from sipledger.stack.process import process_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "bench" / "b2bua"
UAC_XML = SCENARIOS / "uac_load.xml"
UAS_XML = SCENARIOS / "uas_load.xml"
SIPP = os.environ.get("SIPP_BINARY") or shutil.which("sipp") or "/usr/bin/sipp"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL_RATES = "50,100,150,200,250,300,350,400,500,600,800,1000,1200,1500,2000"
QUICK_RATES = "50,200,400"


class TimeUp(Exception):
    """The run's --time-limit was reached."""


# ------------------------------------------------------------------------------------ processes


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Procs:
    """Every subprocess of the run, each in its own process group; `kill_all` ends them all."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, cwd: Path, out: Path, err: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(out, "wb") as fout, open(err or out.with_suffix(".err"), "wb") as ferr:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr,
                                    env=env, start_new_session=True, preexec_fn=_raise_nofile)
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes] | None, grace: float = 2.0,
             sig: int = signal.SIGTERM) -> None:
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # SIGKILL the whole group even when the leader has exited (children may linger).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.live:
            self.live.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc, grace=1.0)


PROCS = Procs()
COMMANDS: dict[str, str] = {}  # the last command line of each kind, printed at the end


def wait_deadline(proc: subprocess.Popen[bytes], timeout: float, deadline: float) -> bool:
    """Wait for `proc` at most `timeout` s and never past `deadline`; True when it exited."""
    end = min(time.monotonic() + timeout, deadline)
    while time.monotonic() < end:
        if proc.poll() is not None:
            return True
        time.sleep(0.1)
    if time.monotonic() >= deadline and proc.poll() is None:
        raise TimeUp
    return proc.poll() is not None


# --------------------------------------------------------------------------------------- /proc


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle/iowait) since boot."""
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    return (sum(cols[:8]) - cols[3] - cols[4]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of the whole process (all threads); NaN once it is gone."""
    cpu = process_cpu_seconds(pid)
    return float("nan") if cpu is None else cpu


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; (0, 0) when the process is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def udp_bound(port: int) -> bool:
    want = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                if line.split()[1].endswith(want):
                    return True
    return False


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP socket(s) bound to `port` (receive buffer full)."""
    want = f":{port:04X}"
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[1].endswith(want):
                    with contextlib.suppress(ValueError, IndexError):
                        total += int(cols[-1])
    return total


def free_port() -> int:
    """A loopback port free for UDP and TCP right now, and not bound by anyone (SO_REUSEPORT!)."""
    for _ in range(100):
        port = shared_free_port(HOST, udp_and_tcp=True)
        if not udp_bound(port) and port not in (5060, 5061):
            return port
    raise RuntimeError("no free loopback port")


class Sampler:
    """Tracks CPU and the largest VmRSS of one pid over a window (call `poll` while waiting)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(pid)
        self.rss_max = mem_kb(pid)[0]

    def poll(self) -> None:
        self.rss_max = max(self.rss_max, mem_kb(self.pid)[0])

    def finish(self) -> dict[str, float]:
        self.poll()
        wall = time.monotonic() - self.t0
        cpu = cpu_seconds(self.pid) - self.cpu0
        rss, hwm = mem_kb(self.pid)
        return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
                "rss_max_mb": round(self.rss_max / 1024, 1), "rss_end_mb": round(rss / 1024, 1),
                "hwm_mb": round(hwm / 1024, 1)}


# ---------------------------------------------------------------------------------- the B2BUAs


class B2BUA:
    name = ""

    def __init__(self, workdir: Path, carrier_port: int) -> None:
        self.workdir = workdir
        self.carrier_port = carrier_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        PROCS.stop(self.proc, grace=3.0)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.5)
        self.start()

    def describe(self) -> str:
        raise NotImplementedError

    def tail(self, n: int = 1500) -> str:
        parts = []
        for f in sorted(self.workdir.glob("*.out")) + sorted(self.workdir.glob("*.err")):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace")[-n:].strip()
                if text:
                    parts.append(f"{f.name}: {text}")
        return "\n".join(parts)


# What-if launcher for sipledger (--sipledger-gc-threshold / --sipledger-rcvbuf): the same server,
# with the collector thresholds changed and/or SO_RCVBUF set on its UDP socket after the bind.
_EXPERIMENT_LAUNCHER = """\
import gc, runpy, socket, sys
if "{gc}":
    gc.set_threshold(*[int(x) for x in "{gc}".split(",")])
if {rcvbuf}:
    import b2bua.transport as t
    _bind = t.Transports._bind
    async def bind(self, port):
        await _bind(self, port)
        if self._udp is not None:
            self._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, {rcvbuf})
    t.Transports._bind = bind
sys.argv[0] = "sipledger"
runpy.run_module("sipledger", run_name="__main__", alter_sys=True)
"""


class SipledgerB2BUA(B2BUA):
    name = "sipledger"

    def __init__(self, workdir: Path, carrier_port: int, profile: bool = False,
                 gc_threshold: str = "", rcvbuf: int = 0) -> None:
        super().__init__(workdir, carrier_port)
        self.profile = profile
        self.gc_threshold = gc_threshold
        self.rcvbuf = rcvbuf
        self.journal = workdir / "journal" / "events.jsonl"

    def _config(self) -> Path:
        cfg = self.workdir / "sipledger.toml"
        cfg.write_text(f"""\
[node]
id = "bench-node"

[sip]
listen_host = "{HOST}"
listen_port = 0
transports = ["udp"]

[events]
log = "file://{self.journal}"
spool_dir = "{self.workdir / 'spool'}"

[[accounts]]
name = "bench"
ips = ["{HOST}"]

[[gateways]]
name = "carrier"
host = "{HOST}"
port = {self.carrier_port}

[[routes]]
prefix = ""
gateways = ["carrier"]
""")
        return cfg

    def start(self) -> None:
        self.starts += 1
        cfg = self._config()
        out = self.workdir / f"b2bua-{self.starts}.out"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        prof_file = self.workdir / f"profile-{self.starts}.prof"
        prof = ["-m", "cProfile", "-o", str(prof_file)] if self.profile else []
        argv = [sys.executable, *prof, "-m", "sipledger", "b2bua", "--config", str(cfg)]
        if self.gc_threshold or self.rcvbuf:  # experiments only: not how sipledger ships
            code = _EXPERIMENT_LAUNCHER.format(gc=self.gc_threshold, rcvbuf=self.rcvbuf)
            argv = [sys.executable, "-c", code, "b2bua", "--config", str(cfg)]
        self.argv = argv
        self.proc = PROCS.start(argv, cwd=ROOT, out=out, env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            m = re.search(rb"listening on udp [\d.]+:(\d+)", out.read_bytes())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sipledger B2BUA did not start:\n{self.tail()}")

    def stop(self) -> None:
        # SIGTERM makes it stop cleanly (flushing the journal, and writing the profile under cProfile)
        PROCS.stop(self.proc, grace=15.0 if self.profile else 5.0)
        self.proc = None

    def describe(self) -> str:
        return " ".join(a if " " not in a else repr(a) for a in self.argv)

    def journal_lines(self) -> int:
        try:
            with open(self.journal, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def heartbeat_active_calls(self) -> int | None:
        """active_calls of the last node.heartbeat in the journal (the B2BUA's own count)."""
        try:
            with open(self.journal, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 200_000))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(tail):
            if '"node.heartbeat"' in line:
                with contextlib.suppress(ValueError):
                    return int(json.loads(line).get("active_calls"))
        return None


class SippyB2BUA(B2BUA):
    name = "sippy"

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        out = self.workdir / f"b2bua-{self.starts}.out"
        launcher = ("import sys; from sippy.b2bua import main_func; sys.argv[0] = 'b2bua'; "
                    "sys.exit(main_func())")
        argv = [sys.executable, "-c", launcher, "-f", "-u", "-A", "0", "-l", HOST, "-p", str(self.port),
                "-s", f"{HOST}:{self.carrier_port}", "-c", str(self.workdir / "b2bua.sock"),
                "-P", str(self.workdir / "b2bua.pid"), "-L", str(self.workdir / "b2bua.log")]
        self.argv = argv
        env = dict(os.environ, SIPLOG_BEND="none")
        self.proc = PROCS.start(argv, cwd=self.workdir, out=out, env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if udp_bound(self.port):
                time.sleep(0.5)  # its receiver/sender threads start right after the bind
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Sippy B2BUA did not start:\n{self.tail()}")

    def describe(self) -> str:
        return "SIPLOG_BEND=none " + " ".join(a if " " not in a else repr(a) for a in self.argv)


# -------------------------------------------------------------------------------------- SIPp


def _semicolon_table(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return [], []
    if not lines:
        return [], []
    header = lines[0].rstrip(";").split(";")
    rows = [ln.rstrip(";").split(";") for ln in lines[1:]]
    return header, rows


def last_stat(path: Path) -> dict[str, str]:
    """Last row of a SIPp -trace_stat file as {column: value}."""
    header, rows = _semicolon_table(path)
    return dict(zip(header, rows[-1], strict=False)) if rows else {}


def stat_int(stat: dict[str, str], key: str) -> int:
    try:
        return int(stat.get(key, "0") or 0)
    except ValueError:
        return 0


@dataclass
class Counts:
    messages: int = 0
    retrans: int = 0
    unexpected: int = 0
    timeouts: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.messages + other.messages, self.retrans + other.retrans,
                      self.unexpected + other.unexpected, self.timeouts + other.timeouts)


def read_counts(workdir: Path, scenario: str, pid: int) -> Counts:
    """Totals of SIPp's -trace_counts file (<scenario>_<pid>_counts.csv, last row)."""
    header, rows = _semicolon_table(workdir / f"{scenario}_{pid}_counts.csv")
    if not rows:
        return Counts()
    c = Counts()
    for name, value in zip(header, rows[-1], strict=False):
        try:
            n = int(value)
        except ValueError:
            continue
        if name.endswith(("_Sent", "_Recv")):
            c.messages += n
        elif name.endswith("_Retrans"):
            c.retrans += n
        elif name.endswith("_Unexp"):
            c.unexpected += n
        elif name.endswith("_Timeout"):
            c.timeouts += n
    c.messages += c.retrans
    return c


def read_rtt(workdir: Path, scenario: str, pid: int) -> list[tuple[float, float]]:
    """(time ms since start, INVITE->200 ms) per call from SIPp's -trace_rtt file."""
    out: list[tuple[float, float]] = []
    with contextlib.suppress(OSError):
        for line in (workdir / f"{scenario}_{pid}_rtt.csv").read_text().splitlines()[1:]:
            parts = line.split(";")
            with contextlib.suppress(ValueError, IndexError):
                out.append((float(parts[0]), float(parts[1])))
    return out


class Sipp:
    """One SIPp process (UAC or UAS) with its stat/count files in `workdir`."""

    def __init__(self, role: str, workdir: Path, port: int) -> None:
        self.role = role
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.scenario = "uac_load" if role == "uac" else "uas_load"

    def start(self, *, calls: int, recv_timeout_ms: int, global_timeout_s: int, ctransport: str = "udp",
              remote: str | None = None, rate: float | None = None, hold_ms: int = 0,
              limit: int | None = None, strict: bool = False, trace_msg: bool = False,
              scenario: Path | None = None) -> Sipp:
        xml = scenario or (UAC_XML if self.role == "uac" else UAS_XML)
        self.scenario = xml.stem
        argv = [SIPP, "-sf", str(xml)]
        if remote:
            argv.append(remote)
        argv += ["-i", HOST, "-p", str(self.port), "-t", "u1", "-m", str(calls), "-nostdin",
                 "-max_socket", "20000", "-key", "ctransport", ctransport,
                 "-trace_stat", "-stf", str(self.workdir / f"{self.role}_stat.csv"), "-fd", "1",
                 "-trace_counts", "-trace_err", "-error_file", str(self.workdir / f"{self.role}_errors.log"),
                 "-recv_timeout", str(recv_timeout_ms), "-timeout", f"{global_timeout_s}s", "-timeout_error"]
        if not strict:
            argv += ["-default_behaviors", "all,-abortunexp"]
        if self.role == "uac":
            argv += ["-s", "15551230000", "-key", "caller", "1000", "-r", f"{rate:g}", "-rp", "1000",
                     "-d", str(hold_ms), "-l", str(limit or calls), "-trace_rtt", "-rtt_freq", "1"]
        if trace_msg:
            argv += ["-trace_msg", "-message_file", str(self.workdir / f"{self.role}_messages.log")]
        self.argv = argv
        COMMANDS[f"SIPp {self.role}"] = self.command()
        self.proc = PROCS.start(argv, cwd=self.workdir, out=self.workdir / f"{self.role}.out")
        if self.role == "uas":
            end = time.monotonic() + 10
            while not udp_bound(self.port):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"SIPp UAS did not start: {self.stderr()}")
                time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{self.role}.err").read_text(errors="replace")[-1500:]
        return ""

    def stat(self) -> dict[str, str]:
        return last_stat(self.workdir / f"{self.role}_stat.csv")

    def counts(self) -> Counts:
        return read_counts(self.workdir, self.scenario, self.pid)

    def stop(self) -> None:
        # SIGUSR1 would let SIPp finish its calls; here the calls are over or given up on.
        PROCS.stop(self.proc, grace=2.0)

    def command(self) -> str:
        return " ".join(self.argv)


def record_sipp(res: Any, uac: Sipp, uas: Sipp) -> Counts:
    """Both SIPp sides' call results onto ``res``; their message counts, summed."""
    res.uac_ok, res.uac_failed, _ = call_counts(uac.stat())
    res.uas_ok, res.uas_failed, _ = call_counts(uas.stat())
    return uac.counts() + uas.counts()


def call_counts(stat: dict[str, str]) -> tuple[int, int, int]:
    """(successful, failed, created) from a SIPp stat row (cumulative columns)."""
    return (stat_int(stat, "SuccessfulCall(C)"), stat_int(stat, "FailedCall(C)"),
            stat_int(stat, "TotalCallCreated") or stat_int(stat, "IncomingCall(C)")
            + stat_int(stat, "OutgoingCall(C)"))


# ----------------------------------------------------------------------------------- the steps


@dataclass
class StepResult:
    b2bua: str
    rate: int
    calls: int
    passed: bool = False
    reason: str = ""
    uac_ok: int = 0
    uac_failed: int = 0
    uas_ok: int = 0
    uas_failed: int = 0
    messages: int = 0
    retrans: int = 0
    retrans_pct: float = 0.0
    unexpected: int = 0
    achieved_cps: float = 0.0
    setup_ms_p50: float = 0.0
    setup_ms_p99: float = 0.0
    setup_ms_max: float = 0.0
    b2bua_proc: dict[str, float] = field(default_factory=dict)
    uac_cpu_pct: float = 0.0
    uas_cpu_pct: float = 0.0
    other_load_pct: float = 0.0  # CPU the rest of the machine used meanwhile, % of one core
    b2bua_udp_drops: int = 0
    sipp_udp_drops: int = 0
    attempt: int = 1
    workdir: str = ""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def run_step(b2: B2BUA, rate: int, args: argparse.Namespace, workdir: Path, deadline: float,
             attempt: int = 1) -> StepResult:
    workdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, round(rate * args.step_seconds))
    hold_ms = int(args.hold * 1000)
    res = StepResult(b2.name, rate, calls, attempt=attempt, workdir=str(workdir))
    expected = calls / rate + args.hold + 2
    uas = Sipp("uas", workdir, b2.carrier_port).start(
        calls=calls, recv_timeout_ms=max(10_000, hold_ms + 10_000), global_timeout_s=int(expected + 40),
        strict=args.strict)
    uac = Sipp("uac", workdir, free_port())
    sampler = Sampler(b2.pid)
    drops0 = udp_drops(b2.port), udp_drops(uas.port)
    try:
        uac.start(calls=calls, remote=f"{HOST}:{b2.port}", rate=rate, hold_ms=hold_ms,
                  limit=calls + 100, recv_timeout_ms=10_000, global_timeout_s=int(expected + 30),
                  strict=args.strict)
        uac_cpu0, uas_cpu0, t0 = cpu_seconds(uac.pid), cpu_seconds(uas.pid), time.monotonic()
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


def fmt_step(r: StepResult) -> str:
    p = r.b2bua_proc
    return (f"  {r.b2bua:9s} {r.rate:5d}/s x{r.calls:6d}  {'PASS' if r.passed else 'FAIL'}  "
            f"ok {r.uac_ok}/{r.uas_ok} failed {r.uac_failed}/{r.uas_failed}  "
            f"retrans {r.retrans} ({r.retrans_pct}%)  stray {r.unexpected}  "
            f"achieved {r.achieved_cps}/s  setup p50/p99/max {r.setup_ms_p50:.0f}/{r.setup_ms_p99:.0f}/"
            f"{r.setup_ms_max:.0f} ms  B2BUA cpu {p.get('cpu_pct', 0)}% rss {p.get('rss_max_mb', 0)} MB "
            f"hwm {p.get('hwm_mb', 0)} MB  udp drops B2BUA {r.b2bua_udp_drops} SIPp {r.sipp_udp_drops}  "
            f"sipp cpu uac {r.uac_cpu_pct}% uas {r.uas_cpu_pct}%  other load {r.other_load_pct}%"
            + (f"  [{r.reason}]" if r.reason else ""))


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


# ------------------------------------------------------------------------------ concurrency


@dataclass
class ConcResult:
    b2bua: str
    calls: int
    rate: int
    hold_s: float
    idle_rss_mb: float = 0.0
    peak_up: int = 0
    rss_at_peak_mb: float = 0.0
    hwm_mb: float = 0.0
    b2bua_reported_active: int | None = None
    uac_ok: int = 0
    uac_failed: int = 0
    uas_ok: int = 0
    uas_failed: int = 0
    retrans: int = 0
    unexpected: int = 0
    held: bool = False
    cpu_pct: float = 0.0
    note: str = ""


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


# ------------------------------------------------------------------------------ fault checks


_SEP = re.compile(r"^-{20,}")


def parse_trace(path: Path) -> list[tuple[str, str, str, str]]:
    """(direction, first line, Call-ID, CSeq method) per message of a SIPp -trace_msg file."""
    out: list[tuple[str, str, str, str]] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    chunk: list[str] = []

    def flush() -> None:
        if len(chunk) < 2:
            return
        direction = "sent" if " sent" in chunk[0] else "received"
        body = [ln for ln in chunk[1:] if ln.strip()]
        if not body:
            return
        first = body[0].strip()
        call_id = cseq = ""
        for ln in body[1:]:
            name, _, value = ln.partition(":")
            key = name.strip().lower()
            if key in ("call-id", "i") and not call_id:
                call_id = value.strip()
            elif key == "cseq" and not cseq:
                cseq = value.split()[-1].upper() if value.split() else ""
        out.append((direction, first, call_id, cseq))

    for line in lines:
        if _SEP.match(line):
            flush()
            chunk = []
        elif chunk or line.strip():
            chunk.append(line)
    flush()
    return out


def status_of(first_line: str) -> int | None:
    parts = first_line.split()
    if first_line.startswith("SIP/") and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return None


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


# ------------------------------------------------------------------------------------- report


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
    verdict: dict[str, Any] = {}
    sl, sp = summary.get("sipledger"), summary.get("sippy")
    if sl and sp:
        print("\nRatios sipledger / Sippy (same run)")
        if sp["max_cps"]:
            ratio = sl["max_cps"] / sp["max_cps"]
            top = ladders.get("sipledger", [])
            capped = bool(top) and all(r.passed for r in top) and top[-1].rate == max(args.rate_list)
            verdict["rate_ratio"] = round(ratio, 2)
            verdict["rate_target_met"] = ratio >= 2.0
            print(f"  rate: {sl['max_cps']} / {sp['max_cps']} = {ratio:.2f}x  (target >= 2x: "
                  f"{'MET' if ratio >= 2 else 'NOT MET'})"
                  + ("  [sipledger passed the top step; its real limit is higher]" if capped else ""))
        else:
            print("  rate: Sippy passed no step; no ratio")
        if sl["conc_rss_mb"] and sp["conc_rss_mb"]:
            ratio = sl["conc_rss_mb"] / sp["conc_rss_mb"]
            met = bool(sl["conc_held"]) and sl["conc_up"] >= args.conc_calls and ratio <= 1.0
            verdict["memory_ratio"] = round(ratio, 2)
            verdict["memory_target_met"] = met
            print(f"  memory with calls up: {sl['conc_rss_mb']} MB ({sl['conc_up']} up) / "
                  f"{sp['conc_rss_mb']} MB ({sp['conc_up']} up) = {ratio:.2f}x  (target: {args.conc_calls} "
                  f"calls in <= Sippy's memory: {'MET' if met else 'NOT MET'})")
    return {"summary": summary, "verdict": verdict}


# --------------------------------------------------------------------------------------- main


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
    p.add_argument("--only", choices=("sipledger", "sippy"), help="benchmark one B2BUA only")
    p.add_argument("--skip", action="append", default=[], choices=("faults", "ladder", "concurrency"),
                   help="skip a phase (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="run sipledger under cProfile and print its hottest functions at the end")
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


def check_tools() -> None:
    if not Path(SIPP).exists():
        sys.exit(f"SIPp not found ({SIPP}); set SIPP_BINARY")
    try:
        import sippy  # noqa: F401
    except ImportError:
        sys.exit("the Sippy B2BUA is not installed: python3 -m pip install sippy==2.5.0 "
                 "(pyproject extra 'bench')")


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        print(f"(no profile written at {path})")
        return
    print(f"\nsipledger B2BUA profile ({path}), top {top} by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    t_start = time.monotonic()
    deadline = t_start + args.time_limit
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="b2bua_cps-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}; time limit {args.time_limit:.0f} s; SIPp {SIPP}", flush=True)
    b2buas: list[B2BUA] = []
    if args.only in (None, "sipledger"):
        b2buas.append(SipledgerB2BUA(work / "sipledger", free_port(), profile=args.profile,
                                     gc_threshold=args.sipledger_gc_threshold,
                                     rcvbuf=args.sipledger_rcvbuf))
    if args.only in (None, "sippy"):
        b2buas.append(SippyB2BUA(work / "sippy", free_port()))
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
