"""What each simulated call did, as seen from its own side, for the demo's summary and for tests.

Times are seconds. ``started_at`` is wall-clock (epoch) so it can be lined up with CDRs; every
duration is measured on the event loop's monotonic clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# caller:   we sent BYE (talk time over, session expired, refresh failed) or CANCEL never applied
# remote:   the far end (B2BUA or carrier) sent BYE -- for vanished callers: a BYE we saw but ignored
# cancel:   we cancelled the INVITE (ringing too long, or the "cancel" behaviour)
# rejected: the INVITE got a final non-2xx response (after auth / 422 retries)
# timeout:  the INVITE never got a final response
# none:     nobody ended the call while we watched (a vanished call the B2BUA never killed)
# aborted:  the traffic run's global timeout or a shutdown cut the call short
# error:    the simulator itself failed (see ``error``)
EndedBy = Literal["caller", "remote", "cancel", "rejected", "timeout", "none", "aborted", "error"]


@dataclass
class CallOutcome:
    """One call placed by a simulated caller."""

    call_id: str
    caller: str  # name of the Caller endpoint
    callee: str
    behaviour: str  # caller behaviour kind
    carrier_behaviour: str | None = None  # the planned carrier behaviour (filled by run_traffic)
    status: int | None = None  # final status of the (last) INVITE
    reason: str = ""
    answered: bool = False
    ended_by: EndedBy = "none"
    end_reason: str = ""
    started_at: float = 0.0
    ring_time: float | None = None  # INVITE -> first 18x
    setup_time: float | None = None  # INVITE -> final response
    talk_time: float | None = None  # 2xx -> end of the dialog (or of our watch)
    duration: float = 0.0  # INVITE -> outcome recorded
    session_expires: int | None = None  # negotiated interval
    refresher: str | None = None  # negotiated refresher ("uac" = us)
    refreshes_sent: int = 0
    refreshes_answered: int = 0  # 2xx to our refreshes
    refreshes_received: int = 0  # UPDATE / re-INVITE from the far end that we answered
    options_received: int = 0
    auth_challenges: int = 0
    bye_status: int | None = None  # response to our BYE (None: none sent or no answer)
    ignored: list[str] = field(default_factory=list)  # vanished calls: what we saw and ignored
    error: str | None = None

    @property
    def finished_ok(self) -> bool:
        return self.ended_by not in ("aborted", "error")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CarrierCallRecord:
    """One INVITE handled by a simulated carrier."""

    call_id: str
    carrier: str
    callee: str
    behaviour: str
    answered: bool = False
    final_status: int | None = None  # the final response we sent to the INVITE
    cancelled: bool = False
    ended_by: str = "none"  # "carrier" | "remote" | "cancel" | "rejected" | "abandoned" | "none"
    end_reason: str = ""
    started_at: float = 0.0
    talk_time: float | None = None
    duration: float = 0.0
    session_expires: int | None = None
    refresher: str | None = None  # "uas" = we refresh
    refreshes_sent: int = 0
    refreshes_answered: int = 0
    refreshes_received: int = 0
    options_received: int = 0
    bye_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
