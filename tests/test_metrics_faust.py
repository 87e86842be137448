"""A faust worker's Prometheus endpoint, scraped over HTTP, on the real broker and ClickHouse 18.16.

First a worker whose store does not answer: it folds until its store writer holds
``pipeline.max_pending_rows`` rows, then stops reading, so the per-partition lag it reports must add up
with the events it counted to what is on the broker, and the sink's pending rows and their age show the
outage. Then a worker with the real store reads the same topic to its end: no lag, and its CDRs, alerts
and commands counters match what ClickHouse and the output topics hold.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from metrics_scrape import by, family_names, scrape
from metrics_scrape import total as _total

from pipeline.kafka_io import WorkerProcess, make_producer, produce_events, read_topic
from pipeline.metrics import FAUST_NAMES
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.ports import free_port
from sipledger.stack.kafka_broker import create_topics
from sipledger.store import open_store

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4


def _config(path: Path, bootstrap: str, events: str, out: str, store: str, port: int) -> Path:
    path.write_text(f"""
[events]
log = "kafka://{bootstrap}"
[kafka]
partitions = {PARTITIONS}
topic_events = "{events}"
topic_commands = "{out}-commands"
topic_alerts = "{out}-alerts"
topic_cdrs = "{out}-cdrs"
topic_dead_letter = "{out}-dead"
[store]
url = "{store}"
[pipeline]
node_timeout = 3600
max_pending_rows = 1000
[metrics]
pipeline_port = {port}
""")
    return path


def _scrape_when(port: int, ok: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
        except OSError:
            last = {}
        if last and ok(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"metrics never settled: {sorted(last.items())[:40]}")


def test_faust_worker_metrics_show_lag_and_match_the_store(real_stack: Any, tmp_path: Path) -> None:
    sfx = uuid.uuid4().hex[:8]
    bootstrap = real_stack.kafka_bootstrap
    events_topic = f"metrics-events-{sfx}"
    outs = {"down": f"metrics-down-{sfx}", "up": f"metrics-up-{sfx}"}
    create_topics(bootstrap, {events_topic: PARTITIONS,
                              **{f"{o}-{t}": PARTITIONS for o in outs.values() for t in ("commands", "alerts",
                                                                                          "cdrs")},
                              **{f"{o}-dead": 1 for o in outs.values()}})
    producer = make_producer(bootstrap)
    events = list(generate(SyntheticSpec(calls=3000, seed=41, t0_ms=int((time.time() + 3600) * 1000))))
    sent = produce_events(producer, events_topic, events, PARTITIONS)
    producer.flush()
    producer.close()

    # 1. The store does not answer (nothing listens on its port).
    down_port = free_port()
    cfg = _config(tmp_path / "down.toml", bootstrap, events_topic, outs["down"],
                  f"clickhouse://default:@127.0.0.1:{free_port()}/sipledger", down_port)
    worker = WorkerProcess(cfg, f"metrics-down-{sfx}", tmp_path / "down.log", extra=["--batch-size", "200"])
    try:
        worker.start()

        def stalled(m: dict[str, Any]) -> bool:
            return (len(m.get("sipledger_pipeline_partition_lag", [])) == PARTITIONS
                    and _total(m, "sipledger_pipeline_sink_pending_rows") >= 1000
                    and _total(m, "sipledger_pipeline_sink_oldest_pending_seconds") > 1.0)

        m = _scrape_when(down_port, stalled, 90)
        time.sleep(1.0)
        m = scrape(down_port)  # the stall is stable: nothing more is folded
        folded = _total(m, "sipledger_pipeline_events_total")
        lag = by(m, "sipledger_pipeline_partition_lag", "partition")
        print(f"\nstore down: {folded:.0f} events folded, lag per partition {lag}, "
              f"{_total(m, 'sipledger_pipeline_sink_pending_rows'):.0f} rows pending for "
              f"{_total(m, 'sipledger_pipeline_sink_oldest_pending_seconds'):.1f} s")
        assert sum(lag.values()) > 0 and folded > 0
        assert folded + sum(lag.values()) == sent  # every event either counted or waiting on the broker
        assert _total(m, "sipledger_pipeline_partitions_assigned") == PARTITIONS
        assert _total(m, "sipledger_pipeline_restores_total") == PARTITIONS
        assert _total(m, "sipledger_pipeline_sink_rows_written_total") == 0
        assert _total(m, "sipledger_pipeline_store_writer_alive") == 1
    finally:
        worker.stop()

    # 2. The real store: the same events read to the end.
    up_port = free_port()
    database = f"metrics_{sfx}"
    cfg = _config(tmp_path / "up.toml", bootstrap, events_topic, outs["up"],
                  real_stack.clickhouse_url(database), up_port)
    worker = WorkerProcess(cfg, f"metrics-up-{sfx}", tmp_path / "up.log")
    try:
        worker.start()

        def done(m: dict[str, Any]) -> bool:
            return (_total(m, "sipledger_pipeline_events_total") == sent
                    and len(m.get("sipledger_pipeline_partition_lag", [])) == PARTITIONS
                    and _total(m, "sipledger_pipeline_partition_lag") == 0
                    and _total(m, "sipledger_pipeline_partition_caught_up") == PARTITIONS
                    and _total(m, "sipledger_pipeline_sink_pending_rows") == 0
                    and _total(m, "sipledger_pipeline_deliveries_in_flight") == 0)

        m = _scrape_when(up_port, done, 120)
        assert family_names(up_port) == set(FAUST_NAMES)
    finally:
        worker.stop()
    with open_store(real_stack.clickhouse_url(database)) as store:
        cdrs = store.query("SELECT count() AS n FROM cdrs FINAL")[0]["n"]
        alerts = Counter(str(r["kind"]) for r in store.query("SELECT kind FROM zombie_alerts FINAL"))
    commands = Counter(v["type"] for _, v in read_topic(bootstrap, f"{outs['up']}-commands"))
    print(f"store up: {sent} events, {cdrs} CDRs, alerts {dict(alerts)}, commands {dict(commands)}; "
          f"deadlines pending {by(m, 'sipledger_pipeline_deadlines_pending', 'partition')}")
    assert _total(m, "sipledger_pipeline_cdrs_total") == cdrs > 0
    assert by(m, "sipledger_pipeline_sink_rows_written_total", "table")["cdrs"] == cdrs
    assert by(m, "sipledger_pipeline_alerts_total", "kind") == dict(alerts) and alerts
    assert by(m, "sipledger_pipeline_commands_total", "type") == dict(commands) and commands
    assert len(m["sipledger_pipeline_deadlines_pending"]) == PARTITIONS
    assert _total(m, "sipledger_pipeline_dead_letters_total") == 0
