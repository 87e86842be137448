"""Pure domain core of the sipledger billing/CDR pipeline.

No I/O, no clocks, no globals: drivers (faust workers, the embedded JSON-lines runner, replay) feed events
in and carry out the returned effects. Time is the log's own: each node's events move that node's clock
(``node_clocks``), and deadlines are judged on it. See each module's docstring for its rules.

Layers (each imports only those below it): plain data (``phase``, ``end_reasons``, ``policy``,
``effects``, ``timeutil``, ``state``) and ``rating``; then ``alerts`` and ``cdr``; ``closing``;
``rules``; ``fold`` (``apply``); and beside them the indexes a driver keeps (``deadlines``,
``node_clocks``, ``node_calls``, ``closed_calls``, ``liveness``).
"""

from __future__ import annotations

from .alerts import alert_id, alert_line, build_alert
from .cdr import build_cdr, cdr_fields, rerate
from .closed_calls import ClosedCalls
from .commands import build_command, build_release, build_takeover
from .deadlines import DeadlineQueue
from .effects import (
    CancelDeadline,
    Effect,
    EmitCdr,
    IssueRelease,
    IssueTakeover,
    IssueTerminate,
    RaiseAlert,
    ScheduleDeadline,
)
from .fold import apply, drain_held
from .node_calls import NodeCalls
from .node_clocks import NodeClocks
from .policy import Policy
from .rating import Rate, RateDeck, billed_seconds
from .rules import due_at, next_deadline, on_deadline, on_node_lost
from .state import CallState

__all__ = [
    "CallState", "CancelDeadline", "ClosedCalls", "DeadlineQueue", "Effect", "EmitCdr", "IssueRelease",
    "IssueTakeover", "IssueTerminate", "NodeCalls", "NodeClocks", "Policy", "RaiseAlert", "Rate", "RateDeck",
    "ScheduleDeadline", "alert_id", "alert_line", "apply", "billed_seconds", "build_alert", "build_cdr",
    "build_command", "build_release", "build_takeover", "cdr_fields", "drain_held", "due_at", "next_deadline",
    "on_deadline", "on_node_lost", "rerate",
]
