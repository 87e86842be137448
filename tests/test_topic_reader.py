"""Reading a topic to its end on the real broker (sipledger/topic_reader.py), and `sipledger replay
--from kafka`, which reads the events topic that way: the same CDRs as a replay of the file log."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import RunningStack

from pipeline.kafka_io import make_producer, produce_events
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.cli import main
from sipledger.eventlog import FileJournal
from sipledger.stack.kafka_broker import create_topics
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.topic_reader import NoSuchTopic, TopicReadError, end_offsets, read_to_end

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
RATES = REPO / "sipledger" / "data" / "rates"


def _topic(stack: RunningStack, partitions: int) -> str:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    create_topics(stack.kafka_bootstrap, {name: partitions})
    return name


def _produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    producer = make_producer(bootstrap)
    for partition, value in values:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def test_reads_up_to_the_end_offsets_taken_at_start_in_log_order(real_stack: RunningStack) -> None:
    topic = _topic(real_stack, 3)
    first = [(i % 3, f"a{i}".encode()) for i in range(60)]
    _produce(real_stack.kafka_bootstrap, topic, first)
    ends = end_offsets(real_stack.kafka_bootstrap, topic)
    assert ends == {0: 20, 1: 20, 2: 20}
    _produce(real_stack.kafka_bootstrap, topic, [(i % 3, f"b{i}".encode()) for i in range(30)])

    got = list(read_to_end(real_stack.kafka_bootstrap, topic, ends))
    by_partition = {p: [r.value for r in got if r.partition == p] for p in range(3)}
    assert by_partition == {p: [v for q, v in first if q == p] for p in range(3)}  # nothing written later
    # Without ends given: everything there is when reading starts.
    assert len(list(read_to_end(real_stack.kafka_bootstrap, topic))) == 90


def test_a_missing_topic_and_an_unreachable_broker_are_one_line_errors(real_stack: RunningStack) -> None:
    with pytest.raises(NoSuchTopic, match="no topic 'nowhere-"):
        end_offsets(real_stack.kafka_bootstrap, f"nowhere-{uuid.uuid4().hex[:6]}")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    t = time.monotonic()
    with pytest.raises(TopicReadError, match=f"Kafka at {dead} is unreachable"):
        list(read_to_end(dead, "call-events"))
    assert time.monotonic() - t < 15


def test_a_broker_that_serves_nothing_more_before_the_end_is_an_error_not_a_hang(
        real_stack: RunningStack) -> None:
    topic = _topic(real_stack, 1)
    _produce(real_stack.kafka_bootstrap, topic, [(0, b"only")])
    # An end beyond what the broker holds is what a reader sees when the broker stops serving.
    reader = read_to_end(real_stack.kafka_bootstrap, topic, {0: 5}, stall_timeout_s=2.0)
    t = time.monotonic()
    assert next(reader).value == b"only"
    with pytest.raises(TopicReadError, match="stopped serving"):
        next(reader)
    assert time.monotonic() - t < 10


def test_replay_from_kafka_rebuilds_the_cdrs_a_replay_of_the_file_log_builds(
        real_stack: RunningStack, tmp_path: Path) -> None:
    topic = _topic(real_stack, 4)
    # with the dead node's verdict, as a live pipeline writes it into the log
    events = list(generate(SyntheticSpec(calls=300, seed=8, no_timer_cap_s=60), verdict_after_ms=30_000))
    journal = FileJournal(tmp_path / "events.jsonl")
    for e in events:
        journal.publish(e)
    journal.close()
    producer = make_producer(real_stack.kafka_bootstrap)
    produce_events(producer, topic, events, 4)  # as the B2BUA does: keyed by call, heartbeats to all
    producer.flush()
    producer.close()
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text(f"""
[kafka]
bootstrap = "{real_stack.kafka_bootstrap}"
topic_events = "{topic}"
[timers]
no_timer_max_duration = 60
[pipeline]
sell_rates = "{RATES}/sell.csv"
buy_rates = "{RATES}/buy.csv"
""")
    runner = CliRunner()
    cdrs = {}
    for name, source in (("file", f"file://{tmp_path}/events.jsonl"), ("kafka", "kafka")):
        res = runner.invoke(main, ["replay", "--config", str(cfg), "--from", source,
                                   "--to", f"chdb://{tmp_path}/{name}"])
        assert res.exit_code == 0, res.output
        store = open_store(f"chdb://{tmp_path}/{name}")
        cdrs[name] = {c["call_id"]: c for c in fetch_cdrs(store)}
        store.close()
    ended = {e["call_id"] for e in events if e["type"] == "call.terminated"}
    assert ended < set(cdrs["file"])  # and the dead node's calls, orphaned by the verdict
    assert cdrs["kafka"] == cdrs["file"]  # field for field

    res = runner.invoke(main, ["replay", "--config", str(cfg), "--from", "kafka",
                               "--to", f"chdb://{tmp_path}/none",
                               "--set", f"kafka.topic_events=absent-{uuid.uuid4().hex[:6]}"])
    assert res.exit_code != 0 and "no topic 'absent-" in res.output, res.output
    assert "Traceback" not in res.output
