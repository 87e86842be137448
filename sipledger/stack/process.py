"""Local service processes: start detached, record, find again, stop for sure.

A service is recorded in ``<stack dir>/<name>.json`` (pid, port, command line). A
later ``stack up`` sees a live record and reports it instead of starting a twin;
``stack down`` sends SIGTERM to the process group and ends in SIGKILL, because
some JVMs and faust workers ignore a polite stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


class StackError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    pid: int
    port: int
    cmd: list[str]
    log: str
    started_at: float
    extra: dict[str, int | str]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a whole process (all threads) from /proc; None if it is not there."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5); the name in parentheses may hold spaces.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record_path(stack_dir: Path, name: str) -> Path:
    return stack_dir / f"{name}.json"


def read_record(stack_dir: Path, name: str) -> ServiceRecord | None:
    path = _record_path(stack_dir, name)
    try:
        data = json.loads(path.read_text())
        return ServiceRecord(**data)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def running_record(stack_dir: Path, name: str) -> ServiceRecord | None:
    """The record of ``name`` if its process is alive; stale records are removed."""
    rec = read_record(stack_dir, name)
    if rec is None:
        return None
    if pid_alive(rec.pid):
        return rec
    _record_path(stack_dir, name).unlink(missing_ok=True)
    return None


def start(stack_dir: Path, name: str, cmd: Sequence[str], port: int, log: Path,
          ready: Callable[[], bool], timeout: float, env: dict[str, str] | None = None,
          cwd: Path | None = None, extra: dict[str, int | str] | None = None) -> ServiceRecord:
    stack_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)
    rec = ServiceRecord(name, proc.pid, port, list(cmd), str(log), time.time(), extra or {})
    _record_path(stack_dir, name).write_text(json.dumps(asdict(rec), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _record_path(stack_dir, name).unlink(missing_ok=True)
            raise StackError(f"{name} exited with status {proc.returncode} during start-up; "
                             f"last lines of {log}:\n{tail(log)}")
        if ready():
            return rec
        time.sleep(0.2)
    stop(stack_dir, name)
    raise StackError(f"{name} was not ready within {timeout:.0f} s; last lines of {log}:\n{tail(log)}")


def stop(stack_dir: Path, name: str, grace: float = 10.0) -> bool:
    """Stop ``name`` and everything in its process group. True if something was running."""
    rec = read_record(stack_dir, name)
    if rec is None:
        return False
    was_running = pid_alive(rec.pid)
    if was_running:
        terminate_group(rec.pid, grace)
    _record_path(stack_dir, name).unlink(missing_ok=True)
    return was_running


def terminate_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left after ``grace``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
