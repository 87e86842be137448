"""Every process the benchmark starts, each in its own process group, and the run's time limit."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from pathlib import Path


class TimeUp(Exception):
    """The run's --time-limit was reached."""


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
