"""`sipledger replay`: rebuild every CDR (and the prepaid ledger: top-ups, holds, debits) from the event
log into a fresh table.

The log is the truth and the only clock. Replay folds it with the same ``Processor`` as the
live pipeline, so deadlines are judged on each node's own clock exactly as they were live, and
calls are orphaned exactly where the log holds a node.lost verdict. Nothing is decided from the
wall clock: a call still open at the end of the log stays open (it is counted, not closed). CDRs
are identical to the live ones, field for field, whatever the order or duplication of delivery;
with a new rate deck only the money fields differ.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import orjson

from pipeline.domain import RateDeck
from pipeline.gc_policy import settle_after_startup
from pipeline.processor import Outputs, Processor
from pipeline.store_sink import StoreSink
from schemas.validation import ContractError, decode_event
from sipledger.config import Config
from sipledger.eventlog.journal import read_journal
from sipledger.eventlog.publisher import file_url_path
from sipledger.store import Store, StoreError, migrate
from sipledger.topic_reader import end_offsets, read_to_end

# Closed calls drop their full state into the closed-call memory this often (events read).
EVICT_EVERY = 100_000


@dataclass(slots=True)
class ReplayResult:
    events: int
    invalid: int
    cdrs: int
    open_calls: int
    late_events: int = 0  # events of calls already closed (redeliveries): they changed nothing


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


def replay(raw_events: Iterator[bytes], processor: Processor, store: Store, replace: bool = False,
           progress: Callable[[int], None] | None = None) -> ReplayResult:
    migrate(store)
    existing = store.query("SELECT count() AS n FROM cdrs")[0]["n"]
    if existing and not replace:
        raise StoreError(f"{store.url} already holds {existing} CDRs; replay builds a fresh table "
                         "(pass --replace to empty it first)")
    if existing:
        store.execute("TRUNCATE TABLE cdrs")
    if existing or replace:
        store.execute("TRUNCATE TABLE account_ledger")
    invalid = 0
    n = 0
    sink = StoreSink(store, batch_size=50_000, store_events=False)
    settle_after_startup()
    for raw in raw_events:
        try:
            event = decode_event(raw)
        except ContractError:
            invalid += 1
            continue
        n += 1
        processor.feed(event, validated=True)
        if processor.out:  # most events emit nothing: don't allocate fresh outputs for them
            _store(processor.take(), sink)
        if sink.should_flush() and not sink.flush():
            raise StoreError(f"store write failed: {sink.lag().last_error}")
        if n % EVICT_EVERY == 0:
            # Everything read so far is final in a replay: closed calls keep only their memory.
            processor.evict_closed()
        if progress and n % 10_000 == 0:
            progress(n)
    _store(processor.take(), sink)
    if not sink.flush():
        raise StoreError(f"store write failed: {sink.lag().last_error}")
    if progress:
        progress(n)
    return ReplayResult(n, invalid, sink.written["cdrs"], sum(1 for _ in processor.active_calls()),
                        processor.late_events)


def _store(out: Outputs, sink: StoreSink) -> None:
    """CDRs and the prepaid ledger's rows (top-ups, holds, debits) of a replay."""
    for cdr in out.cdrs:
        sink.add_cdr(cdr, wall_ms=0)
    for row in out.ledger:
        sink.add_ledger(row, wall_ms=0)


def deck_from(path: str | None) -> RateDeck | None:
    if not path:
        return None
    p = Path(path)
    return RateDeck.from_csv(p, version=p.stem)
