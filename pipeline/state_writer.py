"""Fenced state writes: each events partition's changelog and balance records go through a transactional
producer of that partition's own, so a worker that lost the partition cannot write them any more.

Why. A worker whose group session expired (the broker was away longer than ``pipeline.session_timeout``)
learns it only when the coordinator answers it again. Until then its deliveries in flight go on, and a
batch already handed to the producer is retried by aiokafka by itself. Such state records could land
after the partition's new owner restored it and wrote newer ones; the next restore then takes the older
record for the latest: a prepaid call open again after its CDR, its hold kept and its debit lost (the
prepaid fault drill caught it once in 14 runs). Checking membership before sending cannot close that gap;
the broker has to refuse the writes.

How. Kafka fences by transactional id: starting a producer with the id ``<app id>-state-<p>`` bumps the
id's epoch, aborts what an older holder left open, and makes the broker refuse whatever that holder sends
or commits later (``ProducerFenced``). The owner of a partition takes its id *before* reading the
changelog to restore (``fence``); every write of that partition's state is one transaction (``write``).
Whatever a fenced worker sent is then either committed before the restore read it, or aborted; readers
of the changelog and of the balances topic read committed records only (sipledger/topic_reader.py,
b2bua/balances_in.py).

Outputs that are idempotent by key (CDRs, alerts, commands, store rows) stay on the worker's plain
producer: a late copy from a fenced worker is the same record again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced
from aiokafka.producer.transaction_manager import TransactionState

log = logging.getLogger("sipledger.pipeline.faust")

# (topic, partition or None for the key's default partition, key, value or None for a tombstone)
Message = tuple[str, int | None, bytes | None, bytes | None]

# Bytes per produce batch: well under the broker's default message.max.bytes (1 MiB).
PRODUCE_BATCH_BYTES = 512 * 1024
# What the broker gives a transaction left open (a worker killed in the middle of one) before it aborts it
# by itself; a new owner's ``fence`` aborts it at once. Open transactions hold back read-committed readers
# of the balances topic, so not the client's default of 60 s.
TRANSACTION_TIMEOUT_MS = 20_000


class Fenced(Exception):
    """The delivery's partitions were handed over (or the worker is stopping): it must write no state."""


def transactional_id(app_id: str, partition: int) -> str:
    return f"{app_id}-state-{partition}"


async def send_batched(producer: AIOKafkaProducer, messages: list[Message]) -> None:
    """Send ``messages`` and wait until the broker acknowledged all of them.

    One produce batch per topic-partition instead of one send() coroutine and future per message: the
    per-message cost of AIOKafkaProducer.send is several times the encoding. Keyed messages without a
    partition get the producer's default (murmur2) partitioner, as send() would.
    """
    groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
    for topic in {m[0] for m in messages}:
        await producer.client._wait_on_metadata(topic)
    partition_of = producer._partition
    for topic, partition, key, value in messages:
        if partition is None:
            partition = partition_of(topic, None, key, value, key, value)
        groups.setdefault((topic, partition), []).append((key, value))
    futures = []
    for (topic, partition), kvs in groups.items():
        batch = producer.create_batch()
        for key, value in kvs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"message of {len(value or b'')} bytes does not fit a batch")
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)


class StateWriters:
    """The transactional producers of the partitions this worker owns (module docstring)."""

    def __init__(self, bootstrap: str, app_id: str) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._busy: dict[int, int] = {}  # id(producer) -> writes under way on it
        self._retiring: set[asyncio.Task[None]] = set()

    async def fence(self, partitions: Iterable[int]) -> None:
        """Take the partitions' transactional ids, fencing any older holder; let go of every id held before.

        Call before restoring the partitions: once this returns, nothing an earlier owner wrote can land
        after the restore's read. Raises what the broker answered if it could not complete (the caller
        retries, as it retries the restore)."""
        self.retire()
        wanted = sorted(set(partitions))
        started = await asyncio.gather(*(self._start(p) for p in wanted), return_exceptions=True)
        for p, r in zip(wanted, started, strict=True):
            if isinstance(r, AIOKafkaProducer):
                self._producers[p] = r
        failed = next((r for r in started if isinstance(r, BaseException)), None)
        if failed is not None:
            self.retire()
            raise failed

    async def _start(self, partition: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                    transactional_id=transactional_id(self.app_id, partition),
                                    transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, linger_ms=5,
                                    max_batch_size=PRODUCE_BATCH_BYTES,
                                    max_request_size=2 * PRODUCE_BATCH_BYTES,
                                    client_id=f"{self.app_id}-state-{partition}")
        try:
            await producer.start()  # InitProducerId: the fencing itself
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def write(self, partition: int, messages: list[Message]) -> None:
        """Write ``messages`` (the partition's state) as one transaction. Raises ``Fenced`` if this worker
        no longer holds the partition's id (another took it, or it was let go); after any other error
        nothing of them is committed, and the caller may try again."""
        producer = self._producers.get(partition)
        if producer is None or _fenced(producer):
            raise Fenced
        key = id(producer)
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            await _settle(producer)
            await producer.begin_transaction()
            await send_batched(producer, messages)
            await producer.commit_transaction()
        except Exception as exc:
            if _fenced(producer) or isinstance(exc, ProducerFenced):
                raise Fenced from None
            raise
        finally:
            left = self._busy.pop(key) - 1
            if left:
                self._busy[key] = left

    def retire(self) -> None:
        """Let go of every id held: each producer stops once the writes under way on it are over (stopping
        it earlier would leave them waiting for a transaction's end that never comes)."""
        producers, self._producers = list(self._producers.values()), {}
        for producer in producers:
            task = asyncio.ensure_future(self._stop_when_idle(producer))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _stop_when_idle(self, producer: AIOKafkaProducer) -> None:
        while self._busy.get(id(producer)):
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await producer.stop()
        _fenced(producer)  # a fencing that came after its last write is no error either

    async def close(self, timeout: float = 2.0) -> None:
        """Stop every producer (the worker is stopping), waiting at most ``timeout`` for writes under way."""
        self.retire()
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=timeout)


async def _settle(producer: Any) -> None:
    """Finish what an earlier write left (an error or a cancellation in the middle of a transaction):
    abort it, or wait for its commit or abort to complete, so that a new transaction can begin."""
    txn = producer._txn_manager
    if txn.state in (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR):
        await producer.abort_transaction()
    elif txn.state in (TransactionState.COMMITTING_TRANSACTION, TransactionState.ABORTING_TRANSACTION):
        await asyncio.shield(txn.wait_for_transaction_end())


def _fenced(producer: Any) -> bool:
    # aiokafka moves a transactional producer to its fatal state when the broker fenced it (or its sender
    # died); it cannot begin another transaction then, and only a new holder of the id can write.
    txn = producer._txn_manager
    if txn is None or not txn.is_fatal_error():
        return False
    # aiokafka also sets the fencing on futures no caller awaits (the transaction's, and each failed batch's
    # drain waiter); it is handled here (``Fenced``), so mark them seen, or asyncio logs "Future exception
    # was never retrieved" at ERROR for each when it is freed.
    acc = producer._message_accumulator
    batches = [b for queue in acc._batches.values() for b in queue] + list(acc._pending_batches)
    for fut in [txn._transaction_waiter, *(f for b in batches for f in (b.future, b._drain_waiter))]:
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()
    return True
