"""The ``end_reason`` vocabulary of the contract (schemas/common.json ``$defs/end_reason``).

Each reason is mapped to the end reason a VOS3000 softswitch operator would recognise in its CDRs,
so billing and support staff migrating from VOS3000 can translate reports one to one.

A *zombie* reason means the call did not end because a party hung up or the setup failed, but because
something stopped proving the call was alive (a failed refresh or probe, an expired session, the
node vanishing) or a system limit cut it. Calls that end that way are the ones whose tail may have
been billed for dead air, so their CDRs carry ``zombie=true``.
"""

from __future__ import annotations

from typing import Final

# reason -> VOS3000 counterpart (the text VOS3000 shows in its "End reason" CDR column).
VOS3000_EQUIVALENT: Final[dict[str, str]] = {
    "normal_caller_bye": "Caller hang up (BYE from caller)",
    "normal_callee_bye": "Callee hang up (BYE from callee)",
    "caller_cancel": "Caller cancel (CANCEL before answer / 487 Request Terminated)",
    "busy": "486 Busy Here",
    "no_route": "404 Not Found (no available gateway / route)",
    "response_timeout": "Response Timeout (no final response from the gateway)",
    "call_progress_timeout": "No answer timeout (ring time exceeded, 408/480)",
    "session_expired": "Session timer expired (no session refresh received)",
    "session_refresh_failed": "Session refresh failed (re-INVITE/UPDATE error or timeout)",
    "liveness_probe_failed": "RTP/OPTIONS keep-alive timeout (media/dialog check failed)",
    "no_timer_limit": "Max call duration exceeded (call without session timer)",
    "max_duration_limit": "Max call duration exceeded",
    "pipeline_terminate": "Terminated by system (external hang-up command)",
    "orphaned": "Abnormal end (softswitch node lost, CDR closed by system)",
    "auth_failed": "Account Locked / 401 Unauthorized (authentication failed)",
    "call_limit_exceeded": "Call Limit Exceeded (concurrent call cap reached)",
    "rejected": "Rejected (4xx/5xx/6xx final response from the gateway)",
    "credit_limit": "Balance exhausted (prepaid call ended at the last increment its balance pays for)",
    "insufficient_balance": "Insufficient Balance (balance below the minimum balance, 402)",
}

END_REASONS: Final[frozenset[str]] = frozenset(VOS3000_EQUIVALENT)

# Ended by a system limit, a failed refresh, a failed probe or orphaning (see the module docstring).
ZOMBIE_REASONS: Final[frozenset[str]] = frozenset({
    "session_expired",
    "session_refresh_failed",
    "liveness_probe_failed",
    "no_timer_limit",
    "max_duration_limit",
    "pipeline_terminate",
    "orphaned",
})

# Normal BYE from a party: the BYE itself is proof the call was alive up to its end.
PARTY_BYE_REASONS: Final[frozenset[str]] = frozenset({"normal_caller_bye", "normal_callee_bye"})


def is_zombie(reason: str) -> bool:
    """True when ``reason`` is one of :data:`ZOMBIE_REASONS`; ValueError for unknown reasons."""
    if reason not in END_REASONS:
        raise ValueError(f"unknown end_reason {reason!r}")
    return reason in ZOMBIE_REASONS


def vos3000_equivalent(reason: str) -> str:
    """The VOS3000 end-reason text for ``reason`` (KeyError for unknown reasons)."""
    return VOS3000_EQUIVALENT[reason]
