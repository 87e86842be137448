"""Kafka-side helpers around the faust worker, shared by its tests and benchmark.

* ``produce_events``: publish events as the B2BUA does - keyed by call_id, node.heartbeat broadcast to
  every partition (so every partition's processor sees every node).
* ``worker_config``: the config text of a worker on given topics and store.
* ``WorkerProcess``: a ``python3 -m pipeline.faust_app worker`` subprocess in its own session, with a
  bounded stop that ends in SIGKILL (a faust worker can hang in aiokafka's consumer thread after SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sipledger.stack.process import pid_alive, tail, terminate_group

REPO = Path(__file__).resolve().parents[1]


def make_producer(bootstrap: str, **kw: Any) -> Any:
    from kafka import KafkaProducer

    opts: dict[str, Any] = {"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 20,
                            "batch_size": 512 * 1024, "max_in_flight_requests_per_connection": 1}
    opts.update(kw)
    return KafkaProducer(**opts)


def produce_events(producer: Any, topic: str, events: Iterable[dict[str, Any]], partitions: int) -> int:
    """Send events in order; heartbeats go to every partition. Returns messages sent (not flushed)."""
    n = 0
    send = producer.send
    for ev in events:
        value = json.dumps(ev, separators=(",", ":")).encode()
        if ev["type"] == "node.heartbeat":
            for p in range(partitions):
                send(topic, value=value, key=ev["call_id"].encode(), partition=p)
                n += 1
        else:
            send(topic, value=value, key=ev["call_id"].encode())
            n += 1
    return n


def worker_config(bootstrap: str, topics: dict[str, str], store_url: str, partitions: int,
                  pipeline: str = "") -> str:
    """A worker's sipledger.toml on the given topics (keys events, commands, alerts, cdrs, dead) and
    store; ``pipeline``: lines for its [pipeline] section."""
    return f"""
[events]
log = "kafka://{bootstrap}"
[kafka]
bootstrap = "{bootstrap}"
partitions = {partitions}
topic_events = "{topics['events']}"
topic_commands = "{topics['commands']}"
topic_alerts = "{topics['alerts']}"
topic_cdrs = "{topics['cdrs']}"
topic_dead_letter = "{topics['dead']}"
[store]
url = "{store_url}"
[pipeline]
{pipeline}
"""


def read_topic(bootstrap: str, topic: str,
               timeout_ms: int = 2000) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Everything on ``topic`` from the beginning, as (key, decoded JSON); tombstones (a compacted
    topic's deleted keys, such as evicted calls in the changelog) are left out."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=timeout_ms, isolation_level="read_committed")
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return [(m.key, json.loads(m.value)) for m in consumer if m.value is not None]
    finally:
        consumer.close()


class WorkerProcess:
    """One faust worker subprocess (``start_new_session`` so the whole group can be killed)."""

    def __init__(self, config: Path, app_id: str, log: Path, loglevel: str = "warn",
                 extra: Sequence[str] = ()) -> None:
        self.config, self.app_id, self.log, self.loglevel = config, app_id, log, loglevel
        self.extra = list(extra)
        self.ready_file = log.with_suffix(".ready")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.ready_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pipeline.faust_app", "worker", "--config", str(self.config),
               "--app-id", self.app_id, "-l", self.loglevel, "--ready-file", str(self.ready_file),
               *self.extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=REPO, env=env)
        return self

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Block until every assigned partition caught up; returns seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.ready_file.exists():
                return time.monotonic() - t0
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail(self.log, 40)}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout:.0f} s:\n{tail(self.log, 40)}")

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash looks like."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is not None and pid_alive(self.proc.pid):
            terminate_group(self.proc.pid, grace)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
