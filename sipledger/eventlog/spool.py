"""A write-ahead disk spool of records awaiting delivery, in order.

Records are appended to numbered segment files; a checkpoint file holds how far
delivery got (segment, byte offset). Delivered segments are deleted. Because every
record is on disk before delivery starts, a broker outage or a process restart loses
nothing, and delivery resumes in the original order.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

SEGMENT_BYTES = 64 << 20


class DiskSpool:
    def __init__(self, folder: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._has_data = threading.Condition(self._lock)
        segs = self._segments()
        self._write_seg = segs[-1] if segs else 1
        self._fh = open(self._seg_path(self._write_seg), "ab")  # noqa: SIM115 - owned
        self._appended = 0
        self._read_seg, self._read_off = self._load_checkpoint(segs)

    # -- files ---------------------------------------------------------------------------------
    def _seg_path(self, n: int) -> Path:
        return self.folder / f"{n:08d}.spool"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.spool") if p.stem.isdigit())

    def _load_checkpoint(self, segs: list[int]) -> tuple[int, int]:
        try:
            cp = json.loads((self.folder / "checkpoint.json").read_text())
            return int(cp["segment"]), int(cp["offset"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
            return (segs[0] if segs else 1), 0

    def _save_checkpoint(self) -> None:
        tmp = self.folder / "checkpoint.json.tmp"
        tmp.write_text(json.dumps({"segment": self._read_seg, "offset": self._read_off}))
        os.replace(tmp, self.folder / "checkpoint.json")

    # -- producer side ---------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            self._appended += 1
            if self._fh.tell() >= self._segment_bytes:
                self._fh.close()
                self._write_seg += 1
                self._fh = open(self._seg_path(self._write_seg), "ab")  # noqa: SIM115
            self._has_data.notify_all()

    # -- delivery side -------------------------------------------------------------------------
    def peek(self, max_records: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], tuple[int, int]]:
        """Up to ``max_records`` undelivered records and the position just after them."""
        with self._lock:
            if wait and not self._pending_locked():
                self._has_data.wait(wait)
            seg, off = self._read_seg, self._read_off
        out: list[dict[str, Any]] = []
        while len(out) < max_records:
            path = self._seg_path(seg)
            try:
                with open(path, "rb") as fh:
                    fh.seek(off)
                    for line in fh:
                        if not line.endswith(b"\n"):
                            break
                        off += len(line)
                        out.append(json.loads(line))
                        if len(out) >= max_records:
                            break
            except FileNotFoundError:
                pass
            if len(out) >= max_records or seg >= self._write_seg:
                break
            seg, off = seg + 1, 0
        return out, (seg, off)

    def commit(self, position: tuple[int, int]) -> None:
        """Mark everything before ``position`` delivered; drop finished segments."""
        with self._lock:
            old = self._read_seg
            self._read_seg, self._read_off = position
            self._save_checkpoint()
            for n in range(old, self._read_seg):
                self._seg_path(n).unlink(missing_ok=True)

    def _pending_locked(self) -> bool:
        if self._read_seg < self._write_seg:
            return True
        try:
            return self._seg_path(self._read_seg).stat().st_size > self._read_off
        except FileNotFoundError:
            return False

    def pending_bytes(self) -> int:
        """Bytes not yet delivered, from the files' sizes alone: cheap enough for every metrics scrape
        whatever the spool holds (``pending`` reads and parses every record)."""
        with self._lock:
            seg, off, last = self._read_seg, self._read_off, self._write_seg
        total = 0
        for n in range(seg, last + 1):
            try:
                total += self._seg_path(n).stat().st_size - (off if n == seg else 0)
            except FileNotFoundError:
                continue
        return max(total, 0)

    def pending(self) -> int:
        """Records not yet delivered (counts lines; for status and tests)."""
        recs, _ = self.peek(10**9)
        return len(recs)

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._has_data.notify_all()
