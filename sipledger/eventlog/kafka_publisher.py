"""Kafka publisher that never blocks the caller and never loses an event.

``publish`` appends to the disk spool and returns; a delivery thread sends the
spool to Kafka in order (acks=all, key = call id, one request in flight so order
within a partition holds) and advances the spool's checkpoint only after the
broker acknowledged the batch. While the broker is unreachable the spool grows;
when it returns, delivery resumes where it stopped. A failed batch is re-sent
from its start, so a consumer may see an event twice (the pipeline drops
duplicate event_ids) but never out of order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

from .spool import DiskSpool

log = logging.getLogger("sipledger.kafka")


class SpooledKafkaPublisher:
    def __init__(self, bootstrap: str, topic: str, spool_dir: str, batch: int = 1000,
                 client_id: str = "sipledger") -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.spool = DiskSpool(spool_dir)
        self._batch = batch
        self._client_id = client_id
        self._producer: Any = None
        self._partitions: list[int] | None = None
        self._stop = threading.Event()
        self.delivered = 0
        self.failures = 0
        self.connected = False
        self._thread = threading.Thread(target=self._run, name="kafka-delivery", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------------
    def publish(self, event: dict[str, Any], broadcast: bool = False) -> None:
        """Queue one event durably. ``broadcast`` sends it to every partition (node heartbeats)."""
        self.spool.append({"k": event["call_id"], "v": event, "b": broadcast} if broadcast
                          else {"k": event["call_id"], "v": event})

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the spool is delivered; False if it was not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.spool.pending() == 0:
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is spooled for up to ``timeout`` s, then stop. Bounded whatever the broker does:
        what is left stays in the spool on disk and the next start delivers it, in order."""
        deadline = time.monotonic() + timeout
        if self.connected:  # an unreachable broker would only use the time up
            self.flush(max(0.0, timeout - 0.5))
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._thread.is_alive():
            # Still inside kafka-python with a broker that does not answer (a flush or a connect): fail
            # what the producer holds so that the thread returns - its batch was not committed in the
            # spool, so the next start sends it again (a duplicate the pipeline drops, never a loss).
            producer = self._producer
            if producer is not None:
                with contextlib.suppress(Exception):
                    abandon_producer(producer, join_timeout=0.5)
            self._thread.join(0.5)
        if not self._thread.is_alive():
            self._drop_producer()
        self.spool.close()

    # -- delivery thread -----------------------------------------------------------------------
    def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self._client_id, acks="all",
            linger_ms=5, max_in_flight_requests_per_connection=1, retries=3,
            request_timeout_ms=5000, max_block_ms=5000, api_version=(2, 8),
            # A broker that is down is found out within seconds (kafka-python waits 30 s by default),
            # so that the thread notices a stop request soon.
            bootstrap_timeout_ms=3000,
        )
        self._partitions = None
        return self._producer

    def _drop_producer(self) -> None:
        if self._producer is not None:
            try:
                # Drop what is buffered: the batch is re-sent from the spool, in order.
                abandon_producer(self._producer)
            except Exception:
                log.debug("closing producer failed", exc_info=True)
            self._producer = None
        self.connected = False

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            records, position = self.spool.peek(self._batch, wait=0.2)
            if not records:
                continue
            try:
                producer = self._ensure_producer()
                if self._partitions is None:
                    parts = producer.partitions_for(self.topic)
                    self._partitions = sorted(parts) if parts else [0]
                futures = []
                for rec in records:
                    # Encoded here rather than by producer serializers (kafka-python 3 deprecates callables).
                    key, value = rec["k"].encode(), json.dumps(rec["v"], separators=(",", ":")).encode()
                    if rec.get("b"):
                        futures += [producer.send(self.topic, key=key, value=value, partition=p)
                                    for p in self._partitions]
                    else:
                        futures.append(producer.send(self.topic, key=key, value=value))
                producer.flush(timeout=10)
                for fut in futures:
                    fut.get(timeout=0)
            except Exception as exc:
                self.failures += 1
                if self.connected or self.failures == 1:
                    log.warning("Kafka at %s unreachable (%s); events stay spooled on disk",
                                self.bootstrap, exc)
                self._drop_producer()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.spool.commit(position)
            self.delivered += len(records)
            if not self.connected:
                log.info("Kafka at %s reachable; delivering spooled events", self.bootstrap)
            self.connected = True
            backoff = 0.2


def abandon_producer(producer: Any, join_timeout: float = 5.0) -> None:
    """Close a kafka-python producer at once, failing what it still holds instead of sending it.

    kafka-python 3 flushes inside ``close()`` and, when the flush times out (a broker that does not
    answer), raises before its forced close: the producer's network thread then lives on with the
    records it held and delivers them whenever the broker is back, after the spool has re-sent them
    (duplicates, out of order), and every such drop leaks a thread and a socket. So on that timeout its
    sender is force-closed (kafka-python's own path for close(0): abort the incomplete batches), and
    then the close completes.
    """
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=0)
        return
    except KafkaTimeoutError:
        pass
    sender = producer._sender
    sender.force_close()
    sender.join(join_timeout)
    producer.close(timeout=0)
