"""The B2BUA core split by concept: the controller ties one module per concept and none does I/O.

Behaviour is tested through the controller (tests/b2bua/test_b2bua_core*.py); this holds the
structure: each concept where README.md says it is, every hook one concept calls in another
implemented, and no clock, socket or thread anywhere in the core's modules.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from b2bua.call_setup import CallSetup
from b2bua.commands import Commands
from b2bua.core import B2BUACore
from b2bua.core_state import CoreState
from b2bua.gateway_probes import GatewayProbes
from b2bua.liveness import Liveness
from b2bua.relay import InDialogRelay
from b2bua.session_refresh import SessionRefresh
from b2bua.termination import Termination

B2BUA = Path(__file__).resolve().parents[2] / "b2bua"
CORE_MODULES = ["core", "core_config", "core_state", "call_setup", "relay", "session_refresh", "liveness",
                "termination", "commands", "takeover", "call", "actions", "call_metrics", "admission",
                "routing", "refusals", "sip/deadlines", "gateway_probes", "gateway_health", "credit",
                "credit_book", "signalling_trace"]
IO_MODULES = {"asyncio", "socket", "time", "threading", "subprocess", "select", "selectors", "uvloop",
              "datetime"}


def test_the_controller_ties_one_class_per_concept() -> None:
    concepts = [CallSetup, InDialogRelay, SessionRefresh, Liveness, Termination, Commands, GatewayProbes]
    assert B2BUACore.__bases__ == tuple(concepts)
    for cls in concepts:
        assert issubclass(cls, CoreState) and cls.__module__ != "b2bua.core"
    # Where a newcomer looks for what (README.md, "b2bua/").
    assert B2BUACore._on_initial_invite.__module__ == "b2bua.call_setup"
    assert B2BUACore._on_in_dialog.__module__ == "b2bua.relay"
    assert B2BUACore._send_refresh.__module__ == "b2bua.session_refresh"
    assert B2BUACore._send_probe.__module__ == "b2bua.liveness"
    assert B2BUACore._terminate.__module__ == "b2bua.termination"
    assert B2BUACore._on_takeover.__module__ == "b2bua.commands"
    assert B2BUACore._route_gateways.__module__ == "b2bua.gateway_probes"


def test_every_hook_a_concept_calls_in_another_is_implemented() -> None:
    hooks = [name for name, fn in vars(CoreState).items()
             if inspect.isfunction(fn) and "raise NotImplementedError" in inspect.getsource(fn)]
    assert hooks, "CoreState declares the cross-concept hooks"
    for name in hooks:
        assert getattr(B2BUACore, name) is not getattr(CoreState, name), f"hook {name} not implemented"


def test_the_core_modules_do_no_io() -> None:
    for name in CORE_MODULES:
        tree = ast.parse((B2BUA / f"{name}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        assert not imported & IO_MODULES, f"b2bua/{name}.py imports {sorted(imported & IO_MODULES)}"
