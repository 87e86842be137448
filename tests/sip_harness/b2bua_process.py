"""The real B2BUA as a separate process (``sipledger b2bua``), for what a thread cannot show: its own
open-file limit, its resident memory, its log output."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(raw: dict[str, Any]) -> str:
    """The small TOML subset the config uses: tables of scalars and lists, and arrays of tables."""
    lines: list[str] = []
    for section, body in raw.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        else:
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        lines.append("")
    return "\n".join(lines)


class B2BUAProcess:
    def __init__(self, raw: dict[str, Any], workdir: Path, *, nofile: int | None = None) -> None:
        self.workdir = workdir
        self.config = workdir / "b2bua.toml"
        self.config.write_text(to_toml(raw))
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.stdout_path = workdir / "b2bua.stdout"
        self.stderr_path = workdir / "b2bua.stderr"

    def _limits(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, timeout: float = 20.0) -> B2BUAProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sipledger.cli", "b2bua", "--config", str(self.config), "--log-level",
                 "info"], cwd=self.workdir, env=env, stdout=out, stderr=err, preexec_fn=self._limits)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on udp [^:]+:(\d+)", self.stdout_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"B2BUA process did not start: {self.stderr()[-2000:]}")

    def rss_bytes(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert m
        return int(m.group(1)) * 1024

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> B2BUAProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
