"""How the compiled core is built (``b2bua/native.py`` says which modules, and when a build is used).

    python3 -m b2bua.native_build [--force]   # compile with mypyc into b2bua/_native (about a minute)
    python3 -m b2bua.native_build check        # whether the build in place is the one in use, and why

mypyc must be 2.x or later: mypyc 1.18 leaked the left operand of ``bytes + bytes`` (mypyc/mypyc#1192,
fixed by python/mypy#21469), which the digest nonce ledger's memory test caught here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from b2bua.native import BUILD_DIR_NAME, PACKAGE_DIR, STAMP, _name, _stamp, decide, source_files

# The group's shared library becomes the module b2bua.compiled__mypyc, found through the same
# __path__ entry as the core modules (a top-level name would need sys.path changed).
GROUP = "b2bua.compiled"
MYPY_REQUIREMENT = "mypy==2.4.1"
# The core imports the configuration and the contracts (interpreted, not compiled): mypyc type-checks
# against them without following their own imports (kafka, jsonschema have no stubs).
MYPY_FLAGS: tuple[str, ...] = ("--ignore-missing-imports", "--follow-imports=silent")


_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
paths = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--build-lib", {lib!r}, "--build-temp", {tmp!r}]
setup(name="sipledger-native", ext_modules=mypycify({flags!r} + paths, opt_level="3", group_name={group!r}))
"""


def build(package: Path = PACKAGE_DIR, python: str = sys.executable) -> Path:
    """Compile the modules into ``package/_native`` (replacing a previous build)."""
    root = package.parent  # the directory holding the top-level package, so names are b2bua.*
    files = [str(p.relative_to(root)) for p in source_files(package)]
    mypy_version = subprocess.run([python, "-c", "import mypy.version; print(mypy.version.__version__)"],
                                  check=True, capture_output=True, text=True).stdout.strip()
    if int(mypy_version.split(".")[0]) < 2:
        raise SystemExit(f"mypyc {mypy_version} leaks bytes (mypyc/mypyc#1192): install {MYPY_REQUIREMENT}")
    # Taken before compiling: a source edited while mypyc runs then fails the stamp instead of matching it.
    stamp = _stamp(package, mypy_version)
    with tempfile.TemporaryDirectory(prefix="sipledger-native-") as tmp:
        lib, work = Path(tmp) / "lib", Path(tmp) / "temp"
        script = _SETUP.format(lib=str(lib), tmp=str(work), group=GROUP, flags=list(MYPY_FLAGS))
        done = subprocess.run([python, "-c", script, *files], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"mypyc build failed ({done.returncode})")
        out_root = lib / package.name  # lib/b2bua/{core,...}.so, lib/b2bua/sip/*.so
        built = sorted(out_root.rglob("*.so"))
        expected = {_name(p, package).removesuffix(".py") for p in source_files(package)}
        expected.add(GROUP.rsplit(".", 1)[1] + "__mypyc")
        names = {so.relative_to(out_root).as_posix().split(".")[0] for so in built}
        if names != expected:
            raise SystemExit(f"mypyc built {sorted(names)}, expected {sorted(expected)}")
        out = package / BUILD_DIR_NAME
        staging = package / (BUILD_DIR_NAME + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        for so in built:
            target = staging / so.relative_to(out_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(so, target)
        # The stamp says which sources this build is; written last, so a half-copied build is unused.
        (staging / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out


def main(argv: list[str]) -> int:
    command = argv[0] if argv and not argv[0].startswith("-") else "build"
    if command == "build":
        if decide().use and "--force" not in argv:
            print("b2bua.native_build: the build matches the sources (--force builds again)")
        else:
            out = build()
            print(f"b2bua.native_build: built {len(list(out.rglob('*.so')))} extension modules into {out}")
        command = "check"
    if command == "check":
        decision = decide()
        print(f"b2bua.native_build: B2BUA core {decision.reason}")
        return 0 if decision.use else 1
    print("usage: python3 -m b2bua.native_build [build] [--force] | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
