"""Logging of the long-running processes (pipeline workers, their store writer, the B2BUA).

One set-up for every mode, so an operator reads the same lines whatever runs:

* the configured level applies to sipledger's own loggers; the clients' chatter (kafka-python,
  aiokafka, faust, mode) is held at WARNING unless the level is DEBUG: kafka-python alone logs about
  60 INFO lines while a B2BUA starts, faust a banner and a line per internal step;
* plain text, one line per record, timestamps in UTC with milliseconds and no ANSI escape codes (faust's
  own set-up uses colorlog, whose codes ended up in redirected log files);
* a broker outage is logged once, then summarised: the clients log the same warning or error many
  times a second while a broker is away (about 70 ERROR lines a second per worker were seen), and the
  first one says everything. A record repeating the message template of a recent one is suppressed for
  ``REPEAT_WINDOW_S``; the first one after that passes with the count of those suppressed meanwhile.
  This applies to the clients' WARNING and above, and to sipledger records logged with
  ``extra=RATE_LIMITED`` (retry loops that would otherwise repeat the same line).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

# The clients whose INFO chatter is held back and whose repeated warnings are rate-limited.
CLIENT_LOGGERS: Final = ("kafka", "aiokafka", "faust", "mode")
REPEAT_WINDOW_S: Final = 30.0
RATE_LIMITED: Final = {"rate_limited": True}
FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_LEVELS: Final = {"crit": logging.CRITICAL, "critical": logging.CRITICAL, "error": logging.ERROR,
                  "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
                  "debug": logging.DEBUG}


def level_of(name: str | int) -> int:
    """A level from faust's names (crit, error, warn, info, debug), Python's names, or a number."""
    if isinstance(name, int):
        return name
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r} (one of {', '.join(_LEVELS)})") from None


class UtcFormatter(logging.Formatter):
    """ISO 8601 UTC timestamps with milliseconds: ``2025-01-31T12:00:00.123Z``."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def _from_client(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in CLIENT_LOGGERS)


class RepeatFilter(logging.Filter):
    """Lets the first of a run of repeated records through, then one per window with the count."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: object = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # (logger, level, message template) -> (when the last one passed, suppressed since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "rate_limited", False) and not (
                record.levelno >= logging.WARNING and _from_client(record.name)):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # templates are few; never let the table grow without bound
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
        if last is not None and last[1]:
            record.msg = f"{record.msg} [repeated {last[1]} more times in the last {now - last[0]:.0f} s]"
        if last is not None:
            # Repeats keep the first traceback's information without printing it again.
            record.exc_info = None
            record.exc_text = None
        return True


def configure(level: str | int = "info") -> int:
    """Set up the root logger of this process (idempotent); returns the level number."""
    lvl = level_of(level)
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter(FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    client_level = logging.DEBUG if lvl <= logging.DEBUG else max(lvl, logging.WARNING)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(client_level)
    return lvl
