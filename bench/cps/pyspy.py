"""A py-spy sampling profile of the sipledger B2BUA during one rate step: the process is sampled
from outside (no cProfile overhead inside the measured process), and the report is the functions
that were on top of the stack most often (own time), as the issue asks to publish before and after."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from cps.procs import PROCS

# a raw (collapsed) py-spy line: "frame;frame;...;leaf count"; a frame is "function (file:line)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def pyspy_binary() -> str | None:
    return shutil.which("py-spy")


def start_record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """py-spy records ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks); non-blocking
    sampling so the B2BUA is not paused for each sample."""
    argv = [pyspy_binary() or "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
            "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)]
    return PROCS.start(argv, cwd=out.parent, out=out.with_suffix(".pyspy.out"))


def top_own(raw: Path, top: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """(samples, [(function (file), samples on top of the stack)]) from a raw py-spy file, with
    line numbers folded into their function."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        m = _FRAME.match(leaf)
        own[f"{m['func']} ({m['file']})" if m else leaf] += n
    return total, own.most_common(top)


def format_top(raw: Path, top: int = 15) -> str:
    if not raw.exists():
        return f"(no py-spy profile at {raw}: see {raw.with_suffix('.pyspy.out')})"
    total, rows = top_own(raw, top)
    lines = [f"py-spy profile {raw} ({total} samples), top {top} by own time:"]
    lines += [f"  {100 * n / max(1, total):5.1f}%  {name}" for name, n in rows]
    return "\n".join(lines)
