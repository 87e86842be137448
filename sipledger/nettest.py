"""`sipledger nettest`: VOS3000's "network test" for a gateway or any SIP server: OPTIONS round trips.

N OPTIONS pings per transport, one every ``interval`` seconds, each waiting ``timeout`` for its answer
(sipledger/sip_ping.py). Per transport: how many were sent and answered, loss, round trip min/avg/max
and jitter (the mean absolute difference between consecutive round trips, as RFC 3550 estimates it for
packets), and the SIP statuses seen. The arithmetic is pure (``NetTestResult``); ``run`` does the I/O.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .sip_ping import Ping, ping


@dataclass
class NetTestResult:
    target: str
    transport: str
    rtts_ms: list[float] = field(default_factory=list)  # of the answered pings, in order
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "no answer", "refused"...
    sent: int = 0

    def add(self, p: Ping) -> None:
        self.sent += 1
        if p.status is None:
            self.statuses[p.error or "no answer"] += 1
        else:
            self.statuses[str(p.status)] += 1
            if p.rtt_ms is not None:
                self.rtts_ms.append(p.rtt_ms)

    @property
    def answered(self) -> int:
        return len(self.rtts_ms)

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.answered) / self.sent if self.sent else 0.0

    @property
    def jitter_ms(self) -> float | None:
        r = self.rtts_ms
        if len(r) < 2:
            return None
        return sum(abs(b - a) for a, b in itertools.pairwise(r)) / (len(r) - 1)

    def as_dict(self) -> dict[str, Any]:
        r = self.rtts_ms

        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {"target": self.target, "transport": self.transport, "sent": self.sent,
                "answered": self.answered, "loss_pct": round(self.loss_pct, 1),
                "rtt_min_ms": rounded(min(r) if r else None),
                "rtt_avg_ms": rounded(sum(r) / len(r) if r else None),
                "rtt_max_ms": rounded(max(r) if r else None), "jitter_ms": rounded(self.jitter_ms),
                "statuses": dict(self.statuses)}


def resolve(target: str, cfg: Config) -> tuple[str, str, tuple[str, ...]]:
    """(label, host:port, transports to try) for a gateway name from the configuration or a host:port."""
    for gw in cfg.gateways:
        if gw.name == target:
            return f"gateway {gw.name}", f"{gw.host}:{gw.port}", (gw.transport,)
    return target, target, ("udp",)


def run(address: str, transports: Sequence[str], count: int, interval: float, timeout: float,
        label: str | None = None, on_ping: Callable[[str, int, Ping], None] | None = None
        ) -> list[NetTestResult]:
    results = [NetTestResult(label or address, t) for t in transports]
    for i in range(count):
        started = time.monotonic()
        for res in results:
            p = ping(address, res.transport, timeout)
            res.add(p)
            if on_ping is not None:
                on_ping(res.transport, i + 1, p)
        if i + 1 < count:
            time.sleep(max(0.0, started + interval - time.monotonic()))
    return results
