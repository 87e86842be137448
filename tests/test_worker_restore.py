"""A worker serves a partition only from states restored to its changelog's end, provably; a restore
that stalls is retried or ends the worker loudly, never half-processes (pipeline/changelog_restore.py).

Real Kafka 4.3.1 and ClickHouse 18.16, workers as subprocesses. The proof: after a SIGKILL mid-stream,
the next worker reports per partition the end offset it restored to and a digest of the last record of
every key; this test reads the changelog itself up to the end offsets it has at that moment and
recomputes both. The stall: the broker is SIGSTOPped while a worker restores a changelog of 100,000
records.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from drills.harness import DrillStack

from pipeline.call_table import changelog_topic, encode, is_state, state_of, state_value
from pipeline.domain import CallState, Policy, apply
from pipeline.faust_app import CHANGELOG_CONFIGS, EXIT_UNAVAILABLE
from pipeline.kafka_io import WorkerProcess, make_producer, produce_events, worker_config
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.stack.kafka_broker import create_topics
from sipledger.topic_reader import end_offsets, read_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4


def _config(path: Path, bootstrap: str, store_url: str, topics: dict[str, str], extra: str = "") -> Path:
    path.write_text(worker_config(bootstrap, topics, store_url, PARTITIONS,
                                  "grace_period = 1\nnode_timeout = 3600\n" + extra))
    return path


def _topics(bootstrap: str, sfx: str) -> dict[str, str]:
    topics = {k: f"restore-{k}-{sfx}" for k in ("events", "commands", "alerts", "cdrs", "dead")}
    create_topics(bootstrap, {name: (1 if k == "dead" else PARTITIONS) for k, name in topics.items()})
    return topics


def _latest(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[int, dict[bytes, bytes]]:
    """This test's own fold of the changelog up to ``ends``: the last value of every live key."""
    latest: dict[int, dict[bytes, bytes]] = {p: {} for p in ends}
    for rec in read_to_end(bootstrap, topic, ends):
        if rec.key is None:
            continue
        if rec.value is None:
            latest[rec.partition].pop(rec.key, None)
        else:
            latest[rec.partition][rec.key] = rec.value
    return latest


def _digest(latest: dict[bytes, bytes]) -> str:
    # Written out here rather than imported: the worker's digest is what is being checked.
    h = hashlib.sha256()
    for k in sorted(latest):
        h.update(len(k).to_bytes(4, "big") + k + len(latest[k]).to_bytes(4, "big") + latest[k])
    return h.hexdigest()


def _calls(latest: dict[bytes, bytes]) -> tuple[int, int]:
    """(calls, open calls) among the latest values."""
    values = [json.loads(v) for v in latest.values()]
    states = [v for v in values if is_state(v)]
    return len(states), sum(1 for v in states if not state_of(v).closed)


@dataclass
class Setup:
    bootstrap: str
    topics: dict[str, str]
    config: Path
    app_id: str
    tmp: Path


@pytest.fixture()
def setup(real_stack: Any, tmp_path: Path) -> Iterator[Setup]:
    sfx = uuid.uuid4().hex[:8]
    topics = _topics(real_stack.kafka_bootstrap, sfx)
    cfg = _config(tmp_path / "sipledger.toml", real_stack.kafka_bootstrap,
                  real_stack.clickhouse_url(f"restore_{sfx}"), topics)
    yield Setup(real_stack.kafka_bootstrap, topics, cfg, f"sipledger-restore-{sfx}", tmp_path)


def test_after_a_sigkill_the_next_worker_serves_exactly_what_the_changelog_holds(setup: Setup) -> None:
    s = setup
    first = WorkerProcess(s.config, s.app_id, s.tmp / "first.log", loglevel="info").start()
    first.wait_ready()
    # Timestamps far enough ahead that nothing falls due: the states stay as the events left them.
    spec = SyntheticSpec(calls=3000, seed=23, t0_ms=int((time.time() + 60) * 1000), spacing_ms=2,
                         no_timer_cap_s=30, heartbeat_ms=1000)
    events = list(generate(spec))
    producer = make_producer(s.bootstrap)
    produce_events(producer, s.topics["events"], events[: 2 * len(events) // 3], PARTITIONS)
    producer.flush()
    time.sleep(1.5)  # mid-stream: some batches delivered, others in flight
    first.kill()
    changelog = changelog_topic(s.app_id)
    ends = end_offsets(s.bootstrap, changelog)
    assert sum(ends.values()) > 0, "the first worker wrote no state before it was killed"

    second = WorkerProcess(s.config, s.app_id, s.tmp / "second.log", loglevel="info").start()
    try:
        second.wait_ready()
        restores = {int(p): r for p, r in json.loads(second.ready_file.read_text())["restores"].items()}
    finally:
        second.stop()
    producer.close()
    latest = _latest(s.bootstrap, changelog, ends)
    assert sorted(restores) == list(range(PARTITIONS))
    for p in range(PARTITIONS):
        r = restores[p]
        calls, open_calls = _calls(latest[p])
        # Restored to the end the changelog had (nobody wrote between the kill and the restore)...
        assert r["end_offset"] == ends[p], (p, r, ends)
        # ...and exactly the last record of every key there is.
        assert r["digest"] == _digest(latest[p]), p
        assert (r["calls"], r["open_calls"]) == (calls, open_calls), p
    assert sum(r["open_calls"] for r in restores.values()) > 0
    figures = [(p, r["records"], r["calls"], r["seconds"]) for p, r in restores.items()]
    print(f"\nrestored after SIGKILL (partition, records, calls, s): {figures}")


def _fill_changelog(bootstrap: str, topic: str, copies: int) -> dict[int, int]:
    """``copies`` versions of each of a few hundred real call states per partition; returns end offsets."""
    states: dict[str, CallState] = {}
    policy = Policy(no_timer_max_duration=3600)
    for e in generate(SyntheticSpec(calls=500, seed=29)):
        if e["type"] not in ("node.heartbeat", "call.terminated"):
            states[e["call_id"]], _ = apply(states.get(e["call_id"]), e, policy)
    create_topics(bootstrap, {topic: PARTITIONS}, configs={topic: CHANGELOG_CONFIGS})
    producer = make_producer(bootstrap, linger_ms=50)
    for _ in range(copies):
        for i, st in enumerate(states.values()):
            p = i % PARTITIONS
            key, value = encode(st.call_id, state_value(p, st))
            producer.send(topic, key=key, value=value, partition=p)
    producer.flush()
    producer.close()
    return end_offsets(bootstrap, topic)


def test_a_restore_stalled_by_a_hung_broker_is_retried_or_ends_the_worker(real_stack: Any,
                                                                         tmp_path: Path) -> None:
    stack = DrillStack("restore-stall").start(clickhouse=False)
    try:
        sfx = uuid.uuid4().hex[:8]
        app_id = f"sipledger-stall-{sfx}"
        topics = _topics(stack.bootstrap, sfx)
        ends = _fill_changelog(stack.bootstrap, changelog_topic(app_id), copies=200)
        total = sum(ends.values())
        assert total == 100_000
        store = real_stack.clickhouse_url(f"stall_{sfx}")

        # 1. The broker hangs through every attempt: the worker exits with its own status, having served
        #    nothing.
        cfg = _config(tmp_path / "gives-up.toml", stack.bootstrap, store, topics,
                      "restore_stall_timeout = 2\nrestore_attempts = 2")
        worker = WorkerProcess(cfg, app_id, tmp_path / "gives-up.log", loglevel="info").start()
        try:
            _wait_log(worker, "assigned partitions")
            stack.pause_kafka()
            t0 = time.monotonic()
            assert worker.proc is not None
            code = worker.proc.wait(timeout=60)
            gave_up = time.monotonic() - t0
        finally:
            stack.resume_kafka()
            worker.stop()
        text = worker.log.read_text()
        print(f"\nhung broker: the worker exited with {code} {gave_up:.1f} s after the broker stopped")
        assert code == EXIT_UNAVAILABLE, text[-3000:]
        assert "failed (attempt 1 of 2)" in text and "failed 2 times" in text, text[-3000:]
        assert "serving" not in text, text[-3000:]

        # 2. The broker hangs for 4 s: the attempt that stalls is retried, and the restore completes to
        #    the end - the same content a reader of the whole changelog finds.
        cfg = _config(tmp_path / "retries.toml", stack.bootstrap, store, topics,
                      "restore_stall_timeout = 2\nrestore_attempts = 8")
        worker = WorkerProcess(cfg, app_id, tmp_path / "retries.log", loglevel="info").start()
        try:
            _wait_log(worker, "assigned partitions")
            stack.pause_kafka()
            time.sleep(4)
            stack.resume_kafka()
            worker.wait_ready(timeout=120)
            restores = {int(p): r for p, r in json.loads(worker.ready_file.read_text())["restores"].items()}
        finally:
            worker.stop()
        text = worker.log.read_text()
        assert "retrying" in text, text[-3000:]
        latest = _latest(stack.bootstrap, changelog_topic(app_id), ends)
        for p in range(PARTITIONS):
            assert restores[p]["end_offset"] >= ends[p]
            if restores[p]["end_offset"] == ends[p]:
                assert restores[p]["records"] == ends[p]
                assert restores[p]["digest"] == _digest(latest[p])
        figures = [(p, r["records"], r["seconds"]) for p, r in restores.items()]
        print(f"stalled, then restored (partition, records, s): {figures}")
    finally:
        stack.stop()


def _wait_log(worker: WorkerProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (worker.log.read_text() if worker.log.exists() else ""):
        assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log"
        time.sleep(0.02)
