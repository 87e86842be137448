"""The faust worker (Kafka mode) end to end: real Kafka 4.3.1, real ClickHouse 18.16, no mocks.

A worker subprocess per test (own app id, topics, database), a generated stream of 3000 calls produced
as the B2BUA would (keyed by call_id, heartbeats broadcast to every partition), with timestamps just
ahead of the wall clock so the worker's clock-driven tick enforces the zombies' deadlines. The test plays
the B2BUA's part for the commands: it answers each call.terminate with a call.terminated event, as a
node would, so every call ends with exactly one CDR.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.domain.timeutil import format_ts
from pipeline.kafka_io import WorkerProcess, make_producer, produce_events, read_topic, worker_config
from pipeline.synthetic import SyntheticSpec, expected_kinds, generate
from sipledger.stack.kafka_broker import create_topics
from sipledger.store import Store, open_store
from sipledger.store.cdr_export import fetch_cdrs

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4
CALLS = 3000
END_REASON = {"caller_bye": "normal_caller_bye", "callee_bye": "normal_callee_bye", "busy": "busy",
              "cancel": "caller_cancel", "timer_refreshed": "normal_caller_bye",
              "timer_expired": "session_expired", "no_timer_capped": "no_timer_limit",
              # the pipeline's call.terminate is answered by our stand-in node with that reason
              "zombie_missed": "no_timer_limit", "orphan": "orphaned"}


@dataclass
class Setup:
    name: str
    bootstrap: str
    topics: dict[str, str]
    config: Path
    store: Store
    worker: WorkerProcess


@pytest.fixture()
def setup(real_stack: Any, tmp_path: Path) -> Iterator[Setup]:
    sfx = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{sfx}" for k in ("events", "commands", "alerts", "cdrs", "dead")}
    create_topics(real_stack.kafka_bootstrap, {topics["events"]: PARTITIONS, topics["commands"]: PARTITIONS,
                                               topics["alerts"]: PARTITIONS, topics["cdrs"]: PARTITIONS,
                                               topics["dead"]: 1})
    url = real_stack.clickhouse_url(f"faust_{sfx}")
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text(worker_config(real_stack.kafka_bootstrap, topics, url, PARTITIONS,
                                 "grace_period = 1\nnode_timeout = 3"))
    store = open_store(url)
    worker = WorkerProcess(cfg, f"sipledger-test-{sfx}", tmp_path / "worker.log")
    s = Setup(sfx, real_stack.kafka_bootstrap, topics, cfg, store, worker)
    try:
        yield s
    finally:
        worker.stop()
        store.close()


def _spec(lead_s: float) -> SyntheticSpec:
    # 2 ms between setups: 3000 calls in 6 s of event time; 3 s cap so zombies are due within ~20 s.
    return SyntheticSpec(calls=CALLS, seed=11, t0_ms=int((time.time() + lead_s) * 1000), spacing_ms=2,
                         no_timer_cap_s=3, heartbeat_ms=1000)


def _gateway_report(etype: str, seq: int, ts_ms: int, previous: str = "unknown") -> dict[str, Any]:
    """A B2BUA node's report on one of its gateways (keyed gateway:<node>:<gateway>, one partition)."""
    ev: dict[str, Any] = {"event_id": f"gw-report-{seq}-{ts_ms}", "call_id": "gateway:gw-node:carrier-x",
                          "seq": seq, "type": etype, "ts": format_ts(ts_ms), "node": "gw-node",
                          "schema_version": 2, "gateway": "carrier-x", "vendor": "carrier-x",
                          "address": "203.0.113.9:5060", "transport": "udp"}
    if etype == "gateway.down":
        ev.update(cause="probe_timeout", losses=3, status=None, last_answer=None, last_status=None,
                  last_rtt_ms=None, probe_interval_s=10.0, down_after=3)
    else:
        ev.update(cause="probe_answer", answers=2, status=200, rtt_ms=1.0, previous=previous, down_since=None)
    return ev


def _cdr_count(store: Store) -> int:
    return int(store.query("SELECT count() AS n FROM cdrs FINAL")[0]["n"])


class StandInNode:
    """Answers call.terminate commands like a B2BUA node: a call.terminated for the call."""

    def __init__(self, s: Setup, events: list[dict[str, Any]], dead_node: str) -> None:
        self.s = s
        self.dead_node = dead_node  # a dead node answers nothing; its calls end as orphaned
        self.last_seq = Counter(e["call_id"] for e in events if e["type"] != "node.heartbeat")
        self.commands: list[dict[str, Any]] = []
        self.answered: set[str] = set()
        self.consumer = KafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
        parts = [TopicPartition(s.topics["commands"], p) for p in range(PARTITIONS)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.producer = make_producer(s.bootstrap, linger_ms=0)

    def poll(self, timeout_ms: int = 300) -> None:
        for msgs in self.consumer.poll(timeout_ms=timeout_ms).values():
            for m in msgs:
                cmd = json.loads(m.value)
                self.commands.append(cmd)
                cid = cmd["call_id"]
                if cid in self.answered or cmd["node"] == self.dead_node:
                    continue  # a node dedups on command_id; one call.terminated per call
                self.answered.add(cid)
                seq = self.last_seq[cid] + 1
                ev = {"event_id": f"{cid}-{seq}", "call_id": cid, "seq": seq, "type": "call.terminated",
                      "ts": format_ts(int(time.time() * 1000)), "node": cmd["node"], "schema_version": 1,
                      "reason": cmd["reason"], "initiator": "system", "sip_status": None}
                produce_events(self.producer, self.s.topics["events"], [ev], PARTITIONS)
        self.producer.flush()

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


def _run_until_all_cdrs(s: Setup, node: StandInNode, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        node.poll()
        n = _cdr_count(s.store)
        if n >= CALLS:
            return n
    return n


def _check_cdrs(s: Setup, spec: SyntheticSpec) -> None:
    kinds = expected_kinds(spec)
    cdrs = fetch_cdrs(s.store)
    ids = [c["call_id"] for c in cdrs]
    assert len(ids) == len(set(ids)) == CALLS
    assert set(ids) == set(kinds)
    wrong = {c["call_id"]: (kinds[c["call_id"]], c["end_reason"]) for c in cdrs
             if c["end_reason"] != END_REASON[kinds[c["call_id"]]]}
    assert not wrong, list(wrong.items())[:10]


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))
    finally:
        consumer.close()


def test_worker_end_to_end(setup: Setup) -> None:
    s = setup
    s.worker.start().wait_ready()
    spec = _spec(lead_s=3)
    events = list(generate(spec))
    kinds = expected_kinds(spec)
    zombies = {c for c, k in kinds.items() if k == "zombie_missed"}
    orphans = {c for c, k in kinds.items() if k == "orphan"}
    assert zombies and orphans

    producer = make_producer(s.bootstrap)
    gateway_reports = [_gateway_report("gateway.down", 1, spec.t0_ms), _gateway_report("gateway.down", 2,
                                                                                        spec.t0_ms + 5),
                       _gateway_report("gateway.up", 3, spec.t0_ms + 10, previous="down")]
    produce_events(producer, s.topics["events"], events + gateway_reports, PARTITIONS)
    bad = dict(next(e for e in events if e["type"] == "call.setup"))
    del bad["caller"]
    bad["call_id"] = bad["event_id"] = f"bad-{s.name}"
    producer.send(s.topics["events"], key=bad["call_id"].encode(), value=json.dumps(bad).encode())
    producer.flush()
    producer.close()

    node = StandInNode(s, events, spec.dead_node)
    try:
        n = _run_until_all_cdrs(s, node, timeout=90)
    finally:
        node.close()
    assert n == CALLS, f"{n} CDRs of {CALLS}"
    _check_cdrs(s, spec)

    # Commands for every call the B2BUA failed to cut; also for orphans whose deadline passed before
    # their node was declared lost (addressed to the dead node, which cannot answer).
    commanded = {c["call_id"] for c in node.commands}
    assert zombies <= commanded <= zombies | orphans
    assert all(c["node"] == spec.dead_node for c in node.commands if c["call_id"] in orphans)
    assert all(c["reason"] == "no_timer_limit" and c["type"] == "call.terminate" for c in node.commands)
    alerts = [a for _, a in read_topic(s.bootstrap, s.topics["alerts"])]
    assert {a["call_id"] for a in alerts if a["kind"] == "enforcement_missed"} == commanded
    assert {a["call_id"] for a in alerts if a["kind"] == "orphaned"} == orphans
    # The node's gateway reports: one alert per change (the repeated down raises none), on the topic and
    # in ClickHouse 18.16's alerts table, and the reports kept as events.
    gw_alerts = [a for a in alerts if a["kind"].startswith("gateway_")]
    assert [(a["kind"], a["gateway"]) for a in gw_alerts] == [("gateway_down", "carrier-x"),
                                                              ("gateway_up", "carrier-x")]
    stored = s.store.query("SELECT alert_id, kind FROM zombie_alerts FINAL "
                           "WHERE call_id = 'gateway:gw-node:carrier-x' ORDER BY ts_ms")
    assert [(r["alert_id"], str(r["kind"])) for r in stored] == \
        [(a["alert_id"], a["kind"]) for a in gw_alerts]
    kept = s.store.query("SELECT count() AS n FROM call_events WHERE call_id = 'gateway:gw-node:carrier-x'")
    assert int(kept[0]["n"]) == 3
    # CDRs on their topic too, and the refused event on dead-letter with the field named.
    assert {c["call_id"] for _, c in read_topic(s.bootstrap, s.topics["cdrs"])} == set(kinds)
    dead = [d for _, d in read_topic(s.bootstrap, s.topics["dead"])]
    assert len(dead) == 1 and dead[0]["field"] == "caller" and f"bad-{s.name}" in dead[0]["raw"]


def test_worker_survives_sigkill_mid_stream(setup: Setup) -> None:
    s = setup
    s.worker.start().wait_ready()
    # Far enough ahead that no deadline falls due while the worker is down: what the restarted worker
    # enforces must come from the restored table (the answered events before the crash are committed).
    spec = _spec(lead_s=30)
    events = list(generate(spec))
    kinds = expected_kinds(spec)
    zombies = {c for c, k in kinds.items() if k == "zombie_missed"}
    first, middle, rest = events[: len(events) // 2], events[len(events) // 2: 7 * len(events) // 10], \
        events[7 * len(events) // 10:]

    producer = make_producer(s.bootstrap)
    down = _gateway_report("gateway.down", 1, spec.t0_ms)
    sent = produce_events(producer, s.topics["events"], [*first, down], PARTITIONS)
    producer.flush()
    t_end = time.monotonic() + 30
    while _committed(s.bootstrap, s.worker.app_id, s.topics["events"]) < sent:
        assert time.monotonic() < t_end, "first half never committed"
        time.sleep(0.3)
    zombies_before = {e["call_id"] for e in first if e["type"] == "call.answered"} & zombies
    assert zombies_before, "no zombie was answered before the crash; the test would prove nothing"

    produce_events(producer, s.topics["events"], middle, PARTITIONS)
    producer.flush()
    time.sleep(0.4)  # mid-processing: some of this is stored, its offsets not committed yet
    s.worker.kill()
    cdrs_at_kill = _cdr_count(s.store)
    up = _gateway_report("gateway.up", 1, spec.t0_ms + 60_000)  # its node restarted: "previous unknown"
    produce_events(producer, s.topics["events"], [*rest, up], PARTITIONS)
    producer.flush()
    producer.close()

    s.worker.start().wait_ready()
    node = StandInNode(s, events, spec.dead_node)
    try:
        n = _run_until_all_cdrs(s, node, timeout=90)
    finally:
        node.close()
    assert n == CALLS, f"{n} CDRs of {CALLS}"
    _check_cdrs(s, spec)
    raw_rows = int(s.store.query("SELECT count() AS n FROM cdrs")[0]["n"])
    print(f"\ncrash test: {cdrs_at_kill} CDRs stored at SIGKILL; after restart {n} CDRs with FINAL, "
          f"{raw_rows} physical rows without FINAL ({raw_rows - n} re-delivered duplicates); "
          f"{len(zombies_before)} zombies answered before the crash")
    assert raw_rows >= n
    # Every deadline still enforced, including those armed only by the restored table.
    orphans = {c for c, k in kinds.items() if k == "orphan"}
    commanded = {c["call_id"] for c in node.commands}
    assert zombies <= commanded <= zombies | orphans
    alerts = [a for _, a in read_topic(s.bootstrap, s.topics["alerts"])]
    assert {a["call_id"] for a in alerts if a["kind"] == "enforcement_missed"} == commanded
    assert {a["kind"] for a in alerts if a["kind"].startswith("gateway_")} == {"gateway_down", "gateway_up"}


def test_batch_acks_advance_faust_commit_offset(tmp_path: Path) -> None:
    """The batch path's acks leave faust's bookkeeping as per-message acks would: contiguous offsets
    commit past the batch, and nothing commits past offsets not acked yet. No broker needed: only the
    consumer's in-memory structures are exercised."""
    from faust.types import TP

    from pipeline.faust_app import BatchConsumer, make_app
    from sipledger import config as config_mod

    cfg_file = tmp_path / "sipledger.toml"
    cfg_file.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\ntopic_events = "ev"\n')
    app = make_app(config_mod.load(str(cfg_file), []), app_id=f"unit-{uuid.uuid4().hex[:6]}")
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer) and "ev" in consumer.batch_handlers
    assert consumer.gate is app.sipledger  # type: ignore[attr-defined]
    app.sipledger.writer.kill()  # type: ignore[attr-defined]

    @dataclass
    class Rec:
        offset: int

    tp = TP("ev", 0)
    consumer._committed_offset[tp] = 10
    consumer._ack_records({tp: [Rec(o) for o in range(10, 15)]})
    assert consumer._new_offset(tp) == 15
    consumer._committed_offset[tp] = 15  # what faust's commit records once the broker took it
    consumer._ack_records({tp: [Rec(o) for o in (15, 16)]})
    consumer._ack_records({tp: [Rec(o) for o in (19, 20)]})  # 17-18 not acked: commit stops before them
    assert consumer._new_offset(tp) == 17


def test_the_group_timeouts_reach_aiokafka_from_the_config(tmp_path: Path) -> None:
    """pipeline.session_timeout / heartbeat_interval / rebalance_timeout are what the consumer that joins
    the group is built with (faust's own defaults left a dead worker's partitions idle about 61 s)."""
    import asyncio

    from pipeline.faust_app import make_app
    from sipledger import config as config_mod

    cfg_file = tmp_path / "sipledger.toml"
    cfg_file.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\ntopic_events = "ev"\n')
    defaults = config_mod.load(str(cfg_file), [])
    assert (defaults.pipeline.session_timeout, defaults.pipeline.heartbeat_interval) == (6.0, 1.0)
    cfg = config_mod.load(str(cfg_file), ["pipeline.session_timeout=7", "pipeline.heartbeat_interval=0.5",
                                          "pipeline.rebalance_timeout=12"])

    async def build() -> Any:
        app = make_app(cfg, app_id=f"unit-{uuid.uuid4().hex[:6]}")
        try:
            consumer = app.consumer._thread._create_worker_consumer(app.consumer.transport)
            return {k: getattr(consumer, k) for k in ("_session_timeout_ms", "_heartbeat_interval_ms",
                                                      "_rebalance_timeout_ms", "_fetch_max_wait_ms")}
        finally:
            app.sipledger.writer.kill()

    assert asyncio.run(build()) == {"_session_timeout_ms": 7000, "_heartbeat_interval_ms": 500,
                                    "_rebalance_timeout_ms": 12000, "_fetch_max_wait_ms": 100}


def test_a_heartbeat_interval_not_below_the_session_timeout_is_refused(tmp_path: Path) -> None:
    from sipledger import config as config_mod
    from sipledger.config import ConfigError

    with pytest.raises(ConfigError) as err:
        config_mod.load(None, ["pipeline.session_timeout=6", "pipeline.heartbeat_interval=6"])
    assert err.value.key == "pipeline.heartbeat_interval"
