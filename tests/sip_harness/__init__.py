"""Test harness that drives SIPp as caller (UAC) and carrier (UAS) around the B2BUA.

`sipp` holds the process wrapper and the trace parser; `fixtures` holds plain helpers that
tests call (no conftest needed). Scenario files live in `tests/sipp/`.

Import it as `sip_harness` (pytest puts `tests/` on sys.path, as for every test module here).
"""

from .sipp import (
    SCENARIO_DIR,
    SippProcess,
    SippResult,
    TracedMessage,
    free_udp_port,
    parse_message_trace,
    scenario_default_keys,
    scenario_path,
)

__all__ = [
    "SCENARIO_DIR",
    "SippProcess",
    "SippResult",
    "TracedMessage",
    "free_udp_port",
    "parse_message_trace",
    "scenario_default_keys",
    "scenario_path",
]
