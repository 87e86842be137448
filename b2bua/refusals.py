"""Counting refused requests from unadmitted senders, instead of writing them to the billing journal.

A spoofed INVITE flood is not a call: writing a call.setup and call.terminated pair for each packet
let an attacker fill the event log and the pipeline (7 MB per 10,000 packets). Such refusals are
counted here per cause and per source address (both bounded), and summarised in at most one log
line per interval. The counters live on the core object, for metrics to export later.

Pure code: the clock is passed in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

OTHER_SOURCES = "(other sources)"


class RefusalCounter:
    def __init__(self, max_sources: int = 4096, log_interval: float = 60.0) -> None:
        self.max_sources = max_sources
        self.log_interval = log_interval
        self.total = 0
        self.by_cause: Counter[str] = Counter()
        # Least recently refused first; the counts of sources pushed out go to ``other_sources``.
        self.by_source: OrderedDict[str, int] = OrderedDict()
        self.other_sources = 0
        self._window_total = 0
        self._window_causes: Counter[str] = Counter()
        self._window_sources: Counter[str] = Counter()
        self._window_started = 0.0
        self._next_log_at: float | None = None

    def count(self, source: str, cause: str, now: float) -> str | None:
        """Count one refusal; returns the summary line when one is due (the first refusal after a quiet
        interval is reported at once, later ones at most once per ``log_interval``)."""
        self.total += 1
        self.by_cause[cause] += 1
        self._bump_source(source)
        if self._window_total == 0:
            self._window_started = now
        self._window_total += 1
        self._window_causes[cause] += 1
        if source in self._window_sources or len(self._window_sources) < self.max_sources:
            self._window_sources[source] += 1
        else:
            self._window_sources[OTHER_SOURCES] += 1
        if self._next_log_at is None or now >= self._next_log_at:
            return self._summary(now)
        return None

    def flush(self, now: float) -> str | None:
        """The pending summary, if refusals were counted since the last line and it is due."""
        if self._window_total and (self._next_log_at is None or now >= self._next_log_at):
            return self._summary(now)
        return None

    def _bump_source(self, source: str) -> None:
        if source in self.by_source:
            self.by_source[source] += 1
            self.by_source.move_to_end(source)
            return
        self.by_source[source] = 1
        while len(self.by_source) > self.max_sources:
            _, n = self.by_source.popitem(last=False)
            self.other_sources += n

    def _summary(self, now: float) -> str:
        causes = ", ".join(f"{c} {n}" for c, n in self._window_causes.most_common())
        top = ", ".join(f"{s} {n}" for s, n in self._window_sources.most_common(5))
        span = max(0.0, now - self._window_started)
        line = (f"refused {self._window_total} request(s) from unadmitted sources in {span:.0f} s "
                f"(no call events written; by cause: {causes}; top sources: {top}; "
                f"{len(self._window_sources)} source(s))")
        self._window_total = 0
        self._window_causes.clear()
        self._window_sources.clear()
        self._next_log_at = now + self.log_interval
        return line
