"""Measurement from /proc: CPU seconds of a process (or of its whole process group: Kamailio runs
several), its memory, UDP sockets and their drops, the machine's other load."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from cps.env import CLK_TCK, HOST
from sipledger.ports import free_port as shared_free_port
from sipledger.stack.process import process_cpu_seconds


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle/iowait) since boot."""
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    return (sum(cols[:8]) - cols[3] - cols[4]) / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every process in process group ``pgid`` (Kamailio's main process
    and its workers); exited children are not counted, so sample it while they run."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5 of stat(5): the process group
            found = True
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total if found else float("nan")


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

    def __init__(self, pid: int, group: bool = False) -> None:
        self.pid = pid
        self.cpu = (lambda: group_cpu_seconds(pid)) if group else (lambda: cpu_seconds(pid))
        self.t0 = time.monotonic()
        self.cpu0 = self.cpu()
        self.rss_max = mem_kb(pid)[0]

    def poll(self) -> None:
        self.rss_max = max(self.rss_max, mem_kb(self.pid)[0])

    def finish(self) -> dict[str, float]:
        self.poll()
        wall = time.monotonic() - self.t0
        cpu = self.cpu() - self.cpu0
        rss, hwm = mem_kb(self.pid)
        return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
                "rss_max_mb": round(self.rss_max / 1024, 1), "rss_end_mb": round(rss / 1024, 1),
                "hwm_mb": round(hwm / 1024, 1)}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]
