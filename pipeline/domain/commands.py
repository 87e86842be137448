"""Commands to B2BUA nodes: call.terminate, call.takeover and call.release (schemas/command.*.json).

Command ids are deterministic (uuid5 of what the command is about), so a replay, a redelivered effect
or two workers reaching the same decision produce the same id, and nodes dedup on it.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from .effects import IssueRelease, IssueTakeover, IssueTerminate
from .timeutil import format_ts

_COMMAND_NS: Final = uuid.UUID("7c2d9e41-3b6a-5f0e-8a1d-4e5f6a7b8c9d")
DEFAULT_ISSUER: Final = "sipledger-pipeline"


def command_id(call_id: str, reason: str, deadline_ms: int) -> str:
    """Deterministic (uuid5): a replay or a redelivered effect produces the same id; nodes dedup on it."""
    return str(uuid.uuid5(_COMMAND_NS, f"{call_id}\x1f{reason}\x1f{deadline_ms}"))


def build_command(effect: IssueTerminate, issued_by: str = DEFAULT_ISSUER) -> dict[str, Any]:
    """The command dict for ``effect``; its ts is the effect's ``ts_ms`` (the driver's now), never a clock."""
    return {
        "command_id": command_id(effect.call_id, effect.reason, effect.deadline_ms),
        "type": "call.terminate",
        "call_id": effect.call_id,
        "node": effect.node,
        "reason": effect.reason,
        "issued_by": issued_by,
        "deadline": format_ts(effect.deadline_ms),
        "ts": format_ts(effect.ts_ms),
        "schema_version": 1,
    }


def build_takeover(effect: IssueTakeover, issued_by: str = DEFAULT_ISSUER) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid5(_COMMAND_NS, f"{effect.call_id}\x1ftakeover\x1f{effect.detected_ms}")),
        "type": "call.takeover",
        "call_id": effect.call_id,
        "node": effect.node,
        "dead_node": effect.dead_node,
        "seq": effect.seq,
        "detected": format_ts(effect.detected_ms),
        "dialogs": effect.dialogs,
        "issued_by": issued_by,
        "ts": format_ts(effect.detected_ms),
        "schema_version": 2,
    }


def build_release(effect: IssueRelease, issued_by: str = DEFAULT_ISSUER) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid5(_COMMAND_NS, f"{effect.call_id}\x1frelease\x1f{effect.node}")),
        "type": "call.release",
        "call_id": effect.call_id,
        "node": effect.node,
        "taken_over_by": effect.taken_over_by,
        "issued_by": issued_by,
        "ts": format_ts(effect.ts_ms),
        "schema_version": 2,
    }
