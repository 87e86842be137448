"""Pure domain core of the sipledger billing/CDR pipeline.

No I/O, no clocks, no globals: drivers (faust agents, the embedded JSON-lines runner, replay) feed events
and "now" in, and carry out the returned effects. See each module's docstring for its rules.
"""

from __future__ import annotations

from .alerts import alert_id, build_alert
from .call_state import CallState, apply, drain_held
from .cdr import build_cdr, cdr_fields, rerate
from .commands import build_command
from .deadlines import DeadlineQueue
from .effects import CancelDeadline, Effect, EmitCdr, IssueTerminate, RaiseAlert, ScheduleDeadline
from .node_liveness import NodeLiveness
from .policy import Policy
from .rating import Rate, RateDeck, billed_seconds
from .rules import due_at, next_deadline, on_deadline, on_node_lost

__all__ = [
    "CallState", "CancelDeadline", "DeadlineQueue", "Effect", "EmitCdr", "IssueTerminate", "NodeLiveness",
    "Policy", "RaiseAlert", "Rate", "RateDeck", "ScheduleDeadline", "alert_id", "apply", "billed_seconds",
    "build_alert", "build_cdr", "build_command", "cdr_fields", "drain_held", "due_at", "next_deadline",
    "on_deadline", "on_node_lost", "rerate",
]
