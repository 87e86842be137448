"""Logs an operator can read (sipledger/logsetup.py): the level honoured, the clients' chatter held
back, a broker outage logged once and then summarised, no escape codes."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipledger import logsetup

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_repeated_client_error_passes_once_per_window_with_the_count() -> None:
    clock = Clock()
    f = logsetup.RepeatFilter(window_s=30, clock=clock)
    tmpl = "Unable connect to node with id %s: %s"
    assert f.filter(_record("aiokafka", logging.ERROR, tmpl, 1, "refused"))
    passed = 0
    for i in range(2100):  # 70 a second for 30 s, as seen per worker while the broker was down
        clock.now = i / 70
        passed += f.filter(_record("aiokafka", logging.ERROR, tmpl, 1, "refused"))
    assert passed == 0
    clock.now = 30.5
    rec = _record("aiokafka", logging.ERROR, tmpl, 1, "refused")
    assert f.filter(rec)
    assert "[repeated 2100 more times in the last 30 s]" in rec.getMessage()
    # Another message (another template) is not held back by the first one.
    assert f.filter(_record("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from %s", 1))


def test_own_records_pass_unless_marked_rate_limited() -> None:
    f = logsetup.RepeatFilter(window_s=30, clock=Clock())
    assert all(f.filter(_record("sipledger.pipeline.faust", logging.WARNING, "same")) for _ in range(5))
    assert all(f.filter(_record("kafka.conn", logging.INFO, "chatter")) for _ in range(5))  # below WARNING
    marked = [f.filter(_record("sipledger.pipeline.faust", logging.WARNING, "publishing %d messages failed",
                               3, **logsetup.RATE_LIMITED)) for _ in range(5)]
    assert marked == [True, False, False, False, False]


@pytest.fixture()
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in logsetup.CLIENT_LOGGERS}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lvl in levels.items():
        logging.getLogger(n).setLevel(lvl)


def test_the_level_applies_to_our_loggers_and_the_clients_stay_at_warning(restore_root: None) -> None:
    logsetup.configure("info")
    assert logging.getLogger().level == logging.INFO
    assert all(logging.getLogger(n).level == logging.WARNING for n in logsetup.CLIENT_LOGGERS)
    assert logging.getLogger("sipledger.pipeline.faust").isEnabledFor(logging.INFO)
    assert not logging.getLogger("kafka.conn").isEnabledFor(logging.INFO)
    logsetup.configure("debug")
    assert logging.getLogger("kafka.conn").isEnabledFor(logging.DEBUG)
    logsetup.configure("warn")  # faust's spelling
    assert logging.getLogger().level == logging.WARNING
    with pytest.raises(ValueError, match="unknown log level"):
        logsetup.level_of("loud")


def test_lines_are_plain_utc_with_milliseconds_when_redirected() -> None:
    code = ("import logging; from sipledger import logsetup; logsetup.configure('info'); "
            "logging.getLogger('sipledger.x').info('hello %s', 'there'); "
            "logging.getLogger('kafka.conn').info('not shown'); "
            "logging.getLogger('kafka.conn').warning('shown')")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = res.stderr.splitlines()
    assert len(lines) == 2, res.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO sipledger\.x: hello there", lines[0])
    assert lines[1].endswith("WARNING kafka.conn: shown")
    assert "\x1b" not in res.stderr
