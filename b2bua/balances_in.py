"""Where a node's view of prepaid balances comes from: the pipeline's account.balance records.

They reach the node the way commands do (``commands_in.py``), but a node needs the current balance of
every prepaid account from its first call on, not only what is published after it starts:

* embedded: the pipeline appends records to ``balances.jsonl`` beside the commands journal and, at each
  checkpoint, writes ``balances.json``: the latest record of every account and the journal offset it is
  current to. A starting node reads that snapshot, then follows the journal from that offset;
* Kafka: the pipeline's workers publish to the compacted topic ``kafka.topic_balances`` (one partition,
  keyed by account and events partition), which a node reads from its beginning (the latest record of
  each key) and then follows. Until that first read reached the end offsets, prepaid calls are refused
  with 503 (``CreditBook.ready``) rather than priced on a balance of 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from b2bua.commands_in import FileCommandFollower, KafkaFollowerThread

log = logging.getLogger("sipledger.b2bua.balances")

OnRecord = Callable[[dict[str, Any]], None]


def read_snapshot(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """(journal offset, records) of the embedded pipeline's balances snapshot; (0, []) without one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0, []
    except ValueError:
        log.warning("%s is not valid JSON; reading the balances journal from its start", path)
        return 0, []
    records = data.get("records", [])
    return int(data.get("offset", 0)), [r for r in records if isinstance(r, dict)]


class FileBalanceFollower(FileCommandFollower):
    """The snapshot, then ``balances.jsonl`` from the snapshot's offset (polled like the commands)."""

    def __init__(self, journal: Path, snapshot: Path, on_record: OnRecord,
                 poll_interval: float = 0.2) -> None:
        super().__init__(journal, on_record, poll_interval)
        offset, records = read_snapshot(snapshot)
        try:
            size = journal.stat().st_size
        except FileNotFoundError:
            size = 0
        # A journal shorter than the snapshot says was replaced: read the new one from its start.
        self.offset = offset if offset <= size else 0
        for rec in records:
            on_record(rec)
        self.poll()  # what was published after the snapshot, before the node takes its first call


class KafkaBalanceFollower(KafkaFollowerThread):
    """A thread reading the balances topic from its beginning, then following it (no consumer group)."""

    what = "balances"
    log = log

    def __init__(self, bootstrap: str, topic: str, on_record: OnRecord, on_ready: Callable[[], None],
                 ready_timeout: float = 10.0) -> None:
        super().__init__(bootstrap, topic)
        self.on_record, self.on_ready = on_record, on_ready
        self.ready_timeout = ready_timeout
        self._ready = threading.Event()
        self._ends: dict[Any, int] = {}

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(self.ready_timeout if timeout is None else timeout)

    def _open(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        # Committed records only: the workers write balance records in transactions, and an aborted one is
        # what a worker that lost its partition tried to write (pipeline/state_writer.py).
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                 bootstrap_timeout_ms=2000, isolation_level="read_committed")
        try:
            parts = [TopicPartition(self.topic, p)
                     for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
            if not parts:
                raise RuntimeError(f"no topic {self.topic!r}")
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            self._ends = consumer.end_offsets(parts)
        except Exception:
            with contextlib.suppress(Exception):
                consumer.close()
            raise
        return consumer

    def _poll(self, consumer: Any) -> None:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                try:
                    value = json.loads(record.value)
                except (TypeError, ValueError):
                    continue
                if isinstance(value, dict):
                    self._hand(self.on_record, value)
        if not self._ready.is_set() and all(consumer.position(tp) >= end for tp, end in self._ends.items()):
            self._ready.set()
            self._hand(self.on_ready)
