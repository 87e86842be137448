"""The walls between the parts hold: checked on the source, so a new import cannot break them quietly.

* the B2BUA and the pipeline meet only in the log and the contracts: neither imports the other;
* what both need of rating (rate decks, charges, what a prepaid balance affords) is the shared pure
  package ``tariff``, which imports nothing of the project;
* the pipeline's pure core (pipeline/domain) imports nothing of the project outside itself, and
  within itself only downwards: plain data at the bottom, the fold on top, no import loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# pipeline/domain, bottom to top: a module may import only modules listed before it.
DOMAIN_LAYERS = [
    "phase", "end_reasons", "timeutil", "policy", "effects", "state", "rating", "ledger", "closed_calls",
    "node_clocks", "liveness", "alerts", "gateways", "cdr", "commands", "closing", "rules", "deadlines",
    "node_calls", "fold",
]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out += [f".{node.module}" if node.module else f".{a.name}" for a in node.names]
            elif node.module:
                out.append(node.module)
    return out


def test_b2bua_and_pipeline_do_not_import_each_other() -> None:
    for path in (REPO / "b2bua").rglob("*.py"):
        bad = [m for m in _imports(path) if m == "pipeline" or m.startswith("pipeline.")]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in (REPO / "pipeline").rglob("*.py"):
        bad = [m for m in _imports(path) if m == "b2bua" or m.startswith("b2bua.")]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_pure_core_imports_only_downwards() -> None:
    domain = REPO / "pipeline" / "domain"
    modules = {p.stem for p in domain.glob("*.py")} - {"__init__"}
    unplaced = modules ^ set(DOMAIN_LAYERS)
    assert not unplaced, f"place new modules in DOMAIN_LAYERS: {unplaced}"
    for name in DOMAIN_LAYERS:
        for imported in _imports(domain / f"{name}.py"):
            assert not imported.startswith(("pipeline", "sipledger", "b2bua", "schemas")), (name, imported)
            if imported.startswith("."):
                target = imported.lstrip(".").split(".")[0]
                assert DOMAIN_LAYERS.index(target) < DOMAIN_LAYERS.index(name), \
                    f"pipeline/domain/{name}.py imports {target}, which is not below it"


def test_the_shared_rating_package_imports_nothing_of_the_project() -> None:
    project = ("pipeline", "sipledger", "b2bua", "schemas")
    for path in (REPO / "tariff").rglob("*.py"):
        bad = [m for m in _imports(path) if m.split(".")[0] in project]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
