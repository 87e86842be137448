"""The B2BUA's sans-I/O core compiled to C with mypyc: which modules, how they are built, when a build
is used.

The SIP core (``b2bua/sip``: parser, messages, serializer, transactions, dialogs, RFC 4028, digest,
the timer wheel) and the call core above it (``CORE_MODULES``: the controller, its concepts, the call
state, admission, routing, credit, events) are plain typed Python, and stay the source of truth.
``python3 -m b2bua.native_build`` (run by deploy/install.sh) compiles them with mypyc into
``b2bua/_native/`` (the SIP modules in its ``sip/``); ``b2bua`` and ``b2bua.sip`` put those
directories first on their ``__path__`` when the build matches the sources, so ``import b2bua.core``
loads the compiled module. The adapters (``server.py``, ``transport.py``, the loops and the
publishers) stay interpreted and call the core as before. Compiled, the core's classes are native
classes: their attributes are C struct fields and their methods C calls, which is what makes the
difference (interpreted classes compiled by mypyc kept Python's attribute protocol and gained nothing).

A build is used only when it was made from exactly the sources on disk (a SHA-256 of each, recorded
at build time) by the running interpreter: an edited source falls back to pure Python, with one
warning, instead of silently running old code. ``SIPLEDGER_NATIVE=0`` forces pure Python. Both
packages come from the build or neither does.

How a build is made: ``b2bua/native_build.py`` (a module of its own: this one is imported by the
package's ``__init__``, which ``python3 -m`` would otherwise run twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("b2bua.native")

PACKAGE_DIR = Path(__file__).resolve().parent  # b2bua/
BUILD_DIR_NAME = "_native"
STAMP = "BUILD.json"
# The modules of b2bua/ itself that are compiled (every module of b2bua/sip is, but its __init__).
CORE_MODULES: tuple[str, ...] = (
    "actions", "admission", "call", "call_events", "call_metrics", "call_setup", "commands", "core",
    "core_config", "core_state", "credit", "credit_book", "gateway_health", "gateway_probes", "liveness",
    "refusals", "relay", "routing", "session_refresh", "signalling_trace", "takeover", "termination",
)


@dataclass(frozen=True)
class Decision:
    use: bool
    reason: str
    warn: bool = False  # a build is there but cannot be used: somebody expects it to be


def source_files(package: Path = PACKAGE_DIR) -> list[Path]:
    """Every compiled module: ``CORE_MODULES`` of ``package``, and each module of ``package/sip`` but
    its ``__init__`` (the ``__init__`` files choose the build, so stay Python)."""
    core = [package / f"{name}.py" for name in CORE_MODULES if (package / f"{name}.py").exists()]
    sip = sorted(p for p in (package / "sip").glob("*.py") if p.name != "__init__.py")
    return core + sip


def _name(path: Path, package: Path) -> str:
    return path.relative_to(package).as_posix()  # "core.py", "sip/parser.py"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(package: Path, mypy_version: str) -> dict[str, object]:
    return {
        "cache_tag": sys.implementation.cache_tag,
        "mypy": mypy_version,
        "sources": {_name(p, package): _digest(p) for p in source_files(package)},
    }


def decide(package: Path = PACKAGE_DIR, environ: dict[str, str] | None = None) -> Decision:
    """Whether the build in ``package/_native`` may be loaded, and why (for the log)."""
    env = os.environ if environ is None else environ
    if env.get("SIPLEDGER_NATIVE", "1") == "0":
        return Decision(False, "pure Python (SIPLEDGER_NATIVE=0)")
    build = package / BUILD_DIR_NAME
    try:
        stamp = json.loads((build / STAMP).read_text())
    except FileNotFoundError:
        return Decision(False, "pure Python: no compiled build (python3 -m b2bua.native_build)")
    except (OSError, ValueError) as exc:
        return Decision(False, f"pure Python: unreadable build stamp ({exc})", warn=True)
    if stamp.get("cache_tag") != sys.implementation.cache_tag:
        return Decision(False, f"pure Python: build is for {stamp.get('cache_tag')}, "
                               f"this is {sys.implementation.cache_tag}", warn=True)
    built = stamp.get("sources", {})
    now = {_name(p, package): _digest(p) for p in source_files(package)}
    changed = sorted(name for name in now.keys() | built.keys() if now.get(name) != built.get(name))
    if changed:
        return Decision(False, f"pure Python: sources changed since the build ({', '.join(changed)}); "
                               f"rebuild with python3 -m b2bua.native_build", warn=True)
    return Decision(True, f"compiled (mypyc {stamp.get('mypy')}, {len(now)} modules)")


STATUS = "not decided"  # what the decision was, for start-up logs and benches
_DECIDED: Decision | None = None  # made once, when ``b2bua`` is imported: both packages follow it


def use_build(package_path: list[str], sub: str = "", package: Path = PACKAGE_DIR) -> bool:
    """Put the build's directory for ``b2bua`` (``sub`` empty) or ``b2bua.sip`` (``sub`` "sip") first
    on that package's ``__path__``; called by each ``__init__`` before it imports any of its modules."""
    global STATUS, _DECIDED
    if _DECIDED is None:
        _DECIDED = decide(package)
        STATUS = _DECIDED.reason
        if _DECIDED.warn:
            log.warning("B2BUA core: %s", _DECIDED.reason)
    if _DECIDED.use:
        build = package / BUILD_DIR_NAME
        package_path.insert(0, str(build / sub if sub else build))
    return _DECIDED.use


def is_compiled() -> bool:
    """True when the core in this process was loaded from the compiled build (the SIP parser and the
    controller both: one build holds both)."""
    names = ("b2bua.sip.parser", "b2bua.core")
    modules = [sys.modules.get(n) for n in names]
    return all(m is not None and not str(getattr(m, "__file__", "")).endswith(".py") for m in modules)
