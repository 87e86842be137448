"""Driving SIPp: the caller (UAC) and carrier (UAS) processes, and reading their stat, count, rtt and
message-trace files."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cps.env import HOST, SIPP, UAC_XML, UAS_XML
from cps.procs import COMMANDS, PROCS
from cps.system import udp_bound


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
