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
