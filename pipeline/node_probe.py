"""Out-of-band liveness probe of a B2BUA node: SIP OPTIONS over UDP to the address it advertises.

The pipeline calls a node lost only when its heartbeats stopped while the pipeline was caught up
with the log *and* the node does not answer this probe (pipeline/domain/liveness.py). A node that
answers is up but cut off from the log (a broker outage on its side): its calls must not be touched.
Any SIP response counts as an answer (sipledger/sip_ping.py): it proves a SIP stack serves that
address.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sipledger.sip_ping import ping


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answered: bool
    detail: str  # for the verdict and the log: what was sent where and what came back
    rtt_ms: float | None = None


def probe(address: str, attempts: int = 3, timeout: float = 1.0) -> ProbeResult:
    """Up to ``attempts`` OPTIONS (one per ``timeout`` s) to ``address``; stops at the first answer. A
    refused one still waits out its attempt: a node restarting on that port gets its whole window."""
    last = ""
    for _ in range(attempts):
        started = time.monotonic()
        result = ping(address, "udp", timeout)
        if result.status is not None:
            return ProbeResult(True, f"udp:{address} answered OPTIONS with {result.status}", result.rtt_ms)
        last = result.error
        time.sleep(max(0.0, started + timeout - time.monotonic()))
    why = f" ({last})" if last else ""
    return ProbeResult(False, f"{attempts} OPTIONS to udp:{address} unanswered in "
                              f"{attempts * timeout:.1f} s{why}")
