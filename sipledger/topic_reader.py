"""Reading a Kafka topic from its beginning up to the end offsets it has when reading starts.

For readers that want "everything there is now" and then to stop: ``sipledger calls`` (the workers'
call-state changelog), ``sipledger replay --from kafka`` (one stream per partition, merged by event
time), a faust worker restoring the call states of the partitions it was just assigned
(pipeline/changelog_restore.py) and the tests. No consumer group: nothing is committed, and no worker's
group is disturbed.

Done by position, not by counting records: a compacted topic, or one with transaction markers, has
offsets with no record. A broker that stops serving before the end is an error after
``STALL_TIMEOUT_S`` (every blocking call is bounded by it) instead of a reader that waits forever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

# A CLI should say quickly that the broker is not there (kafka-python waits 30 s by default).
BOOTSTRAP_TIMEOUT_MS = 5000
# Reading stops with an error when the broker hands out nothing for this long before the end offsets.
STALL_TIMEOUT_S = 20.0
POSITION_WAIT_MS = 100


class TopicReadError(RuntimeError):
    """The topic could not be read to its end; the message says why, in one line."""


class NoSuchTopic(TopicReadError):
    pass


class TopicReader:
    """One kafka-python consumer (no group) for end offsets and reads up to them; a context manager."""

    def __init__(self, bootstrap: str, stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.bootstrap = bootstrap
        self.stall_timeout_s = stall_timeout_s
        # Requests must time out before a read is declared stalled, or a stalled broker would block
        # inside kafka-python instead of in this module's loop.
        request_ms = max(1000, int(stall_timeout_s * 1000))
        try:
            # Committed records only: a worker's state and balance records are written in transactions
            # (pipeline/state_writer.py), and an aborted one is what a fenced worker tried to write.
            self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                          enable_auto_commit=False, isolation_level="read_committed",
                                          bootstrap_timeout_ms=min(BOOTSTRAP_TIMEOUT_MS, request_ms),
                                          request_timeout_ms=request_ms + 600, fetch_max_wait_ms=500,
                                          max_poll_records=5000)
        except KafkaError:
            raise TopicReadError(f"Kafka at {bootstrap} is unreachable") from None
        # A new connection to a broker that accepts TCP but answers nothing (a hung broker) is given up
        # after socket_connection_setup_timeout_ms, 10 s by default, which KafkaConsumer does not expose:
        # bound it like every other request here.
        with contextlib.suppress(AttributeError, KeyError, TypeError):
            self.consumer._client._manager.config["socket_connection_setup_timeout_ms"] = request_ms

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.consumer.close()

    def end_offsets(self, topic: str, partitions: Collection[int] | None = None) -> dict[int, int]:
        """Partition -> end offset (the offset the next record will get) of ``topic``'s partitions
        (all, or those in ``partitions``)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        try:
            parts = sorted(self.consumer.partitions_for_topic(topic) or ())
            if not parts:
                raise NoSuchTopic(f"no topic {topic!r} on Kafka at {self.bootstrap}")
            if partitions is not None:
                missing = set(partitions) - set(parts)
                if missing:
                    raise NoSuchTopic(f"topic {topic!r} on Kafka at {self.bootstrap} has no partition "
                                      f"{sorted(missing)} (it has {len(parts)})")
                parts = sorted(partitions)
            ends = self.consumer.end_offsets([TopicPartition(topic, p) for p in parts],
                                             timeout_ms=int(self.stall_timeout_s * 1000))
            return {tp.partition: end for tp, end in ends.items()}
        except KafkaError as exc:
            raise TopicReadError(f"reading {topic!r} from Kafka at {self.bootstrap} failed: {exc}") from None

    def read(self, topic: str, ends: Mapping[int, int]) -> Iterator[Any]:
        """kafka-python records of ``topic``'s partitions in ``ends`` below those end offsets; each
        partition in log order."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        consumer = self.consumer
        todo = {TopicPartition(topic, p): end for p, end in ends.items() if end > 0}
        if not todo:
            return
        try:
            consumer.assign(list(todo))
            consumer.seek_to_beginning(*todo)
            stalled_at = time.monotonic() + self.stall_timeout_s
            while True:
                for tp, end in list(todo.items()):
                    # A position not known yet (its ListOffsets still under way) is asked again next
                    # round: waiting here per partition would delay the stall check by as much each.
                    position = consumer.position(tp, timeout_ms=POSITION_WAIT_MS)
                    if position is not None and position >= end:
                        del todo[tp]
                        consumer.pause(tp)
                if not todo:
                    return
                fetched = consumer.poll(timeout_ms=500)
                if fetched:
                    stalled_at = time.monotonic() + self.stall_timeout_s
                elif time.monotonic() > stalled_at:
                    raise TopicReadError(f"Kafka at {self.bootstrap} stopped serving {topic!r} before its "
                                         f"end (nothing received for {self.stall_timeout_s:g} s)")
                for tp, records in fetched.items():
                    end = todo.get(tp, 0)
                    for rec in records:
                        if rec.offset < end:
                            yield rec
        except KafkaError as exc:
            raise TopicReadError(f"reading {topic!r} from Kafka at {self.bootstrap} failed: {exc}") from None


def latest_by_key(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[bytes, bytes]:
    """What a compacted topic means: the last value of every key, a null value (tombstone) deleting
    the key. Records without a key are skipped."""
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    return latest


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get) of every partition of ``topic``."""
    with TopicReader(bootstrap) as reader:
        return reader.end_offsets(topic)


def read_to_end(bootstrap: str, topic: str, ends: Mapping[int, int] | None = None,
                stall_timeout_s: float = STALL_TIMEOUT_S) -> Iterator[Any]:
    """kafka-python records of ``topic``'s partitions in ``ends`` (default: all, at their current end)
    below those end offsets; each partition in log order."""
    with TopicReader(bootstrap, stall_timeout_s) as reader:
        yield from reader.read(topic, reader.end_offsets(topic) if ends is None else ends)
