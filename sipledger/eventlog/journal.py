"""The embedded event log: an append-only JSON-lines file, one event per line.

Writers append whole lines and flush per batch; readers keep a byte offset and only
consume complete lines, so a reader following a live journal never sees half an event.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class FileJournal:
    """Append-only writer. Thread-safe; ``fsync`` on flush only when ``durable``."""

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115 - owned for the object's life
        self._lock = threading.Lock()
        self._durable = durable

    def publish(self, event: dict[str, Any], broadcast: bool = False) -> None:
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._fh.write(line)

    def flush(self) -> None:
        with self._lock:
            self._fh.flush()
            if self._durable:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                self._fh.close()


def read_journal(path: str | Path, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (offset after the line, raw line) for each complete line from ``offset`` on."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally
    except FileNotFoundError:
        return
    try:
        fh.seek(offset)
        pos = offset
        for line in fh:
            if not line.endswith(b"\n"):
                return  # a writer is mid-line; the rest comes on the next read
            pos += len(line)
            if line.strip():
                yield pos, line.rstrip(b"\n")
    finally:
        fh.close()
