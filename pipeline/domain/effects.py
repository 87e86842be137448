"""Effects: what the pure core asks its driver to do. Plain data, no behaviour.

The core never performs I/O; ``apply``/``on_deadline``/``on_node_lost`` return a list of these and the
driver (faust agent, embedded runner, replay) carries them out: publish a CDR, send a command, raise an
alert, (re)arm a timer. All fields are JSON-friendly scalars or dicts so effects can be logged as-is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class EmitCdr:
    """Publish the CDR of a closed call.

    ``cdr_fields`` is a complete, schema-valid but *unrated* CDR (money fields zero, rates null,
    currency ``XXX``): the core has no rate decks. The driver rates it with ``cdr.rerate``.
    """

    cdr_fields: dict[str, Any]


@dataclass(slots=True)
class IssueTerminate:
    """Tell the owning node to hang up both legs (see ``commands.build_command``)."""

    call_id: str
    node: str
    reason: str  # an end_reason: no_timer_limit / max_duration_limit / session_expired
    deadline_ms: int  # the deadline the command enforces
    ts_ms: int  # the driver-supplied "now" at which the command was decided


@dataclass(slots=True)
class IssueTakeover:
    """Tell a surviving node to end a lost node's call on both legs (``commands.build_takeover``)."""

    call_id: str
    node: str  # the node that takes it over
    dead_node: str
    seq: int  # the seq of the call.terminated it reports
    dialogs: dict[str, Any]
    detected_ms: int  # the node.lost verdict's time (also the command's ts)


@dataclass(slots=True)
class IssueRelease:
    """Tell a node that came back to forget a call another node took over, sending nothing."""

    call_id: str
    node: str
    taken_over_by: str
    ts_ms: int  # the heartbeat of the returning node that prompted it


@dataclass(slots=True)
class RaiseAlert:
    """Raise one alert (at most one per call and kind); ``alerts.build_alert`` makes the dict.

    Carries everything the alert needs except the money, which needs the sell rate deck.
    """

    kind: str
    call_id: str
    node: str
    account: str
    vendor: str
    callee: str
    answer_ms: int | None
    ran_ms: int
    unverified_ms: int
    message: str
    ts_ms: int
    # Gateway alerts (gateways.py): the gateway's name, and what tells one report from the next (the
    # event's id), since a gateway goes down and up again many times under one key.
    gateway: str = ""
    alert_key: str = ""


@dataclass(slots=True)
class ScheduleDeadline:
    """(Re)arm the call's single timer: call ``rules.on_deadline`` once ``node``'s clock reaches ``at_ms``
    (replaces any earlier one)."""

    call_id: str
    at_ms: int
    why: str
    node: str = ""


@dataclass(slots=True)
class CancelDeadline:
    """The call needs no timer any more."""

    call_id: str


Effect = (EmitCdr | IssueTerminate | IssueTakeover | IssueRelease | RaiseAlert | ScheduleDeadline
          | CancelDeadline)
