"""The README's promises: two set-up commands, CI runs the second, the VOS3000 and end-reason tables."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from sipledger import config as config_mod
from sipledger.cli import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_two_setup_commands_exist_and_ci_runs_the_test_one() -> None:
    block = README.split("## Set-up on a fresh machine")[1].split("```sh")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./deploy/demo.sh", "./deploy/test.sh"]
    for c in commands:
        assert os.access(REPO / c, os.X_OK), c
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec \./deploy/test\.sh\s*$", ci, re.M)
    assert (
        "python3 -m sipledger demo" in (REPO / "deploy" / "demo.sh").read_text()
        or "-m sipledger demo" in (REPO / "deploy" / "demo.sh").read_text()
    )


def test_every_vos3000_parameter_is_in_the_mapping_table() -> None:
    for vos, key in config_mod.vos3000_names().items():
        assert f"| `{vos}` | `{key}` |" in README, vos


def test_every_end_reason_is_documented_with_its_zombie_flag() -> None:
    from pipeline.domain.end_reasons import ZOMBIE_REASONS

    common = json.loads((REPO / "schemas" / "common.json").read_text())
    for reason in common["$defs"]["end_reason"]["enum"]:
        row = next(line for line in README.splitlines() if line.startswith(f"| `{reason}` |"))
        assert row.rstrip().endswith("| yes |") == (reason in ZOMBIE_REASONS), reason


def test_every_documented_command_exists() -> None:
    rows = [
        line for line in README.split("## Commands")[1].split("##")[0].splitlines() if line.startswith("| `")
    ]
    for row in rows:
        words = row.split("`")[1].split()
        assert words[0] == "sipledger"
        cmd = main.commands.get(words[1])
        assert cmd is not None, f"README documents `sipledger {words[1]}`, which does not exist"
        if len(words) > 2 and hasattr(cmd, "commands") and not words[2].startswith("-"):
            for sub in words[2].replace("\\|", "|").split("|"):
                assert sub in cmd.commands, f"sipledger {words[1]} {sub}"


def _production() -> str:
    return README.split("## Run it in production")[1].split("\n## ")[0]


def _shell_lines(text: str) -> list[str]:
    """Commands of the section's ```sh blocks, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in text.split("```sh")[1:]:
        pending = ""
        for raw in block.split("```")[0].splitlines():
            line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = (pending + line).strip()
            pending = ""
            if line:
                lines.append(line)
    return lines


def test_production_walkthrough_covers_what_an_operator_needs() -> None:
    text = _production()
    for needed in ("sipledger stack up", "sipledger config check --probe", "sipledger b2bua",
                   "sipledger pipeline", "tests/sipp/uac_no_timer_wait_bye.xml", "sipp -sn uac",
                   "clickhouse-client", "sipledger status", "sipledger alerts tail",
                   "sipledger notebook run billing_accuracy", "SIPLEDGER_STORE_URL", "SIPLEDGER_CONFIG",
                   "SIPLEDGER_EVENTS_LOG", "SIPLEDGER_SELL_RATES", "/metrics",
                   "deploy/grafana/dashboards/sipledger.json", "sipledger-b2bua@", "sipledger-pipeline@",
                   "docker-compose"):
        assert needed in text or needed in README, needed
    for unit in ("sipledger-b2bua@.service", "sipledger-pipeline@.service"):
        assert (REPO / "deploy" / "systemd" / unit).is_file()


def test_production_walkthrough_commands_parse() -> None:
    import shlex

    import click

    seen = set()
    for line in _shell_lines(_production()):
        words = shlex.split(line)
        if words[0] == "sipledger":
            # Resolve the subcommand chain and parse its options as the command would (nothing runs).
            cmd: click.Command = main
            ctx = main.make_context("sipledger", words[1:])
            while isinstance(cmd, click.Group):
                args = [*ctx._protected_args, *ctx.args]
                name, sub, rest = cmd.resolve_command(ctx, args)
                assert sub is not None, line
                cmd, ctx = sub, sub.make_context(name or "", rest, parent=ctx)
            seen.add(" ".join(words[:2]))
        elif words[0] == "sipp":
            if "-sf" in words:
                assert (REPO / words[words.index("-sf") + 1]).is_file(), line
        elif words[0] in ("clickhouse-client", "curl", "useradd", "pip", "install", "echo", "systemctl",
                          "journalctl"):
            continue
        else:
            raise AssertionError(f"a command the walkthrough test does not know: {line}")
    assert {"sipledger stack", "sipledger config", "sipledger b2bua", "sipledger pipeline",
            "sipledger status", "sipledger alerts", "sipledger notebook"} <= seen


def test_production_walkthrough_config_loads() -> None:
    import tomllib

    block = _production().split("```toml")[1].split("```")[0]
    cfg = config_mod.from_dict(tomllib.loads(block))
    assert cfg.events.log.startswith("kafka://") and cfg.kafka.bootstrap in cfg.events.log
    assert cfg.metrics.b2bua_port and cfg.metrics.pipeline_port
