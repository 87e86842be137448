"""`sipledger replay`: rebuild every CDR from the event log into a fresh table.

The log is the truth. Replay folds it with the same ``Processor`` as the live
pipeline, with time taken from the log itself (each event's ts) so deadlines and
node losses are decided where they were decided live, then once more at ``end_ms``
(default: now) for what the live pipeline would have decided since. CDRs of calls
that ended in the log are identical to the live ones, field for field; with a new
rate deck only the money fields differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.domain import RateDeck
from pipeline.domain.timeutil import parse_ts
from pipeline.processor import Processor
from pipeline.store_sink import StoreSink
from schemas.validation import ContractError, decode_event
from sipledger.config import Config
from sipledger.eventlog.journal import read_journal
from sipledger.eventlog.publisher import file_url_path
from sipledger.store import Store, StoreError, migrate


@dataclass(slots=True)
class ReplayResult:
    events: int
    invalid: int
    cdrs: int
    open_calls: int


def read_file_log(path: Path) -> Iterator[bytes]:
    for _, raw in read_journal(path):
        yield raw


def read_kafka_log(bootstrap: str, topic: str) -> Iterator[bytes]:
    """Every message of ``topic`` up to the end offsets seen at start (partition by partition)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=10_000, max_poll_records=5000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            raise StoreError(f"topic {topic!r} not found on {bootstrap}")
        end = consumer.end_offsets(parts)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        remaining = {tp for tp in parts if end[tp] > 0}
        while remaining:
            batch = consumer.poll(timeout_ms=1000)
            if not batch:
                continue
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < end[tp]:
                        yield m.value
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()


def open_log(source: str, cfg: Config) -> Iterator[bytes]:
    parsed = urlparse(source)
    if parsed.scheme == "file":
        path = file_url_path(source, cfg.base_dir)
        if not path.exists():
            raise FileNotFoundError(f"no event journal at {path}")
        return read_file_log(path)
    if source == "kafka" or parsed.scheme == "kafka":
        bootstrap = parsed.netloc or cfg.kafka.bootstrap
        return read_kafka_log(bootstrap, cfg.kafka.topic_events)
    raise ValueError(f"--from must be kafka, kafka://host:port or file:///path, not {source!r}")


def replay(raw_events: Iterator[bytes], processor: Processor, store: Store, end_ms: int,
           replace: bool = False, progress: Callable[[int], None] | None = None) -> ReplayResult:
    migrate(store)
    existing = store.query("SELECT count() AS n FROM cdrs")[0]["n"]
    if existing and not replace:
        raise StoreError(f"{store.url} already holds {existing} CDRs; replay builds a fresh table "
                         "(pass --replace to empty it first)")
    if existing:
        store.execute("TRUNCATE TABLE cdrs")
    events: list[dict[str, Any]] = []
    invalid = 0
    for raw in raw_events:
        try:
            events.append(decode_event(raw))
        except ContractError:
            invalid += 1
    # Kafka interleaves partitions; order by log time so every decision falls where it fell live.
    events.sort(key=lambda e: (e["ts"], e["call_id"], e["seq"]))
    sink = StoreSink(store, batch_size=50_000, store_events=False)
    last_tick = -1
    for i, event in enumerate(events):
        ts = parse_ts(event["ts"])
        if ts // 1000 != last_tick:  # once per second of log time is as fine as enforcement gets
            processor.tick(ts)
            last_tick = ts // 1000
        processor.feed(event, validated=True)
        for cdr in processor.take().cdrs:
            sink.add_cdr(cdr, version=1)
        if sink.should_flush() and not sink.flush():
            raise StoreError(f"store write failed: {sink.lag().last_error}")
        if progress and i % 10_000 == 0:
            progress(i)
    processor.tick(end_ms)
    for cdr in processor.take().cdrs:
        sink.add_cdr(cdr, version=1)
    if not sink.flush():
        raise StoreError(f"store write failed: {sink.lag().last_error}")
    if progress:
        progress(len(events))
    return ReplayResult(len(events), invalid, sink.written["cdrs"],
                        sum(1 for _ in processor.active_calls()))


def deck_from(path: str | None) -> RateDeck | None:
    if not path:
        return None
    p = Path(path)
    return RateDeck.from_csv(p, version=p.stem)


def load_events_json(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in read_file_log(path)]
