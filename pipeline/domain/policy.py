"""Rule parameters for zombie-call enforcement, all in seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Policy:
    """Frozen so a policy can be shared between calls and workers without defensive copies.

    ``0`` disables a limit (``max_call_duration``, ``no_timer_max_duration``); the B2BUA has the same
    knobs, this copy is what the pipeline uses to *check* that the B2BUA enforced them.
    """

    # Hard cap on any answered call (0 = off).
    max_call_duration: int = 0
    # Cap on calls without RFC 4028 session timers: nothing else proves they are alive (0 = off).
    no_timer_max_duration: int = 7200
    # Hang up this many seconds before the session expiry (0 = at expiry).
    session_timeout_early_hangup: int = 0
    # How late the B2BUA may be in enforcing a deadline before the pipeline steps in.
    grace_period_s: int = 5
    # A node silent (no heartbeat read while the pipeline is caught up) this long is suspected and
    # probed; if it does not answer either, a node.lost verdict orphans its calls.
    node_timeout_s: int = 30
    # Events of a call whose call.setup has not arrived are reported after this long.
    unknown_call_timeout_s: int = 60
    # An event dated more than this ahead of its node's clock moves it only once a second event of
    # the node confirms the jump (node_clocks).
    max_event_lead_s: int = 10
    # Closed calls are remembered this long (log time) so a late event of one changes nothing.
    closed_call_retention_s: int = 86_400
    # A lost node's answered calls are ended on the wire by a surviving node (call.takeover).
    takeover: bool = True
    # How long (on the taking-over node's clock) its report may take before the call is closed with
    # its exposure open: a BYE's transaction times out after 64 x T1 (32 s) at the latest.
    takeover_timeout_s: int = 45

    def __post_init__(self) -> None:
        for name in ("max_call_duration", "no_timer_max_duration", "session_timeout_early_hangup",
                     "grace_period_s", "node_timeout_s", "unknown_call_timeout_s", "max_event_lead_s",
                     "closed_call_retention_s", "takeover_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
