"""A production-shape deployment for fault drills, and the reconciliation that judges them.

What runs (every piece a real process, started the way an operator starts it):

* ``DrillStack``: a private Kafka 4.3.1 (KRaft) and ClickHouse 18.16 under ``private_stack_dir`` - the
  drill may kill them (``kill_kafka``/``start_kafka``, ``pause_kafka``/``resume_kafka`` for a hung
  broker, ``kill_clickhouse``/``start_clickhouse``); a restart keeps the data and ports;
* ``Drill``: on that stack, ``nodes`` B2BUA nodes (``sipledger b2bua``, node ids ``n1``, ``n2``...,
  Kafka mode, each with its own spool) and ``workers`` pipeline workers (``sipledger pipeline
  --log-level info``) in one consumer group; ``Service`` wraps each (SIGKILL of the process alone, as
  ``kill -9 <pid>``; SIGTERM with the time the exit took);
* SIPp carriers (UAS) and callers (UAC) placing a mix of short calls (``CallKind``; ``DEFAULT_MIX`` is
  about 8 calls/s: caller BYE, callee BYE, busy, caller CANCEL, plus 20 s calls that span the faults).
  Each kind has its own callee prefix and gateway, and every SIPp call has its own callee number
  (``<prefix><SIPp call number>``: the scenarios are used with ``[service]`` extended by
  ``[call_number]``), which is how a CDR is matched to the call SIPp placed.

Judging (``Drill.reconcile``) counts SIPp's own numbers - calls created, successful and failed from its
statistics file, the callee of every INVITE it sent from its message trace - against ``cdrs FINAL`` in
ClickHouse: every call SIPp placed has exactly one CDR, with the end reason of its kind, and no
``unknown_call`` alert names a call whose ``call.setup`` is stored. ``Reconciliation.problems`` lists
what is wrong, in words.

Failover figures: workers log one line per assignment and one per partition served after its restore
(pipeline/faust_app.py); ``Drill.kill_worker`` notes the partitions the victim held, and
``Drill.served_after`` the time until each of them was served again by a live worker.

Building a new drill: start a ``DrillStack``, a ``Drill`` on it (``with Drill(...) as drill``), call
``start()``, ``start_traffic(seconds)``, inject faults, ``wait_traffic()``, ``wait_cdrs()`` and assert
on ``reconcile()``. See tests/drills/test_worker_failover.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from conftest import TOPICS, private_stack_dir
from sip_harness.sipp import SippProcess, SippResult, free_udp_port, scenario_path

from pipeline.call_table import DEFAULT_APP_ID
from sipledger.stack import clickhouse_server, kafka_broker, process
from sipledger.store import Store, open_store

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = TOPICS["call-events"]  # the suite's topics (conftest.TOPICS), on the drill's own broker
APP_ID = DEFAULT_APP_ID  # what `sipledger pipeline` uses: the drill runs the default


# -- the stack ---------------------------------------------------------------------------------------
class DrillStack:
    """Kafka and ClickHouse of the drill's own, which it may kill; a restart keeps data and ports."""

    def __init__(self, name: str, extra_listener: tuple[int, int] | None = None) -> None:
        self.dir = private_stack_dir(name)
        shutil.rmtree(self.dir / "kafka" / "data", ignore_errors=True)  # a fresh log per drill
        self.kafka_port = 0
        self.clickhouse_port = 0
        # (port, advertised port) of the broker's second listener, reached through a drill's proxy
        self.extra_listener = extra_listener

    def start(self, clickhouse: bool = True) -> DrillStack:
        self.start_kafka()
        if clickhouse:
            self.start_clickhouse()
        kafka_broker.create_topics(self.bootstrap, TOPICS)
        return self

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def clickhouse_url(self, database: str = "drill") -> str:
        return f"clickhouse://default:@127.0.0.1:{self.clickhouse_port}/{database}"

    def start_kafka(self) -> None:
        rec, _ = kafka_broker.up(self.dir, port=self.kafka_port, extra_listener=self.extra_listener)
        self.kafka_port = rec.port

    def kafka_pid(self) -> int:
        rec = process.running_record(self.dir, kafka_broker.NAME)
        assert rec is not None, "Kafka is not running"
        return rec.pid

    def kill_kafka(self) -> None:
        """SIGKILL: the broker dies without a goodbye."""
        pid = self.kafka_pid()
        os.killpg(pid, signal.SIGKILL)
        process.terminate_group(pid, grace=1)
        process.stop(self.dir, kafka_broker.NAME, grace=1)

    def pause_kafka(self) -> None:
        """SIGSTOP: a broker that hangs (connections stay open, nothing is answered)."""
        os.killpg(self.kafka_pid(), signal.SIGSTOP)

    def resume_kafka(self) -> None:
        os.killpg(self.kafka_pid(), signal.SIGCONT)

    def start_clickhouse(self) -> None:
        rec, _ = clickhouse_server.up(self.dir, port=self.clickhouse_port)
        self.clickhouse_port = rec.port

    def kill_clickhouse(self) -> None:
        rec = process.running_record(self.dir, clickhouse_server.NAME)
        assert rec is not None, "ClickHouse is not running"
        os.killpg(rec.pid, signal.SIGKILL)
        process.stop(self.dir, clickhouse_server.NAME, grace=1)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.resume_kafka()
        for name in (kafka_broker.NAME, clickhouse_server.NAME):
            process.stop(self.dir, name, grace=3)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- processes ---------------------------------------------------------------------------------------
class Service:
    """One ``sipledger`` subprocess (B2BUA node or pipeline worker), its log appended across restarts."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as out:
            # Its own session, as under a supervisor: a signal to the test runner does not reach it.
            self.proc = subprocess.Popen([sys.executable, "-m", "sipledger", *self.argv], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                         env=env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> set[int]:
        """Pids of the process's children (a worker's store writer)."""
        out: set[int] = set()
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                out |= {int(x) for x in (task / "children").read_text().split()}
        return out

    def kill(self) -> float:
        """``kill -9 <pid>`` of the process alone (its children must cope); returns when (time.time())."""
        assert self.proc is not None
        t = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return t

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM; returns the seconds until the process exited (SIGKILL after ``timeout``)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            process.terminate_group(self.proc.pid, grace=10)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # what a worker left behind, if anything

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log from character ``after`` on."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text(), after)
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {pattern!r} within {timeout:.0f} s:\n{self.text()[-3000:]}")


# -- worker logs -------------------------------------------------------------------------------------
_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (?P<level>[A-Z]+) (?P<name>\S+): "
                   r"(?P<msg>.*)$", re.M)
_ASSIGNED = re.compile(r"^assigned partitions \[(?P<parts>[\d, ]*)\] of ")
_SERVING = re.compile(r"^partition (?P<p>\d+) restored from \S+: (?P<records>\d+) records .* in "
                      r"(?P<secs>[\d.]+) s; serving$")


def _epoch(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class LogLine:
    at: float  # epoch seconds
    level: str
    name: str
    msg: str


def log_lines(text: str) -> list[LogLine]:
    return [LogLine(_epoch(m["ts"]), m["level"], m["name"], m["msg"]) for m in _LINE.finditer(text)]


def assigned_at(lines: Sequence[LogLine], when: float) -> set[int]:
    """The partitions of the last assignment logged before ``when``."""
    parts: set[int] = set()
    for line in lines:
        if line.at > when:
            break
        m = _ASSIGNED.match(line.msg)
        if m:
            parts = {int(x) for x in m["parts"].split(",") if x.strip()}
    return parts


def served_at(lines: Sequence[LogLine], partition: int, after: float) -> float | None:
    """When ``partition`` was first served after ``after`` according to these lines."""
    for line in lines:
        if line.at > after:
            m = _SERVING.match(line.msg)
            if m and int(m["p"]) == partition:
                return line.at
    return None


# -- traffic -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallKind:
    """One kind of SIPp call: caller and carrier scenarios, the end reason its CDR must carry."""

    name: str
    digit: str  # callee prefix 1555<digit>0, and the route to this kind's carrier
    uac: str
    uas: str
    end_reason: str
    rate: float  # calls per second
    node: int  # which B2BUA node the caller calls
    hold_ms: int | None = None  # the caller's -d (hold before BYE, ring before CANCEL)
    carrier_hold_ms: int | None = None  # the carrier's -d (hold before its BYE)

    @property
    def prefix(self) -> str:
        return f"1555{self.digit}0"

    @property
    def carrier(self) -> tuple[str, int | None]:
        return self.uas, self.carrier_hold_ms


DEFAULT_MIX: tuple[CallKind, ...] = (
    CallKind("caller_bye", "1", "uac_basic_bye", "uas_answer_wait_bye", "normal_caller_bye", 3.0, 0,
             hold_ms=2000),
    CallKind("long", "2", "uac_basic_bye", "uas_answer_wait_bye", "normal_caller_bye", 0.5, 1,
             hold_ms=20_000),
    CallKind("callee_bye", "3", "uac_wait_remote_bye", "uas_answer_then_bye", "normal_callee_bye", 2.0, 1,
             carrier_hold_ms=1500),
    CallKind("busy", "4", "uac_expect_486", "uas_busy", "busy", 1.5, 0),
    CallKind("cancel", "5", "uac_cancel", "uas_ring_forever", "caller_cancel", 1.0, 0, hold_ms=500),
)


def numbered_scenario(name: str, workdir: Path) -> Path:
    """A copy of a tests/sipp scenario whose callee is ``[service][call_number]``: one number per call."""
    text = scenario_path(name).read_text(encoding="ISO-8859-1")
    out = workdir / f"{name}_numbered.xml"
    out.write_text(text.replace("[service]@", "[service][call_number]@"), encoding="ISO-8859-1")
    return out


@dataclass
class KindResult:
    kind: CallKind
    created: int  # SIPp's own count of calls it created
    successful: int
    failed: int
    placed: set[str]  # callees of the INVITEs SIPp sent
    cdrs: Counter[str] = field(default_factory=Counter)  # callee -> CDRs (FINAL)
    wrong: dict[str, str] = field(default_factory=dict)  # callee -> end reason found

    @property
    def missing(self) -> set[str]:
        return {c for c in self.placed if not self.cdrs[c]}

    @property
    def doubled(self) -> set[str]:
        return {c for c, n in self.cdrs.items() if n > 1}

    @property
    def strangers(self) -> set[str]:
        return set(self.cdrs) - self.placed


@dataclass
class Reconciliation:
    kinds: list[KindResult]
    alerts: Counter[str]
    unknown_with_setup: list[str]

    @property
    def placed(self) -> int:
        return sum(len(k.placed) for k in self.kinds)

    @property
    def cdrs(self) -> int:
        return sum(sum(k.cdrs.values()) for k in self.kinds)

    def problems(self) -> list[str]:
        out = []
        for k in self.kinds:
            name = k.kind.name
            if k.created != len(k.placed):
                out.append(f"{name}: SIPp counted {k.created} calls created, its trace holds {len(k.placed)}")
            if k.failed:
                out.append(f"{name}: SIPp reports {k.failed} failed calls")
            if k.missing:
                out.append(f"{name}: {len(k.missing)} calls without a CDR, e.g. {sorted(k.missing)[:5]}")
            if k.doubled:
                out.append(f"{name}: {len(k.doubled)} calls with more than one CDR, "
                           f"e.g. {sorted(k.doubled)[:5]}")
            if k.strangers:
                out.append(f"{name}: {len(k.strangers)} CDRs of calls SIPp never placed: "
                           f"{sorted(k.strangers)[:5]}")
            if k.wrong:
                some = dict(list(k.wrong.items())[:5])
                out.append(f"{name}: {len(k.wrong)} CDRs with an end reason other than "
                           f"{k.kind.end_reason}: {some}")
        if self.unknown_with_setup:
            out.append("unknown_call alerts for calls whose call.setup is stored: "
                       f"{self.unknown_with_setup[:5]}")
        return out

    def summary(self) -> str:
        parts = [f"{k.kind.name} {sum(k.cdrs.values())}/{len(k.placed)}" for k in self.kinds]
        return (f"{self.cdrs} CDRs for {self.placed} calls placed ({', '.join(parts)}); "
                f"alerts {dict(self.alerts) or 'none'}")


# The drill's calls: every callee it dials starts so (the B2BUA's own test calls would not).
_OURS = "startsWith(callee, '1555')"


# -- the drill ---------------------------------------------------------------------------------------
@dataclass
class KillRecord:
    victim: str
    at: float
    partitions: set[int]
    restarted_at: float | None = None
    children: set[int] = field(default_factory=set)  # the victim's children when it was killed

    def orphans(self) -> set[int]:
        """Those of the victim's children still running (a store writer must end with its worker)."""
        return {pid for pid in self.children if process.pid_alive(pid)}


class Drill:
    """B2BUA nodes, pipeline workers and SIPp on a DrillStack; see the module docstring."""

    def __init__(self, stack: DrillStack, workdir: Path, *, nodes: int = 2, workers: int = 2,
                 mix: Sequence[CallKind] = DEFAULT_MIX, database: str = "drill",
                 extra_config: str = "", node_overrides: dict[int, list[str]] | None = None,
                 account_config: str = "") -> None:
        self.stack, self.workdir, self.mix = stack, workdir, list(mix)
        self.account_config = account_config  # more keys of the callers' account (prepaid = true, ...)
        self.database = database
        workdir.mkdir(parents=True, exist_ok=True)
        self.carriers: dict[tuple[str, int | None], SippProcess] = {}
        for i, key in enumerate(dict.fromkeys(k.carrier for k in self.mix)):
            uas, hold = key
            self.carriers[key] = SippProcess(uas, workdir=workdir / f"carrier{i}_{uas}", name=f"carrier{i}",
                                             calls=1_000_000, pause_ms=hold, timeout_s=None)
        self.config = workdir / "sipledger.toml"
        self.config.write_text(self._config_text(extra_config))
        self.node_ports = [free_udp_port() for _ in range(nodes)]
        self.nodes = [Service(f"n{i + 1}", ["b2bua", "--config", str(self.config), "--log-level", "info",
                                            "--set", f'node.id="n{i + 1}"',
                                            "--set", f"sip.listen_port={self.node_ports[i]}",
                                            "--set", f'events.spool_dir="{workdir / f"spool-n{i + 1}"}"',
                                            *(node_overrides or {}).get(i, [])],
                              workdir / f"node{i + 1}.log") for i in range(nodes)]
        self.workers = [Service(f"w{i + 1}",
                                ["pipeline", "--config", str(self.config), "--log-level", "info"],
                                workdir / f"worker{i + 1}.log") for i in range(workers)]
        self.callers: list[tuple[CallKind, SippProcess]] = []
        self.kills: list[KillRecord] = []
        self._store: Store | None = None

    def _config_text(self, extra: str) -> str:
        gateways = []
        routes = []
        names = {key: f"gw{i}" for i, key in enumerate(self.carriers)}
        for key, sipp in self.carriers.items():
            gateways.append(f'[[gateways]]\nname = "{names[key]}"\nvendor = "carrier-{names[key]}"\n'
                            f'host = "127.0.0.1"\nport = {sipp.local_port}\n'
                            "probe = false\n")  # SIPp's call scenarios do not answer OPTIONS
        for k in self.mix:
            routes.append(f'[[routes]]\nprefix = "1555{k.digit}"\ngateways = ["{names[k.carrier]}"]\n')
        return (f'[events]\nlog = "kafka://{self.stack.bootstrap}"\nheartbeat_interval = 1.0\n'
                f'[kafka]\nbootstrap = "{self.stack.bootstrap}"\npartitions = {PARTITIONS}\n'
                f'[store]\nurl = "{self.stack.clickhouse_url(self.database)}"\n'
                f'[sip]\nlisten_host = "127.0.0.1"\n'
                f'{extra}\n'
                '[[accounts]]\nname = "acme"\nips = ["127.0.0.1"]\n' + self.account_config
                + "".join(gateways) + "".join(routes))

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Drill:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for _, sipp in self.callers:
            sipp.stop()
        for sipp in self.carriers.values():
            sipp.stop()
        for svc in [*self.nodes, *self.workers]:
            svc.stop()
        if self._store is not None:
            self._store.close()

    def start(self) -> Drill:
        """Carriers, B2BUA nodes and workers; returns once every partition is served."""
        for sipp in self.carriers.values():
            sipp.start()
            sipp.wait_listening()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_for(r"^b2bua: listening", timeout=30)
        for worker in self.workers:
            worker.start()
        self.wait_all_served(after=0, timeout=90)
        return self

    # -- traffic -------------------------------------------------------------------------------------
    def start_traffic(self, seconds: float) -> None:
        """Every kind's caller, placing calls at its rate for ``seconds``."""
        for k in self.mix:
            calls = max(1, round(k.rate * seconds))
            period = 1000
            rate = k.rate
            if rate < 1:  # SIPp takes whole calls per period: 0.5/s is 1 per 2000 ms
                period, rate = round(1000 / rate), 1
            scenario = numbered_scenario(k.uac, self.workdir)
            hold = (k.hold_ms or 0) / 1000 + (k.carrier_hold_ms or 0) / 1000
            sipp = SippProcess(scenario, remote=f"127.0.0.1:{self.node_ports[k.node % len(self.nodes)]}",
                               workdir=self.workdir / f"caller_{k.name}", name=f"caller_{k.name}",
                               service=k.prefix, calls=calls, rate=rate, rate_period_ms=period, limit=1000,
                               pause_ms=k.hold_ms, timeout_s=seconds + hold + 60)
            self.callers.append((k, sipp.start()))

    def wait_traffic(self, timeout: float = 300.0) -> dict[str, SippResult]:
        return {k.name: sipp.wait(timeout) for k, sipp in self.callers}

    # -- workers -------------------------------------------------------------------------------------
    def worker_lines(self) -> dict[str, list[LogLine]]:
        return {w.name: log_lines(w.text()) for w in self.workers}

    def wait_all_served(self, after: float, timeout: float = 60.0) -> float:
        """Until every partition has been served after ``after`` by a worker that is alive now;
        returns when the last one was."""
        deadline = time.monotonic() + timeout
        while True:
            lines = {w.name: log_lines(w.text()) for w in self.workers if w.alive()}
            times = []
            for p in range(PARTITIONS):
                found = [t for ls in lines.values() if (t := served_at(ls, p, after)) is not None]
                times.append(min(found) if found else None)
            if all(t is not None for t in times):
                return max(t for t in times if t is not None)
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions not served within {timeout:.0f} s after {after:.3f}: "
                                   f"{times}\n" + "\n".join(f"--- {w.name}\n{w.text()[-2500:]}"
                                                            for w in self.workers))
            time.sleep(0.2)

    def wait_stable(self, after: float, timeout: float = 60.0) -> None:
        """Until the group settled after ``after``: every live worker logged an assignment since, the
        assignments cover every partition, and each partition was served after its assignment."""
        deadline = time.monotonic() + timeout
        while True:
            live = [w for w in self.workers if w.alive()]
            covered: set[int] = set()
            settled = bool(live)
            for w in live:
                lines = log_lines(w.text())
                last = next((ln for ln in reversed(lines) if _ASSIGNED.match(ln.msg)), None)
                if last is None or last.at < after:
                    settled = False
                    break
                parts = assigned_at(lines, time.time())
                covered |= parts
                if any(served_at(lines, p, last.at - 0.001) is None for p in parts):
                    settled = False
                    break
            if settled and covered == set(range(PARTITIONS)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the group did not settle within {timeout:.0f} s after {after:.3f}\n"
                                   + "\n".join(f"--- {w.name}\n{w.text()[-2500:]}" for w in self.workers))
            time.sleep(0.2)

    def kill_worker(self, worker: Service) -> KillRecord:
        """``kill -9`` the worker; notes the partitions it held."""
        held = assigned_at(log_lines(worker.text()), time.time())
        children = worker.children()
        rec = KillRecord(worker.name, worker.kill(), held, children=children)
        self.kills.append(rec)
        return rec

    def restart_worker(self, worker: Service, rec: KillRecord | None = None) -> None:
        worker.start()
        if rec is not None:
            rec.restarted_at = time.time()

    def served_after(self, rec: KillRecord) -> float | None:
        """Seconds from the kill until every partition the victim held was served again (by anyone)."""
        lines = self.worker_lines()
        times = []
        for p in rec.partitions:
            found = [t for ls in lines.values() if (t := served_at(ls, p, rec.at)) is not None]
            if not found:
                return None
            times.append(min(found))
        return max(times) - rec.at if times else None

    def restores(self) -> list[tuple[int, float]]:
        """(records, seconds) of every restore any worker logged."""
        out = []
        for w in self.workers:
            for line in log_lines(w.text()):
                m = _SERVING.match(line.msg)
                if m:
                    out.append((int(m["records"]), float(m["secs"])))
        return out

    def worker_problems(self) -> list[str]:
        """Lines no healthy failover writes: restore failures, failed batches or ticks, fencing."""
        bad = re.compile(r"restoring partitions .* failed|batch failed|tick failed|fenced|cannot start")
        return [f"{w.name}: {line.msg}" for w in self.workers for line in log_lines(w.text())
                if bad.search(line.msg)]

    # -- the store -----------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.stack.clickhouse_url(self.database))
        return self._store

    def cdr_count(self) -> int:
        try:
            return int(self.store.query(f"SELECT count() AS n FROM cdrs FINAL WHERE {_OURS}")[0]["n"])
        except Exception:
            return 0  # the workers have not created the table yet

    def wait_cdrs(self, expected: int, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        n = self.cdr_count()
        while n < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            n = self.cdr_count()
        return n

    def reconcile(self, results: dict[str, SippResult]) -> Reconciliation:
        rows = self.store.query(f"SELECT callee, call_id, end_reason FROM cdrs FINAL WHERE {_OURS}")
        by_prefix: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_prefix.setdefault(row["callee"][:6], []).append(row)
        kinds = []
        for k, _ in self.callers:
            res = results[k.name]
            placed = {_callee(m.first_line) for m in res.requests("INVITE", "sent")}
            created = int(res.stats.get("OutgoingCall(C)") or 0)
            kr = KindResult(k, created, res.successful_calls or 0, res.failed_calls or 0, placed)
            for row in by_prefix.get(k.prefix, []):
                kr.cdrs[row["callee"]] += 1
                if row["end_reason"] != k.end_reason:
                    kr.wrong[row["callee"]] = row["end_reason"]
            kinds.append(kr)
        alerts = self.store.query("SELECT kind, call_id FROM zombie_alerts")
        setups = {r["call_id"] for r in self.store.query(
            "SELECT DISTINCT call_id FROM call_events WHERE type = 'call.setup'")}
        unknown = sorted({a["call_id"] for a in alerts
                          if a["kind"] == "unknown_call" and a["call_id"] in setups})
        return Reconciliation(kinds, Counter(a["kind"] for a in alerts), unknown)


def _callee(first_line: str) -> str:
    # "INVITE sip:15551017@127.0.0.1:5060 SIP/2.0" -> "15551017"
    return first_line.split()[1].split(":", 1)[1].split("@", 1)[0]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
