"""`sipledger calls` in Kafka mode: the real CLI reads a real faust worker's call-state changelog.

One worker subprocess (own app id, topics, database) on the session's Kafka 4.3.1 and ClickHouse 18.16.
The open calls were answered with an hour's cap and node_timeout is an hour too, so nothing the worker
enforces on its own (deadlines, lost nodes) can close them while the test runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.call_table import changelog_topic
from pipeline.domain.timeutil import format_ts, parse_ts
from pipeline.kafka_io import REPO, WorkerProcess, make_producer, produce_events
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.stack.kafka_broker import create_topics
from sipledger.topic_reader import read_to_end

PARTITIONS = 2
OPEN_CAP_S = 3600
GRACE_S = 1


@dataclass
class Setup:
    bootstrap: str
    events_topic: str
    config: Path
    sets: list[str]  # --set arguments naming this run's broker, topics and database
    worker: WorkerProcess


@pytest.fixture()
def setup(real_stack: Any, tmp_path: Path) -> Iterator[Setup]:
    sfx = uuid.uuid4().hex[:8]
    topics = {k: f"calls-{k}-{sfx}" for k in ("events", "commands", "alerts", "cdrs", "dead")}
    create_topics(real_stack.kafka_bootstrap, {name: PARTITIONS for name in topics.values()})
    cfg = tmp_path / "sipledger.toml"
    # Only what every run shares; the per-run names go in with --set, as an operator would pass them.
    cfg.write_text(f'[pipeline]\ngrace_period = {GRACE_S}\nnode_timeout = 3600\n'
                   f'[kafka]\npartitions = {PARTITIONS}\n')
    bootstrap = real_stack.kafka_bootstrap
    overrides = [f"events.log=kafka://{bootstrap}", f"kafka.bootstrap={bootstrap}",
                 f"kafka.topic_events={topics['events']}", f"kafka.topic_commands={topics['commands']}",
                 f"kafka.topic_alerts={topics['alerts']}", f"kafka.topic_cdrs={topics['cdrs']}",
                 f"kafka.topic_dead_letter={topics['dead']}",
                 f"store.url={real_stack.clickhouse_url(f'calls_{sfx}')}"]
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    worker = WorkerProcess(cfg, f"sipledger-calls-{sfx}", tmp_path / "worker.log", extra=sets)
    try:
        yield Setup(real_stack.kafka_bootstrap, topics["events"], cfg, sets, worker)
    finally:
        worker.stop()


def _cli_calls(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipledger", "calls", "--config", str(s.config),
                           *s.sets, "--format", "json", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _listed(s: Setup) -> dict[str, dict[str, Any]]:
    res = _cli_calls(s, "--app-id", s.worker.app_id)
    assert res.returncode == 0, res.stderr
    return {c["call_id"]: c for c in json.loads(res.stdout)}


def _listed_when(s: Setup, ids: set[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """The CLI's calls once they are exactly ``ids``. Polled: the worker writes its ready file from its
    timer, which does not wait for a batch's changelog writes in flight."""
    deadline = time.monotonic() + timeout
    while set(calls := _listed(s)) != ids:
        assert time.monotonic() < deadline, f"listed {sorted(calls)}, expected {sorted(ids)}"
        time.sleep(0.5)
    return calls


def test_calls_lists_the_workers_open_calls_and_drops_ended_ones(setup: Setup) -> None:
    s = setup
    t0 = int(time.time() * 1000) - 15_000  # answered in the past, limits an hour ahead
    # zombie_missed: answered, and the node publishes nothing more, so the call stays open.
    opened = list(generate(SyntheticSpec(calls=3, seed=41, t0_ms=t0, no_timer_cap_s=OPEN_CAP_S),
                           {"zombie_missed": 1}))
    ended = list(generate(SyntheticSpec(calls=1, seed=42, t0_ms=t0, no_timer_cap_s=10), {"caller_bye": 1}))
    setups = {e["call_id"]: e for e in opened + ended if e["type"] == "call.setup"}
    open_ids = {e["call_id"] for e in opened if e["type"] == "call.setup"}
    ended_ids = {e["call_id"] for e in ended if e["type"] == "call.terminated"}
    assert len(open_ids) == 3 and len(ended_ids) == 1
    answered = {e["call_id"]: parse_ts(e["ts"]) for e in opened if e["type"] == "call.answered"}

    producer = make_producer(s.bootstrap, linger_ms=0)
    try:
        produce_events(producer, s.events_topic, opened + ended, PARTITIONS)
        producer.flush()
        t_ready = s.worker.start().wait_ready()

        calls = _listed_when(s, open_ids)
        for cid, c in calls.items():
            ev = setups[cid]
            assert (c["caller"], c["callee"], c["account"]) == (ev["caller"], ev["callee"], ev["account"])
            assert c["timer_mode"] == "no_timer" and c["answer_ms"] == answered[cid]
            # what the worker's deadline queue holds: the cap plus the grace period
            assert c["next_deadline_ms"] == answered[cid] + (OPEN_CAP_S + GRACE_S) * 1000
        # The ended call was set up and closed within the worker's first fetch: it never needed a
        # changelog record (nor a tombstone); the open ones have theirs.
        written = {orjson.loads(r.key) for r in read_to_end(s.bootstrap, changelog_topic(s.worker.app_id))}
        assert open_ids <= written and not ended_ids & written

        gone = sorted(open_ids)[0]
        seq = sum(1 for e in opened if e["call_id"] == gone) + 1
        produce_events(producer, s.events_topic, [{
            "event_id": f"{gone}-{seq}", "call_id": gone, "seq": seq, "type": "call.terminated",
            "ts": format_ts(int(time.time() * 1000)), "node": setups[gone]["node"], "schema_version": 1,
            "reason": "normal_callee_bye", "initiator": "callee", "sip_status": None}], PARTITIONS)
        producer.flush()
        _listed_when(s, open_ids - {gone})
    finally:
        producer.close()
    print(f"\nworker ready in {t_ready:.1f} s")


def test_calls_names_a_missing_changelog(setup: Setup) -> None:
    res = _cli_calls(setup, "--app-id", f"nobody-{uuid.uuid4().hex[:6]}")
    assert res.returncode != 0
    assert "no pipeline worker has run with app id 'nobody-" in res.stderr
    assert "Traceback" not in res.stderr


def test_calls_says_the_broker_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bootstrap = f"127.0.0.1:{port}"
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text("")
    res = subprocess.run([sys.executable, "-m", "sipledger", "calls", "--config", str(cfg), "--set",
                          f"events.log=kafka://{bootstrap}", "--set", f"kafka.bootstrap={bootstrap}"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and bootstrap in lines[0] and "unreachable" in lines[0], res.stderr
