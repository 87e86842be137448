"""Lifecycle phases of a call as seen by the pipeline (plain strings: they go into JSON state as-is)."""

from __future__ import annotations

from typing import Final

# Events arrived but seq 1 (call.setup) has not: held until it does; unknown_call if it never does.
PENDING: Final = "pending"
# call.setup applied, not answered (yet).
ACTIVE: Final = "active"
# call.answered applied, not ended: the only phase with enforcement deadlines.
ANSWERED: Final = "answered"
# Closed, by call.terminated or by orphaning; the CDR has been emitted and is final.
ENDED: Final = "ended"

OPEN_PHASES: Final = frozenset({ACTIVE, ANSWERED})
