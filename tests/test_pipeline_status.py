"""`sipledger status`: the workers' group lag per partition, each partition's restore state and worker,
the store writers' pending rows - from the command line, on a real broker, without Kafka's Java tools."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka_io import REPO, WorkerProcess, make_producer, produce_events, worker_config
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.stack.kafka_broker import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4


def _status(cfg: Path, app_id: str, *sets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipledger", "status", "--config", str(cfg), *sets,
                           "--app-id", app_id, "--format", "json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _status_when(cfg: Path, app_id: str, ok: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        res = _status(cfg, app_id)
        assert res.returncode == 0, res.stderr
        status = json.loads(res.stdout)
        if ok(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_status_shows_lag_restores_and_workers(real_stack: Any, tmp_path: Path) -> None:
    sfx = uuid.uuid4().hex[:8]
    topics = {k: f"status-{k}-{sfx}" for k in ("events", "commands", "alerts", "cdrs", "dead")}
    create_topics(real_stack.kafka_bootstrap, {t: PARTITIONS for t in topics.values()})
    bootstrap = real_stack.kafka_bootstrap
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text(worker_config(bootstrap, topics, real_stack.clickhouse_url(f"status_{sfx}"), PARTITIONS,
                                 "node_timeout = 3600"))
    app_id = f"sipledger-status-{sfx}"
    workers = [WorkerProcess(cfg, app_id, tmp_path / f"w{i}.log", loglevel="info") for i in range(2)]
    try:
        for w in workers:
            w.start()
        workers[0].wait_ready()
        producer = make_producer(bootstrap)
        events = list(generate(SyntheticSpec(calls=400, seed=31, t0_ms=int((time.time() + 3600) * 1000))))
        sent = produce_events(producer, topics["events"], events, PARTITIONS)
        producer.flush()
        producer.close()

        def settled(st: dict[str, Any]) -> bool:
            # Workers publish every 2 s: their counts and their writers' pending rows lag the group's
            # committed offsets a little (a report taken before the writer's last acknowledgement).
            live = [w for w in st["workers"].values() if w["live"]]
            return (len(live) == 2 and st["total_lag"] == 0
                    and {p["state"] for p in st["partitions"]} == {"caught_up"}
                    and sum(w["stats"]["events"] for w in live) >= sent
                    and all(w["writer"]["pending_rows"] == 0 for w in live))

        status = _status_when(cfg, app_id, settled)
        assert settled(status), json.dumps(status, indent=1)
        assert status["group_state"] == "Stable" and status["members"] == 2
        assert sum(p["end"] for p in status["partitions"]) == sent
        assert all(p["committed"] == p["end"] for p in status["partitions"])
        assert len({p["worker"] for p in status["partitions"]}) == 2  # both serve
        for p in status["partitions"]:
            assert p["restore"] is not None and p["restore"]["end_offset"] >= 0
        for w in status["workers"].values():
            assert w["writer"] == {"pending_rows": 0, "pending_batches": 0, "alive": True}
        assert sum(w["stats"]["events"] for w in status["workers"].values()) >= sent

        table = subprocess.run([sys.executable, "-m", "sipledger", "status", "--config", str(cfg),
                                "--app-id", app_id], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        assert "total lag 0" in table.stdout and table.stdout.count("caught_up") == PARTITIONS
        print("\n" + table.stdout)

        # A worker stopped by SIGTERM says so, and its partitions move to the other at once.
        assert workers[1].proc is not None
        t0 = time.monotonic()
        workers[1].proc.terminate()
        workers[1].proc.wait(timeout=20)
        stopped_in = time.monotonic() - t0

        def moved(st: dict[str, Any]) -> bool:
            return (any(w["state"] == "stopped" for w in st["workers"].values())
                    and len({p["worker"] for p in st["partitions"]}) == 1
                    and {p["state"] for p in st["partitions"]} == {"caught_up"})

        t1 = time.monotonic()
        status = _status_when(cfg, app_id, moved)
        print(f"SIGTERM: exited in {stopped_in:.2f} s; partitions served by the other within "
              f"{time.monotonic() - t1:.1f} s of the exit (status polled every 0.5 s)")
        assert moved(status), json.dumps(status, indent=1)
    finally:
        for w in workers:
            w.stop()


def test_status_of_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text('[events]\nlog = "kafka://127.0.0.1:1"\n[kafka]\nbootstrap = "127.0.0.1:1"\n')
    t0 = time.monotonic()
    res = _status(cfg, "sipledger-pipeline")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["Error: Kafka at 127.0.0.1:1 is unreachable (kafka.bootstrap)"]
    assert time.monotonic() - t0 < 30
    embedded = tmp_path / "embedded.toml"
    embedded.write_text('[events]\nlog = "file://events.jsonl"\n')
    res = _status(embedded, "sipledger-pipeline")
    assert res.returncode == 1 and "Kafka mode" in res.stderr
