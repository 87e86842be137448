"""The adapter's pure pieces and its edges: deadline queue, commands journal follower, CLI errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from b2bua.commands_in import FileCommandFollower
from b2bua.sip.deadlines import DeadlineQueue
from sipledger.b2bua_cli import b2bua_command


def test_deadline_queue_rearm_cancel_and_order() -> None:
    q = DeadlineQueue()
    q.set("a", 5.0)
    q.set("b", 1.0)
    q.set("c", 3.0)
    q.set("b", 4.0)  # re-arming replaces the deadline
    q.cancel("c")
    assert q.next_deadline() == 4.0
    assert q.pop_due(4.5) == ["b"]
    assert q.pop_due(10) == ["a"] and len(q) == 0 and q.next_deadline() is None


def test_command_follower_starts_at_the_end_and_reads_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "commands.jsonl"
    path.write_text(json.dumps({"call_id": "old"}) + "\n")
    seen: list[dict] = []
    follower = FileCommandFollower(path, seen.append)
    assert follower.poll() == 0  # commands older than the start are not replayed
    with path.open("a") as fh:
        fh.write(json.dumps({"call_id": "new"}) + "\nnot json\n" + '{"call_id": "half')
    assert follower.poll() == 1 and seen == [{"call_id": "new"}]
    with path.open("a") as fh:
        fh.write('"}\n')
    assert follower.poll() == 1 and seen[-1] == {"call_id": "half"}


def test_cli_reports_config_errors_and_a_taken_port(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(b2bua_command, ["--config", str(tmp_path / "missing.toml")])
    assert result.exit_code != 0 and "config file not found" in result.output
    result = runner.invoke(b2bua_command, ["--set", "sip.bogus=1"])
    assert result.exit_code != 0 and "sip.bogus" in result.output
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = runner.invoke(
            b2bua_command,
            ["--set", f"sip.listen_port={port}", "--set", f"events.log='file://{tmp_path}/ev.jsonl'"],
        )
    assert result.exit_code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
