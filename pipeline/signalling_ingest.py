"""Call signalling records from the log into table call_signalling, with their retention.

The B2BUA publishes one record per recorded call (schemas/call_signalling.json; b2bua/signalling_trace.py)
on the call-signalling topic or the journal beside the events. This module stores them, in both modes:

* ``SignallingSink``: validates each record (an invalid one goes to the dead letters with the failing field
  named, never into the table), keeps the valid ones as rows and writes them in one insert; drops the
  partitions older than ``trace.retention_days`` (sipledger/store/signalling.py) at most once an hour.
* ``JournalSignallingFollower``: the embedded runner's, called from its loop: reads the journal from the
  offset in its own checkpoint file and moves that offset only after the store acknowledged the rows.
* ``KafkaSignallingFollower``: the faust worker's, a thread of its own with its own consumer group
  (``<app id>-signalling``): offsets are committed only after the rows are stored.

Records are at least once (a crash between the insert and the offset re-reads them): the table is a
ReplacingMergeTree keyed by (call_id, node, n), read with FINAL. Records are never on the path of call
events: their reading, validation and insert happen beside the events' (the embedded loop does them after
the events' step, bounded; the worker in another thread), and a store that refuses them only delays them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.processor import save_json_atomic
from schemas.validation import ContractError, validate_signalling
from sipledger.eventlog.journal import read_journal
from sipledger.store import Store, StoreError, StoreHandle
from sipledger.store.signalling import TABLE, drop_expired, record_columns, utc_day

log = logging.getLogger("sipledger.pipeline.signalling")

PRUNE_INTERVAL_S = 3600.0
DeadLetter = Callable[[str, bytes, Exception], Any]


class SignallingSink:
    """Records -> rows of call_signalling (see the module docstring)."""

    def __init__(self, store: Store | Callable[[], Store], retention_days: int, dead_letter: DeadLetter,
                 clock: Callable[[], float] = time.time, max_backoff: float = 10.0) -> None:
        self._store = StoreHandle(store)
        self.retention_days = retention_days
        self.dead_letter = dead_letter
        self.clock = clock
        self._max_backoff = max_backoff
        self.records: list[dict[str, Any]] = []
        self.stored = 0  # records acknowledged by the store
        self.rows = 0
        self.refused = 0  # invalid records sent to the dead letters
        self.pruned: list[str] = []
        self._next_prune = 0.0
        self._failures = 0
        self._retry_at = 0.0

    def add(self, raw: bytes | str, source: str) -> bool:
        """Take one record off the log; False (and a dead letter) when it breaks the contract."""
        try:
            rec = orjson.loads(raw)
            validate_signalling(rec)
        except (orjson.JSONDecodeError, ContractError) as exc:
            err = exc if isinstance(exc, ContractError) else ContractError(f"not valid JSON: {exc}")
            self.refused += 1
            self.dead_letter(source, raw if isinstance(raw, bytes) else raw.encode(), err)
            log.warning("call signalling record refused (%s): dead letter", err)
            return False
        self.records.append(rec)
        return True

    def pending(self) -> int:
        return len(self.records)

    def flush(self) -> bool:
        """Store what is held; True when every record is acknowledged (or there was none)."""
        if not self.records:
            return True
        now = self.clock()
        if now < self._retry_at:
            return False
        try:
            store = self._store.get()
            cols = record_columns(self.records)
            n = store.insert_columns(TABLE, cols)
        except StoreError as exc:
            self._failures += 1
            delay = min(self._max_backoff, 0.2 * 2 ** min(self._failures, 8))
            self._retry_at = now + delay
            log.warning("storing %d call signalling records failed (%s); retry in %.1f s", len(self.records),
                        str(exc).splitlines()[0], delay)
            self._store.drop()
            return False
        except (ValueError, TypeError) as exc:
            # Valid records the table cannot hold (a field beyond a column's range): kept as dead letters
            # rather than retried forever.
            for rec in self.records:
                self.dead_letter(TABLE, orjson.dumps(rec), exc)
            self.refused += len(self.records)
            log.error("call signalling records refused by the table (%s): dead letters", exc)
            self.records = []
            return True
        self._failures = 0
        self.stored += len(self.records)
        self.rows += n
        self.records = []
        return True

    def prune(self, force: bool = False) -> list[str]:
        """Drop the days beyond the retention, at most once per PRUNE_INTERVAL_S (or now with ``force``)."""
        now = self.clock()
        if not force and now < self._next_prune:
            return []
        self._next_prune = now + PRUNE_INTERVAL_S
        try:
            dropped = drop_expired(self._store.get(), utc_day(now), self.retention_days)
        except StoreError as exc:
            self._next_prune = now + 60.0
            log.warning("dropping old call signalling partitions failed (%s)", str(exc).splitlines()[0])
            self._store.drop()
            return []
        if dropped:
            log.info("call signalling: dropped the days %s (retention %d days)", ", ".join(dropped),
                     self.retention_days)
            self.pruned += dropped
        return dropped

    def close(self) -> None:
        self._store.drop()


class JournalSignallingFollower:
    """The embedded runner's reader of ``call-signalling.jsonl`` (see the module docstring)."""

    FLUSH_INTERVAL_S = 0.5
    MAX_HELD = 5000  # records held for a store that refuses them before reading pauses

    def __init__(self, journal: Path, checkpoint: Path, sink: SignallingSink) -> None:
        self.journal = journal
        self.checkpoint = checkpoint
        self.sink = sink
        self.offset = 0
        try:
            self.offset = int(json.loads(checkpoint.read_text())["offset"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s): reading the records from the start (stored ones fold)",
                      checkpoint, exc)
        self.read_offset = self.offset
        self._last = 0.0

    def step(self, force: bool = False, max_records: int = 2000) -> int:
        """Read, store and commit what is new (every FLUSH_INTERVAL_S, or now with ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.FLUSH_INTERVAL_S:
            return 0
        self._last = now
        n = 0
        if self.sink.pending() < self.MAX_HELD:
            for pos, raw in read_journal(self.journal, self.read_offset):
                self.sink.add(raw, str(self.journal))
                self.read_offset = pos
                n += 1
                if n >= max_records:
                    break
        if self.read_offset != self.offset and self.sink.flush():
            self.offset = self.read_offset
            save_json_atomic(self.checkpoint, {"offset": self.offset})
        self.sink.prune()
        return n


class KafkaSignallingFollower:
    """The faust worker's consumer of the call-signalling topic, in a thread (see the module docstring)."""

    def __init__(self, bootstrap: str, topic: str, group: str, sink: SignallingSink,
                 dead_letter_topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.sink = sink
        self.dead_letter_topic = dead_letter_topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signalling-ingest", daemon=True)
        self.error: BaseException | None = None
        self.committed = 0

    def start(self) -> KafkaSignallingFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        from kafka import KafkaConsumer

        backoff = 0.5
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(
                    self.topic, bootstrap_servers=self.bootstrap, group_id=self.group,
                    enable_auto_commit=False, auto_offset_reset="earliest", client_id="sipledger-signalling",
                    max_poll_records=500, request_timeout_ms=15_000, session_timeout_ms=10_000,
                    heartbeat_interval_ms=3000, api_version=(2, 8))
            except Exception as exc:
                log.warning("call signalling: Kafka at %s unreachable (%s); retrying", self.bootstrap, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            try:
                self._consume(consumer)
            except Exception as exc:  # a broker outage in the middle: start over from the committed offsets
                self.error = exc
                log.warning("call signalling: consuming %s failed (%s); starting over", self.topic, exc)
                self._stop.wait(1.0)
            finally:
                try:
                    consumer.close(autocommit=False)
                except Exception:
                    log.debug("closing the signalling consumer failed", exc_info=True)
        self.sink.close()

    def _consume(self, consumer: Any) -> None:
        while not self._stop.is_set():
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.value is not None:
                        self.sink.add(r.value, f"{self.topic}/{r.partition}@{r.offset}")
            while not self.sink.flush():
                if self._stop.wait(0.2):
                    return  # not stored: not committed, the next owner re-reads them
            if batch:
                consumer.commit()
                self.committed += sum(len(v) for v in batch.values())
            self.sink.prune()

    def dead_letter(self, source: str, raw: bytes, error: Exception) -> None:
        """Publish a refused record to the dead-letter topic (from the follower's thread)."""
        from pipeline.dead_letter import dead_letter_record

        producer = getattr(self, "_producer", None)
        if producer is None:
            from kafka import KafkaProducer

            producer = self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                                      client_id="sipledger-signalling-dl", api_version=(2, 8))
        producer.send(self.dead_letter_topic, value=orjson.dumps(dead_letter_record(source, raw, error)))
        producer.flush(timeout=10)


def start_kafka_follower(cfg: Any, app_id: str) -> KafkaSignallingFollower | None:
    """The faust worker's follower, or None (with a warning) when the store cannot be shared: a chDB store
    is held by the worker's store writer process."""
    if cfg.store.url.startswith("chdb:"):
        log.warning("call signalling records are not stored: a chdb:// store is held by the worker's store "
                    "writer (use a ClickHouse server in Kafka mode)")
        return None
    from sipledger.store import open_store

    holder: list[KafkaSignallingFollower] = []
    sink = SignallingSink(lambda: open_store(cfg.store.url, str(cfg.base_dir)), cfg.trace.retention_days,
                          lambda source, raw, err: holder[0].dead_letter(source, raw, err))
    follower = KafkaSignallingFollower(cfg.kafka.bootstrap, cfg.kafka.topic_signalling,
                                       f"{app_id}-signalling", sink, cfg.kafka.topic_dead_letter)
    holder.append(follower)
    return follower.start()
