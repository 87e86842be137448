"""`sipledger replay`: rebuild every CDR from the event log into a fresh table.

The log is the truth. Replay folds it with the same ``Processor`` as the live
pipeline, with time taken from the log itself (each event's ts) so deadlines and
node losses are decided where they were decided live, then once more at ``end_ms``
(default: now) for what the live pipeline would have decided since. CDRs of calls
that ended in the log are identical to the live ones, field for field; with a new
rate deck only the money fields differ.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import orjson

from pipeline.domain import RateDeck
from pipeline.domain.timeutil import parse_ts
from pipeline.gc_policy import settle_after_startup
from pipeline.processor import Processor
from pipeline.store_sink import StoreSink
from schemas.validation import ContractError, decode_event
from sipledger.config import Config
from sipledger.eventlog.journal import read_journal
from sipledger.eventlog.publisher import file_url_path
from sipledger.store import Store, StoreError, migrate
from sipledger.topic_reader import end_offsets, read_to_end

# Closed calls are forgotten this long (log time) after their end; redeliveries come sooner.
EVICT_AFTER_MS = 300_000


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
    """Every message of ``topic`` up to the end offsets seen at start, merged across partitions by ts.

    Each partition is in log order already; merging the partitions' streams by event time keeps
    replay streaming (constant memory) while deciding deadlines in time order.
    """
    ends = end_offsets(bootstrap, topic)
    streams = [(rec.value for rec in read_to_end(bootstrap, topic, {p: end}))
               for p, end in ends.items() if end]
    yield from heapq.merge(*streams, key=_ts_key)


def _ts_key(raw: bytes) -> str:
    # The ts field sorts as text (fixed-width UTC); unparsable lines sort first and are refused later.
    try:
        return orjson.loads(raw).get("ts", "")
    except (ValueError, AttributeError):  # orjson.JSONDecodeError is a ValueError
        return ""


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
    invalid = 0
    n = 0
    sink = StoreSink(store, batch_size=50_000, store_events=False)
    settle_after_startup()
    last_tick = -1
    for raw in raw_events:
        try:
            event = decode_event(raw)
        except ContractError:
            invalid += 1
            continue
        n += 1
        ts = parse_ts(event["ts"])
        if ts // 1000 != last_tick:  # once per second of log time is as fine as enforcement gets
            processor.tick(ts)
            last_tick = ts // 1000
        processor.feed(event, validated=True)
        if processor.out:  # most events emit nothing: don't allocate fresh outputs for them
            for cdr in processor.take().cdrs:
                sink.add_cdr(cdr, version=1)
        if sink.should_flush() and not sink.flush():
            raise StoreError(f"store write failed: {sink.lag().last_error}")
        if n % 100_000 == 0:
            processor.evict_closed(ended_before_ms=ts - EVICT_AFTER_MS)
        if progress and n % 10_000 == 0:
            progress(n)
    processor.tick(end_ms)
    for cdr in processor.take().cdrs:
        sink.add_cdr(cdr, version=1)
    if not sink.flush():
        raise StoreError(f"store write failed: {sink.lag().last_error}")
    if progress:
        progress(n)
    return ReplayResult(n, invalid, sink.written["cdrs"],
                        sum(1 for _ in processor.active_calls()))


def deck_from(path: str | None) -> RateDeck | None:
    if not path:
        return None
    p = Path(path)
    return RateDeck.from_csv(p, version=p.stem)
