"""What the B2BUA counts about its calls, for its metrics endpoint: plain counters, no I/O.

The core updates these where it decides (a call ends, a BYE goes out, a refresh succeeds or fails,
a call is answered); the adapter exposes them (b2bua/metrics.py) when scraped, so nothing on the
hot path formats or locks anything.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Setup latency buckets, seconds: INVITE received -> 200 OK relayed to the caller.
# Not ``Final``: compiled by mypyc, a Final tuple read in the default factory below was not set yet.
SETUP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, the last one is +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) as Prometheus histograms expose them."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class CallMetrics:
    ended: Counter[str] = field(default_factory=Counter)  # calls by end reason (the attempt's result)
    byes_sent: Counter[str] = field(default_factory=Counter)  # BYEs this node sent, by end reason
    refreshes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (leg, ok | failure cause)
    setup_latency: Histogram = field(default_factory=lambda: Histogram(SETUP_BUCKETS))
