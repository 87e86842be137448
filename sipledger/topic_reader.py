"""Reading a Kafka topic from its beginning up to the end offsets it has when reading starts.

For readers that want "everything there is now" and then to stop: ``sipledger calls`` (the workers'
call-state changelog), ``sipledger replay --from kafka`` (one stream per partition, merged by event
time) and the tests. No consumer group: nothing is committed, and no worker's group is disturbed.

Done by position, not by counting records: a compacted topic, or one with transaction markers, has
offsets with no record. A broker that stops serving before the end is an error after
``STALL_TIMEOUT_S`` instead of a reader that waits forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

# A CLI should say quickly that the broker is not there (kafka-python waits 30 s by default).
BOOTSTRAP_TIMEOUT_MS = 5000
# Reading stops with an error when the broker hands out nothing for this long before the end offsets.
STALL_TIMEOUT_S = 20.0


class TopicReadError(RuntimeError):
    """The topic could not be read to its end; the message says why, in one line."""


class NoSuchTopic(TopicReadError):
    pass


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, max_poll_records=5000)
    except KafkaError:
        raise TopicReadError(f"Kafka at {bootstrap} is unreachable") from None


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get) of every partition of ``topic``."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    consumer = _consumer(bootstrap)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            raise NoSuchTopic(f"no topic {topic!r} on Kafka at {bootstrap}")
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: end for tp, end in ends.items()}
    except KafkaError as exc:
        raise TopicReadError(f"reading {topic!r} from Kafka at {bootstrap} failed: {exc}") from None
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, ends: Mapping[int, int] | None = None,
                stall_timeout_s: float = STALL_TIMEOUT_S) -> Iterator[Any]:
    """kafka-python records of ``topic``'s partitions in ``ends`` (default: all, at their current end)
    below those end offsets; each partition in log order."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    if ends is None:
        ends = end_offsets(bootstrap, topic)
    todo = {TopicPartition(topic, p): end for p, end in ends.items() if end > 0}
    if not todo:
        return
    consumer = _consumer(bootstrap)
    try:
        consumer.assign(list(todo))
        consumer.seek_to_beginning(*todo)
        stalled_at = time.monotonic() + stall_timeout_s
        while True:
            for tp in [tp for tp, end in todo.items() if consumer.position(tp) >= end]:
                del todo[tp]
                consumer.pause(tp)
            if not todo:
                return
            fetched = consumer.poll(timeout_ms=500)
            if fetched:
                stalled_at = time.monotonic() + stall_timeout_s
            elif time.monotonic() > stalled_at:
                raise TopicReadError(f"Kafka at {bootstrap} stopped serving {topic!r} before its end")
            for tp, records in fetched.items():
                end = todo.get(tp, 0)
                for rec in records:
                    if rec.offset < end:
                        yield rec
    except KafkaError as exc:
        raise TopicReadError(f"reading {topic!r} from Kafka at {bootstrap} failed: {exc}") from None
    finally:
        consumer.close()
