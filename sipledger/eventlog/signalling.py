"""Where a B2BUA's call signalling records go: the journal beside the events, or the call-signalling topic.

The same two sinks as the events (``publisher.py``), opened from the same ``events.log`` URL, but never
the same file, spool or topic: a record is bulky and optional, an event is neither, so nothing a record
does (its size, a broker outage, a full disk spool) can hold an event back.

* ``file://``: ``call-signalling.jsonl`` beside the events journal (``layout.EmbeddedPaths``), flushed with
  the events; the embedded pipeline follows it.
* ``kafka://``: a ``SpooledKafkaPublisher`` of its own (its own spool folder ``<events.spool_dir>/signalling``
  and delivery thread) on ``kafka.topic_signalling``, keyed by call id. While the broker is away records
  are spooled up to ``trace.spool_max_bytes``; beyond, new ones are dropped and counted (losing a trace is
  acceptable, growing the disk without bound is not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sipledger.config import Config

from .journal import FileJournal


class BoundedSignallingPublisher:
    """A spooled Kafka publisher that drops records while its spool holds more than ``max_bytes``."""

    CHECK_EVERY = 16  # records between two looks at the spool's size (a stat per segment file)

    def __init__(self, inner: Any, max_bytes: int) -> None:
        self.inner = inner
        self.spool = inner.spool
        self.max_bytes = max_bytes
        self.dropped = 0
        self.published = 0
        self._full = False
        self._since_check = 0

    def publish(self, record: dict[str, Any], broadcast: bool = False) -> None:
        self._since_check += 1
        if self._full or self._since_check >= self.CHECK_EVERY:
            self._since_check = 0
            self._full = self.spool.pending_bytes() >= self.max_bytes
        if self._full:
            self.dropped += 1
            return
        self.inner.publish(record)
        self.published += 1

    def flush(self) -> Any:
        return None  # delivery is the inner publisher's thread's; nobody waits for records

    def close(self, timeout: float = 1.0) -> None:
        self.inner.close(timeout)


class JournalSignallingPublisher:
    """The embedded journal of records, with the same counters as the Kafka side."""

    def __init__(self, path: Path) -> None:
        self.journal = FileJournal(path)
        self.dropped = 0
        self.published = 0

    def publish(self, record: dict[str, Any], broadcast: bool = False) -> None:
        self.journal.publish(record)
        self.published += 1

    def flush(self) -> None:
        self.journal.flush()

    def close(self, timeout: float = 1.0) -> None:
        self.journal.close()


SignallingPublisher = BoundedSignallingPublisher | JournalSignallingPublisher


def open_signalling_publisher(cfg: Config) -> SignallingPublisher:
    """The sink of ``cfg``'s records (see the module docstring); ValueError for an unknown log URL."""
    url = urlparse(cfg.events.log)
    if url.scheme == "file":
        from .layout import EmbeddedPaths

        return JournalSignallingPublisher(EmbeddedPaths.from_config(cfg).signalling)
    if url.scheme == "kafka":
        from .kafka_publisher import SpooledKafkaPublisher

        spool = cfg.path(cfg.events.spool_dir) / "signalling"
        inner = SpooledKafkaPublisher(url.netloc or cfg.kafka.bootstrap, cfg.kafka.topic_signalling,
                                      str(spool), batch=100, client_id="sipledger-signalling")
        return BoundedSignallingPublisher(inner, cfg.trace.spool_max_bytes)
    raise ValueError(f"events.log must be file:///path or kafka://host:port, not {cfg.events.log!r}")
