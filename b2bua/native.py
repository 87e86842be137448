"""The SIP core compiled to C with mypyc: which modules, how they are built, when a build is used.

``b2bua/sip`` (parser, messages, serializer, transactions, dialogs, RFC 4028, digest) is plain typed
Python, and stays the source of truth. ``python3 -m b2bua.native build`` (run by deploy/install.sh)
compiles those modules with mypyc into ``b2bua/sip/_native/``; the package puts that directory first
on its ``__path__`` when the build matches the sources, so ``import b2bua.sip.parser`` loads the
compiled module. Everything else in the process stays interpreted and calls it as before.

A build is used only when it was made from exactly the sources on disk (a SHA-256 of each, recorded
at build time) by the running interpreter: an edited source falls back to pure Python, with one
warning, instead of silently running old code. ``SIPLEDGER_NATIVE=0`` forces pure Python.

mypyc must be 2.x or later: mypyc 1.18 leaked the left operand of ``bytes + bytes`` (mypyc/mypyc#1192,
fixed by python/mypy#21469), which the digest nonce ledger's memory test caught here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("b2bua.native")

PACKAGE = "b2bua.sip"
SOURCES = Path(__file__).resolve().parent / "sip"
BUILD_DIR_NAME = "_native"
STAMP = "BUILD.json"
# The group's shared library becomes the module b2bua.sip.compiled__mypyc, found through the same
# __path__ entry as the modules (a top-level name would need sys.path changed).
GROUP = f"{PACKAGE}.compiled"
MYPY_REQUIREMENT = "mypy==2.4.1"


@dataclass(frozen=True)
class Decision:
    use: bool
    reason: str
    warn: bool = False  # a build is there but cannot be used: somebody expects it to be


def source_files(sources: Path = SOURCES) -> list[Path]:
    """Every module of the package except ``__init__`` (which chooses the build, so stays Python)."""
    return sorted(p for p in sources.glob("*.py") if p.name != "__init__.py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(sources: Path, mypy_version: str) -> dict[str, object]:
    return {
        "cache_tag": sys.implementation.cache_tag,
        "mypy": mypy_version,
        "sources": {p.name: _digest(p) for p in source_files(sources)},
    }


def decide(sources: Path = SOURCES, environ: dict[str, str] | None = None) -> Decision:
    """Whether the build in ``sources/_native`` may be loaded, and why (for the log)."""
    env = os.environ if environ is None else environ
    if env.get("SIPLEDGER_NATIVE", "1") == "0":
        return Decision(False, "pure Python (SIPLEDGER_NATIVE=0)")
    build = sources / BUILD_DIR_NAME
    try:
        stamp = json.loads((build / STAMP).read_text())
    except FileNotFoundError:
        return Decision(False, "pure Python: no compiled build (python3 -m b2bua.native build)")
    except (OSError, ValueError) as exc:
        return Decision(False, f"pure Python: unreadable build stamp ({exc})", warn=True)
    if stamp.get("cache_tag") != sys.implementation.cache_tag:
        return Decision(False, f"pure Python: build is for {stamp.get('cache_tag')}, "
                               f"this is {sys.implementation.cache_tag}", warn=True)
    built = stamp.get("sources", {})
    now = {p.name: _digest(p) for p in source_files(sources)}
    changed = sorted(name for name in now.keys() | built.keys() if now.get(name) != built.get(name))
    if changed:
        return Decision(False, f"pure Python: sources changed since the build ({', '.join(changed)}); "
                               f"rebuild with python3 -m b2bua.native build", warn=True)
    return Decision(True, f"compiled (mypyc {stamp.get('mypy')}, {len(now)} modules)")


STATUS = "not decided"  # what the last ``use_build`` chose, for start-up logs and benches


def use_build(package_path: list[str], sources: Path = SOURCES) -> bool:
    """Put a matching build first on the package's ``__path__``; called by ``b2bua/sip/__init__``
    before it imports any of its modules (all of them or none come from the build)."""
    global STATUS
    decision = decide(sources)
    STATUS = decision.reason
    if decision.use:
        package_path.insert(0, str(sources / BUILD_DIR_NAME))
    elif decision.warn:
        log.warning("SIP core: %s", decision.reason)
    return decision.use


def is_compiled() -> bool:
    """True when the SIP core in this process was loaded from the compiled build."""
    module = sys.modules.get(f"{PACKAGE}.parser")
    return module is not None and not str(getattr(module, "__file__", "")).endswith(".py")


_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
paths = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--build-lib", {lib!r}, "--build-temp", {tmp!r}]
setup(name="sipledger-native", ext_modules=mypycify(paths, opt_level="3", group_name={group!r}))
"""


def build(sources: Path = SOURCES, python: str = sys.executable) -> Path:
    """Compile the package's modules into ``sources/_native`` (replacing a previous build)."""
    root = sources.parents[1]  # the directory holding the top-level package, so names are b2bua.sip.*
    files = [str(p.relative_to(root)) for p in source_files(sources)]
    mypy_version = subprocess.run([python, "-c", "import mypy.version; print(mypy.version.__version__)"],
                                  check=True, capture_output=True, text=True).stdout.strip()
    if int(mypy_version.split(".")[0]) < 2:
        raise SystemExit(f"mypyc {mypy_version} leaks bytes (mypyc/mypyc#1192): install {MYPY_REQUIREMENT}")
    # Taken before compiling: a source edited while mypyc runs then fails the stamp instead of matching it.
    stamp = _stamp(sources, mypy_version)
    with tempfile.TemporaryDirectory(prefix="sipledger-native-") as tmp:
        lib, work = Path(tmp) / "lib", Path(tmp) / "temp"
        script = _SETUP.format(lib=str(lib), tmp=str(work), group=GROUP)
        done = subprocess.run([python, "-c", script, *files], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"mypyc build failed ({done.returncode})")
        built = sorted(lib.rglob("*.so"))
        expected = {p.stem for p in source_files(sources)} | {GROUP.rsplit(".", 1)[1] + "__mypyc"}
        names = {p.name.split(".")[0] for p in built}
        if names != expected:
            raise SystemExit(f"mypyc built {sorted(names)}, expected {sorted(expected)}")
        out = sources / BUILD_DIR_NAME
        staging = sources / (BUILD_DIR_NAME + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for so in built:
            shutil.copy2(so, staging / so.name)
        # The stamp says which sources this build is; written last, so a half-copied build is unused.
        (staging / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "build":
        if decide().use and "--force" not in argv:
            print("b2bua.native: the build matches the sources (--force builds again)")
        else:
            out = build()
            print(f"b2bua.native: built {len(list(out.glob('*.so')))} extension modules into {out}")
        command = "check"
    if command == "check":
        decision = decide()
        print(f"b2bua.native: SIP core {decision.reason}")
        return 0 if decision.use else 1
    print("usage: python3 -m b2bua.native [build [--force] | check]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
