"""`sipledger stack up|down|status` with real processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from click.testing import CliRunner
from conftest import private_stack_dir

from sipledger.cli import main
from sipledger.stack import process

REPO = Path(__file__).resolve().parents[1]


def _pids(stack_dir: Path) -> dict[str, int]:
    out = {}
    for name in ("kafka", "clickhouse"):
        rec = process.read_record(stack_dir, name)
        if rec:
            out[name] = rec.pid
    return out


def test_up_twice_reports_the_running_services_and_down_leaves_nothing(tmp_path: Path) -> None:
    stack_dir = private_stack_dir("cli")
    runner = CliRunner()
    args = ["--set", f'stack.dir="{stack_dir}"', "--set", "kafka.partitions=2"]
    try:
        first = runner.invoke(main, ["stack", "up", *args])
        assert first.exit_code == 0, first.output
        assert "kafka: started" in first.output and "clickhouse: started" in first.output
        assert "created topics call-events, call-commands, zombie-alerts, cdrs, dead-letter" in first.output
        pids = _pids(stack_dir)
        assert len(pids) == 2 and all(process.pid_alive(p) for p in pids.values())

        second = runner.invoke(main, ["stack", "up", *args])
        assert second.exit_code == 0, second.output
        assert "kafka: already running" in second.output
        assert "clickhouse: already running" in second.output
        assert _pids(stack_dir) == pids  # no twins

        status = runner.invoke(main, ["stack", "status", *args])
        assert status.exit_code == 0
        assert f"pid {pids['kafka']}" in status.output

        down = runner.invoke(main, ["stack", "down", *args])
        assert down.exit_code == 0
        assert "kafka: stopped" in down.output and "clickhouse: stopped" in down.output
        for pid in pids.values():
            assert not process.pid_alive(pid)
        # nothing of ours is left: no java or clickhouse process whose command line names this folder
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                assert str(stack_dir) not in cmdline or int(entry.name) == os.getpid(), cmdline
        after = runner.invoke(main, ["stack", "status", *args])
        assert after.exit_code == 1
        assert "kafka: down" in after.output

        # down and up twice: both services keep their ports, so the written config stays right
        written = (stack_dir / "sipledger.toml").read_text()
        for _ in range(2):
            again = runner.invoke(main, ["stack", "up", *args])
            assert again.exit_code == 0, again.output
            assert (stack_dir / "sipledger.toml").read_text() == written
            assert runner.invoke(main, ["stack", "down", *args]).exit_code == 0
        up3 = runner.invoke(main, ["stack", "up", *args])
        written_cfg = str(stack_dir / "sipledger.toml")
        probe = runner.invoke(main, ["config", "check", "--probe", "--config", written_cfg])
        assert probe.exit_code == 0, up3.output + probe.output
        assert "ok: Kafka:" in probe.output and "ok: store:" in probe.output
    finally:
        runner.invoke(main, ["stack", "down", *args])
        shutil.rmtree(stack_dir, ignore_errors=True)
