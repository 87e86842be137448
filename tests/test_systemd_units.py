"""deploy/systemd/: the unit files verify with systemd-analyze, their stop timeouts cover the processes'
bounded stops, and their ExecStart lines are sipledger invocations that parse (``--help``) with keys
the configuration accepts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from b2bua.server import STOP_LIMIT_S
from pipeline.faust_app import SHUTDOWN_MARGIN_S
from sipledger import config as config_mod

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "deploy" / "systemd"
BINARY = "/usr/local/bin/sipledger"
INSTANCES = {"sipledger-b2bua@.service": "node-1", "sipledger-pipeline@.service": "1"}


def parse(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists (a key may repeat, as EnvironmentFile= does)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def test_both_templates_exist() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_unit_supervises_as_promised(name: str) -> None:
    unit = parse(UNITS / name)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert value(unit, "Service", "Restart") == ["on-failure"]
    assert value(unit, "Unit", "StartLimitIntervalSec") == ["0"]  # exit 69 while Kafka is away: keep trying
    assert value(unit, "Service", "KillMode") == ["mixed"]
    assert value(unit, "Service", "KillSignal") == ["SIGTERM"]
    env_files = value(unit, "Service", "EnvironmentFile")
    assert "-/etc/sipledger/sipledger.env" in env_files and any("%i" in f for f in env_files)
    stop = float(value(unit, "Service", "TimeoutStopSec")[0])
    if "b2bua" in name:
        bound = STOP_LIMIT_S
    else:
        bound = config_mod.PipelineConfig().shutdown_grace + SHUTDOWN_MARGIN_S
    # Longer than the process's own bound (it ends itself first), not much longer (a hung stop is killed).
    assert bound < stop <= bound + 5, (name, bound, stop)
    assert value(unit, "Install", "WantedBy") == ["multi-user.target"]


def _exec_start(name: str) -> list[str]:
    """ExecStart of the instance as systemd runs it with an empty environment file: %i substituted,
    $VARIABLES of the environment files expanded to nothing."""
    (line,) = value(parse(UNITS / name), "Service", "ExecStart")
    words = [w.replace("%i", INSTANCES[name]) for w in shlex.split(line)]
    return [w for w in words if not re.fullmatch(r"\$\{?[A-Z_]+\}?", w)]


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_exec_start_is_a_valid_sipledger_command(name: str) -> None:
    argv = _exec_start(name)
    assert argv[0] == BINARY
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "sipledger", *argv[1:], "--help"], capture_output=True,
                         text=True, timeout=60, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Usage: python -m sipledger {argv[1]} [OPTIONS]")
    # Every --set names a key the configuration accepts, with a value it accepts.
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    cfg = config_mod.load(REPO / "sipledger.toml", overrides)
    if "b2bua" in name:
        assert cfg.node.id == "node-1" and cfg.events.spool_dir == "/var/lib/sipledger/b2bua-node-1/spool"


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_systemd_analyze_verifies_the_instance(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by deploy/install.sh (Debian package systemd)"
    # systemd-analyze checks that ExecStart's program exists: an installed sipledger stands in for it.
    program = tmp_path / "sipledger"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} -m sipledger \"$@\"\n")
    program.chmod(0o755)
    text = (UNITS / name).read_text()
    assert text.count(BINARY) == 1
    instance = tmp_path / name.replace("@.", f"@{INSTANCES[name]}.")
    instance.write_text(text.replace(BINARY, str(program)))
    res = subprocess.run([analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stdout + res.stderr


def test_systemd_analyze_catches_a_misspelt_key(tmp_path: Path) -> None:
    # verify exits 0 on unknown keys and bad values but names them: the check above wants no output.
    analyze = shutil.which("systemd-analyze")
    assert analyze
    text = (UNITS / "sipledger-pipeline@.service").read_text()
    bad = tmp_path / "sipledger-pipeline@1.service"
    bad.write_text(text.replace(BINARY, "/bin/true").replace("KillMode=", "KilMode=")
                   .replace("Restart=on-failure", "Restart=on-failur"))
    res = subprocess.run([analyze, "verify", "--man=no", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert "Unknown key 'KilMode'" in res.stderr and "on-failur" in res.stderr
