"""The B2BUA core split by concept: the controller ties one module per concept and none does I/O.

Behaviour is tested through the controller (tests/b2bua/test_b2bua_core*.py); this holds the
structure: each concept where README.md says it is, every hook one concept calls in another
implemented, and no clock, socket or thread anywhere in the core's modules.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from b2bua.call_setup import CallSetup
from b2bua.commands import Commands
from b2bua.core import B2BUACore
from b2bua.core_state import CoreState
from b2bua.credit import Credit
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


# One line of single inheritance (mypyc compiles the core to native classes, which have one base).
CHAIN = [CoreState, Credit, CallSetup, InDialogRelay, SessionRefresh, Liveness, Termination, Commands,
         GatewayProbes, B2BUACore]
CONCEPTS = CHAIN[1:-1]


def _own_methods(cls: type) -> set[str]:
    # vars() of a class compiled by mypyc also holds its setup entries, all dunder names.
    return {name for name in vars(cls) if not name.startswith("__")}


def test_the_controller_ties_one_class_per_concept() -> None:
    for base, cls in itertools.pairwise(CHAIN):
        assert cls.__bases__ == (base,), f"{cls.__name__} should stand on {base.__name__}"
    for cls in CONCEPTS:
        assert cls.__module__ != "b2bua.core"
    # Where a newcomer looks for what (README.md, "b2bua/").
    where = {"_on_initial_invite": CallSetup, "_on_in_dialog": InDialogRelay, "_send_refresh": SessionRefresh,
             "_send_probe": Liveness, "_terminate": Termination, "_on_takeover": Commands,
             "_route_gateways": GatewayProbes}
    for method, cls in where.items():
        assert method in _own_methods(cls), f"{method} is not in {cls.__module__}"


def test_no_concept_overrides_another() -> None:
    """The order of the line means nothing: a method is defined by one concept only (or the controller)."""
    owners: dict[str, list[str]] = {}
    for cls in CHAIN[1:]:
        for name in _own_methods(cls):
            owners.setdefault(name, []).append(cls.__name__)
    assert {name: who for name, who in owners.items() if len(who) > 1} == {}


def _hooks() -> list[str]:
    """Methods ``CoreState`` declares for the concepts to implement (their body raises
    NotImplementedError), read from the source: compiled methods have none to inspect."""
    tree = ast.parse((B2BUA / "core_state.py").read_text())
    state = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CoreState")
    return [fn.name for fn in state.body if isinstance(fn, ast.FunctionDef)
            and any(isinstance(node, ast.Raise) and "NotImplementedError" in ast.unparse(node)
                    for node in ast.walk(fn))]


def test_every_hook_a_concept_calls_in_another_is_implemented() -> None:
    hooks = _hooks()
    assert hooks, "CoreState declares the cross-concept hooks"
    for name in hooks:
        assert any(name in _own_methods(cls) for cls in CHAIN[1:]), f"hook {name} not implemented"


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
