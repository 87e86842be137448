"""Kafka mode of the pipeline: a faust worker around the shared ``Processor``.

How to run it
-------------
* ``python3 -m pipeline.faust_app worker --config sipledger.toml [--set k=v ...] [-l warn]
  [--app-id sipledger-pipeline] [--ready-file PATH] [--batch-size 16000] [--no-store-events]``
* from Python / the CLI: ``pipeline.faust_app.run(cfg)`` (blocks until the worker stops; SIGTERM/SIGINT stop
  it). ``run(cfg, {"app_id": ..., "loglevel": ..., "batch_size": ..., "ready_file": ...,
  "store_events": False})`` overrides.
* Start workers with ``start_new_session=True`` and stop them with
  ``sipledger.stack.process.terminate_group(pid, grace)``: a faust worker can hang in aiokafka's consumer
  thread after SIGTERM, so every stop must be able to end in SIGKILL. A SIGKILL loses nothing (below).
* The events topic (``kafka.topic_events``) must exist before the worker starts; the worker creates its
  own changelog topic ``<app id>-call-state-changelog``.
* ``SIPLEDGER_FAUST_PROFILE=1`` logs (at error level, so ``-l error`` shows it) the time spent per stage
  every 10 s and when the worker is ready.

Design
------
* faust runs the consumer group (assignment, offsets, commits), the changelog-backed table and its
  recovery, and the timer. The events topic (raw bytes, keyed by call_id) is *not* read through a faust
  agent: faust's per-message path (``_drain_messages`` runs a ``wait_first`` - two tasks and an
  ``asyncio.wait`` - per message, then an Event, a queue put and an ack per message) cost ~125 us/event,
  several times the pipeline itself. ``BatchConsumer`` (faust's aiokafka consumer with its fetch loop
  replaced) hands every fetch of the events topic - partition -> aiokafka records, up to ``--batch-size``
  records - to ``KafkaPipeline.process_records`` in one call, and acks its offsets in faust's own
  bookkeeping only once that fetch's delivery (below) completed. The next fetch is already requested
  while one is handled. Every other topic (the changelog during recovery) still takes faust's
  per-message path.
* Every partition has its own ``Processor``: a call lives on one partition, and the B2BUA broadcasts
  node.heartbeat to every partition, so each processor sees every node. No rule lives here.
* State: a changelog-backed faust Table ``call-state`` (memory store; the changelog is the durable copy
  and is replayed on start). Its names and record format are pipeline/call_table.py: key = call_id,
  value = the call's state with positional fields; key ``~liveness/<p>`` holds the partition's node
  last-seen times. Changelog records are written by the worker's own producer in faust's json encoding,
  to partition ``p`` explicitly, and awaited, so a batch (or timer tick) knows its state is
  acknowledged. On partition assignment (table recovery done) the partition's Processor is restored
  from the table and its DeadlineQueue is rebuilt from the states: deadlines survive a restart.
* Order per batch (and per timer tick):
  1. under the lock, fold events (``Processor.feed_raw``: invalid ones become dead letters), take the
     outputs and encode the changelog records of every touched call (the state as of this batch);
     then start the delivery (steps 2-4) and return; the next batch folds meanwhile, with at most
     ``MAX_IN_FLIGHT`` deliveries in flight;
  2. publish commands / alerts / CDRs / dead letters with a separate aiokafka producer (one produce batch
     per partition) and meanwhile hand CDRs, alerts and the raw call events to the store writer process
     (pipeline/store_writer.py: a ``StoreSink`` on the second core); wait until the broker acknowledged
     every output and the writer reported every row stored (both retried);
  3. only then, and after the previous delivery completed, write the batch's changelog records and
     wait for the acks;
  4. complete; the consumer then acks the batch's offsets and faust commits acked offsets every
     ``broker_commit_interval`` (or every ``broker_commit_every`` acked messages). Deliveries complete
     in fold order, so offsets are acked in order.
  A batch runs in its own task, shielded from the fetcher's cancellation (faust cancels the fetcher on
  rebalance and shutdown): outputs taken from the processors are always delivered, unless the process is
  gone. A crash anywhere re-delivers the uncommitted events onto a state that is at most as new as the
  log: duplicates of applied events are ignored by the core, and anything re-emitted (same CDR content,
  deterministic alert/command ids) is folded by the store's ReplacingMergeTree + FINAL and deduped by
  nodes. Writing state before outputs would lose CDRs, so that order is the point of the design.
* A revocation waits for the batch being folded (the lock) and the deliveries in flight before faust
  hands the partitions over; a fetch that completed across a rebalance is dropped (the new assignment
  seeks to the committed offsets).
* Time: a 0.1 s timer calls ``Processor.tick`` with the wall clock, but only for partitions that have
  caught up with the log since assignment (processed up to the highwater seen then). A worker that was
  down must first read the backlog - which may hold the call.terminated - before calling anything a
  zombie or a node lost.
* Closed calls stay in memory and in the table until the consumer's committed offset has passed the
  batch that closed them (a re-delivery can then no longer reach them); then they are dropped and
  tombstoned, which keeps the changelog and recovery small. A call set up and closed within one batch
  is never written at all (no state record, no tombstone): a re-delivery of that batch starts before
  its call.setup and rebuilds it. When catching up a backlog that is most calls, about half the
  changelog records.
* Fetches wait at most ``FETCH_MAX_WAIT_MS`` on the broker (``ShortPollConsumerThread``).
* An unexpected exception ends the process at once (``os._exit``) instead of letting anything ack the
  batch on the way out: a restart re-delivers it.
* ``store_events=False`` (``--no-store-events``) skips the raw ``call_events`` inserts, the largest
  ClickHouse write; CDRs and alerts are always stored. Default on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from aiokafka import AIOKafkaProducer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode import ServiceT

from pipeline import call_table
from pipeline.call_table import DEFAULT_APP_ID, TABLE_NAME
from pipeline.dead_letter import dead_letter_record
from pipeline.domain import CallState
from pipeline.gc_policy import settle_after_startup
from pipeline.node_watch import NodeWatch
from pipeline.processor import Outputs, Processor, load_decks, policy_from_config
from pipeline.store_writer import StoreWriterProcess
from sipledger import config as config_mod
from sipledger.config import Config

log = logging.getLogger("sipledger.pipeline.faust")

DEFAULT_BATCH = 16_000  # records a fetch: per-batch costs (parts, produce requests) shared by more events
TICK_INTERVAL = 0.1
EVICT_INTERVAL = 2.0
PROFILE_EVERY = 10.0
# Deliveries (outputs, rows, state) of folded batches under way while the next batch folds.
MAX_IN_FLIGHT = 2
# The longest a fetch waits on the broker for new records (see ShortPollConsumerThread).
FETCH_MAX_WAIT_MS = 100
# Bytes per produce batch: well under the broker's default message.max.bytes (1 MiB).
PRODUCE_BATCH_BYTES = 512 * 1024

# aiokafka records of one fetch of one topic, by partition.
Records = Mapping[TP, Sequence[Any]]
# Returns once the fetch is folded, with a future that completes once its outputs, rows and state are
# acknowledged (the consumer acks its offsets then).
BatchHandler = Callable[[Records], Awaitable["asyncio.Future[None]"]]
# (topic, partition or None for the key's default partition, key, value or None for a tombstone)
Message = tuple[str, int | None, bytes | None, bytes | None]


def _dumps(obj: Any) -> bytes:
    # orjson: the same compact JSON as json.dumps(separators=(",", ":")) at a fraction of the cost.
    return orjson.dumps(obj, default=str)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _profiling() -> bool:
    return bool(os.environ.get("SIPLEDGER_FAUST_PROFILE"))


class ShortPollConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, with the broker's long poll cut to ``FETCH_MAX_WAIT_MS``.

    aiokafka keeps one fetch in flight per broker, and faust asks the broker to hold a fetch up to
    1,500 ms while none of its partitions has new data. A partition whose buffered records run out while
    such a fetch is parked waits for it: measured in the catch-up benchmark as stalls of 0.5-0.8 s (a
    tenth of the run) with records waiting on the broker, and in live running it is up to 1.5 s more
    between an event and the rule it triggers. Capping the wait bounds that; the price is an empty
    fetch a partition every FETCH_MAX_WAIT_MS while idle.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes 1500 to the constructor and has no setting for it; the Fetcher, created in
        # start(), reads this attribute.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, except that fetched records of a batch topic go to one handler call.

    Replaces ``Consumer._drain_messages`` (the fetcher's loop). For a topic in ``batch_handlers`` the
    loop keeps faust's read-offset filter and gap bookkeeping, calls the handler once per fetch and then
    acks every offset in faust's ``_acked`` structures, exactly what per-message ``Message.ack`` would
    have left behind, so faust's commit logic (contiguous acked offsets, gaps, commit interval) is
    unchanged. The handler returns a future that completes when the fetch's outputs, rows and state are
    acknowledged; only then are its offsets acked, and not at all if the consumer generation changed
    meanwhile (a rebalance: the new owner re-reads them). The next fetch is read meanwhile.
    """

    batch_handlers: dict[str, BatchHandler]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers = {}
        self.fetch_wait = 0.0  # seconds spent waiting for the next fetch (profiling)

    def _new_consumer_thread(self) -> ShortPollConsumerThread:
        return ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - needs a broker
        callback = self.callback
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = cast(Any, fetcher)._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        # The next fetch, started before the current one is handled: the consumer thread reads and
        # unpacks it while this loop folds, instead of this loop idling for it afterwards.
        prefetch: asyncio.Future[Any] | None = None
        prefetch_generation = -1
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                t_fetch = time.perf_counter()
                if prefetch is None:
                    prefetch_generation = self.app.consumer_generation_id
                    prefetch = asyncio.ensure_future(self._wait_next_records(1.0))
                records, active = await prefetch
                prefetch = None
                self.fetch_wait += time.perf_counter() - t_fetch
                # As faust does: never loop without giving the event loop a turn.
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    with contextlib.suppress(Exception):
                        await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                if generation != prefetch_generation:
                    # Fetched before a rebalance: its partitions may be someone else's now. The new
                    # assignment seeks every partition to its committed offset, so dropping is safe.
                    continue
                prefetch_generation = generation
                prefetch = asyncio.ensure_future(self._wait_next_records(1.0))
                batches: dict[str, dict[TP, list[Any]]] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    if tp.topic not in self.batch_handlers:
                        await self._deliver_each(tp, recs, callback)
                        continue
                    r_offset = read_offset[tp]
                    if r_offset is None or recs[0].offset >= r_offset:
                        fresh = recs  # the usual case: nothing re-read
                    else:
                        fresh = [r for r in recs if r.offset >= r_offset]
                    if not fresh:
                        continue
                    first, last = fresh[0].offset, fresh[-1].offset
                    contiguous = last - first == len(fresh) - 1 and not (r_offset and first - r_offset > 1)
                    if not contiguous and acks_enabled_for(tp.topic):
                        # Offsets missing from the log (compaction, transaction markers) must be known to
                        # faust as gaps, or the committed offset never passes them.
                        prev = r_offset
                        for r in fresh:
                            if prev and r.offset - prev > 1:
                                await self._add_gap(tp, prev + 1, r.offset)
                            prev = r.offset
                    batches.setdefault(tp.topic, {})[tp] = fresh
                for topic, batch in batches.items():
                    delivered = await self.batch_handlers[topic](batch)
                    for tp, recs in batch.items():
                        read_offset[tp] = recs[-1].offset
                    if acks_enabled_for(topic):
                        self._ack_when_delivered(delivered, batch, generation)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            if prefetch is not None:
                prefetch.cancel()
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver_each(self, tp: TP, recs: Sequence[Any], callback: Any) -> None:
        """faust's own per-message path (tables' changelogs during recovery, any other topic)."""
        read_offset = self._read_offset
        for rec in recs:
            offset = rec.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                if r_offset and offset - r_offset > 1 and self.app.topics.acks_enabled_for(tp.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                await self.wait_first(callback(self._to_message(tp, rec)), self.suspend_flow.wait())
                read_offset[tp] = offset

    def _ack_when_delivered(self, delivered: asyncio.Future[None], batch: Records, generation: int) -> None:
        # Offsets of a batch are acked once its outputs, rows and state are acknowledged, and not at all
        # after a rebalance (the new owner re-reads them) or a failure (the process is exiting).
        def done(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None and \
                    self.app.consumer_generation_id == generation:
                self._ack_records(batch)

        delivered.add_done_callback(done)

    def _ack_records(self, batch: Records) -> None:
        # What Consumer.ack does for each message, for a whole fetch at once.
        with ack_lock:
            for tp, recs in batch.items():
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                new = [r.offset for r in recs
                       if (committed is None or r.offset >= committed) and r.offset not in index]
                index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class PipelineApp(faust.App):
    """A faust App whose consumer is a ``BatchConsumer``."""

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


@dataclass(slots=True)
class PartitionRuntime:
    """What a worker holds for one assigned partition of the events topic."""

    processor: Processor
    last_offset: int = -1
    target: int | None = None  # highwater when assigned; caught up once processed up to it
    caught_up: bool = False
    # (offset of the batch that closed it, or None for "closed before this assignment", call_id)
    closed: deque[tuple[int | None, str]] = field(default_factory=deque)
    closed_ids: set[str] = field(default_factory=set)
    live_written: dict[str, Any] = field(default_factory=dict)


class KafkaPipeline:
    """The worker's state and I/O; faust calls ``on_recover``, ``process_records`` and ``on_timer``."""

    def __init__(self, cfg: Config, app: faust.App, table: faust.Table, store_events: bool = True,
                 ready_file: str | None = None) -> None:
        self.cfg = cfg
        self.app = app
        self.table = table
        self.topic = cfg.kafka.topic_events
        self.changelog_topic = table.changelog_topic.get_topic_name()
        self.policy = policy_from_config(cfg)
        self.sell, self.buy = load_decks(cfg)
        self.bill_modes = {a.name: a.bill_mode for a in cfg.accounts}
        self.runtimes: dict[int, PartitionRuntime] = {}
        # One lock: the batches and the timer both mutate processors and share the writer and producer.
        self.lock = asyncio.Lock()
        self.store_events = store_events
        self.writer = StoreWriterProcess(cfg.store.url, str(cfg.base_dir), cfg.pipeline.batch_size,
                                         store_events=store_events)
        self.writer.start()  # now, not in the first batch: its start-up is not the batch's work
        self.producer: AIOKafkaProducer | None = None
        self.ready_file = ready_file
        self._ready_written = False
        self._last_evict = 0.0
        self._assigned_at: float | None = None
        self._cpu_at_assign: float | None = None
        self._writer_cpu_at_assign: float | None = None
        self.stats = {"events": 0, "cdrs": 0, "alerts": 0, "commands": 0, "dead_letters": 0, "batches": 0}
        self.profile = _profiling()
        # fold: decode..encode state; wait: for the previous delivery; outputs+store and state: inside the
        # deliveries (overlapping the next fold); between: outside the handler (fetching).
        self.prof: dict[str, float] = {"fold": 0.0, "wait": 0.0, "outputs+store": 0.0, "state": 0.0,
                                       "between": 0.0}
        # Deliveries in flight, oldest first; they complete in this order, so the last one is the
        # one to wait for.
        self._flights: deque[asyncio.Future[None]] = deque()
        self._copartitioned_topics: set[str] | None = None
        self._prof_last = time.monotonic()
        self._t_out: float | None = None
        p = cfg.pipeline
        self.watch = NodeWatch(p.node_timeout, f"{app.conf.id}@{socket.gethostname()}:{os.getpid()}",
                               p.probe_attempts, p.probe_timeout, takeover=p.takeover)

    # -- resources ----------------------------------------------------------------------------------
    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap, acks="all",
                                        linger_ms=5, max_batch_size=PRODUCE_BATCH_BYTES,
                                        max_request_size=2 * PRODUCE_BATCH_BYTES,
                                        client_id=f"{self.app.conf.id}-outputs")
            await producer.start()
            self.producer = producer
        return self.producer

    async def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None

    def _new_processor(self) -> Processor:
        return Processor(self.policy, self.sell, self.buy, self.bill_modes)

    # -- assignment ---------------------------------------------------------------------------------
    async def on_recover(self) -> None:
        """Table recovery finished: (re)build the processors of newly assigned partitions."""
        assigned = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.topic}
        if self._assigned_at is None:
            settle_after_startup()  # faust is up and the tables recovered: the rest is per-event churn
            self._assigned_at = time.time()
            self._cpu_at_assign = time.process_time()
            self._writer_cpu_at_assign = self.writer.cpu_seconds()
        async with self.lock:
            for p in list(self.runtimes):
                if p not in assigned:
                    del self.runtimes[p]  # revoked: another worker owns its calls and deadlines now
            new = sorted(assigned - set(self.runtimes))
            if new:
                self._restore(new)
        log.info("assigned partitions %s of %s (restored %s)", sorted(assigned), self.topic, new)

    async def on_revoked(self) -> None:
        # Let the batch in flight finish (outputs, store, state) before faust hands partitions over.
        async with self.lock:
            await self._drain()

    def _restore(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        states: dict[int, dict[str, CallState]] = {p: {} for p in wanted}
        live: dict[int, dict[str, Any]] = {p: {} for p in wanted}
        closed: dict[int, list[bytes]] = {p: [] for p in wanted}
        for value in self.table.data.values():
            if not isinstance(value, dict) or value.get("p") not in wanted:
                continue
            p = value["p"]
            if call_table.is_state(value):
                st = call_table.state_of(value)
                states[p][st.call_id] = st
            elif call_table.is_closed(value):
                closed[p].append(call_table.closed_records(value))
            elif "live" in value or "clocks" in value:
                live[p] = value
        for p in wanted:
            proc = self._new_processor()
            rec = live[p]
            proc.restore({"states": states[p], "clocks": rec.get("clocks", rec.get("live", {})),
                          "heartbeats": rec.get("beats", {}), "addresses": rec.get("addresses", {})})
            for records in closed[p]:
                proc.closed.load(records)
            rt = PartitionRuntime(proc, live_written={k: v for k, v in live[p].items() if k != "p"})
            for cid, st in proc.states.items():
                if st.closed:
                    rt.closed.append((None, cid))
                    rt.closed_ids.add(cid)
            self.runtimes[p] = rt
            log.info("partition %d: %d calls restored, %d deadlines armed", p, len(proc.states),
                     len(proc.deadlines))

    def _runtime(self, p: int) -> PartitionRuntime:
        rt = self.runtimes.get(p)
        if rt is None:  # an event before on_recover ran for it: restore now rather than start empty
            self._restore([p])
            rt = self.runtimes[p]
        return rt

    async def _update_catch_up(self) -> None:
        pending = [p for p, rt in self.runtimes.items() if not rt.caught_up]
        if not pending:
            if not self._ready_written and self.ready_file and self.runtimes:
                await self._drain()  # caught up means delivered, not only folded
                cpu = time.process_time() - (self._cpu_at_assign or 0.0)
                Path(self.ready_file).write_text(json.dumps({
                    "partitions": sorted(self.runtimes), "assigned_at": self._assigned_at,
                    "ready_at": time.time(), "events": self.stats["events"], "cdrs": self.stats["cdrs"],
                    "batches": self.stats["batches"], "cpu_s": cpu,
                    "writer_cpu_s": _minus(self.writer.cpu_seconds(), self._writer_cpu_at_assign)}))
                self._ready_written = True
                self._log_profile(force=True)
            return
        recovery = self.app.tables.recovery
        if not recovery.completed.is_set():
            return  # offsets are seeked (and known) only once recovery completed
        need = [TP(self.topic, p) for p in pending if self.runtimes[p].target is None]
        if need:
            highwaters = await self.app.consumer.highwaters(*need)
            committed = self.app.consumer._committed_offset
            for tp, hw in highwaters.items():
                rt = self.runtimes.get(tp.partition)
                if rt is None:
                    continue
                rt.target = hw or 0
                start = committed.get(tp) or 0
                if start >= rt.target:
                    rt.caught_up = True
        for p in pending:
            rt = self.runtimes.get(p)
            if rt is not None and rt.target is not None and rt.last_offset + 1 >= rt.target:
                rt.caught_up = True
                log.info("partition %d caught up at offset %d", p, rt.last_offset)

    def _log_profile(self, force: bool = False) -> None:
        if not self.profile:
            return
        now = time.monotonic()
        if not force and now - self._prof_last < PROFILE_EVERY:
            return
        self._prof_last = now
        n = max(1, self.stats["events"])
        prof = dict(self.prof, fetch_wait=cast(BatchConsumer, self.app.consumer).fetch_wait,
                    **{f"writer_{k}": v for k, v in self.writer.timings.items()})
        parts = " ".join(f"{k}={v:.2f}s ({v / n * 1e6:.1f} us/ev)" for k, v in prof.items())
        log.error("PROF events=%d batches=%d %s", self.stats["events"], self.stats["batches"], parts)

    # -- input --------------------------------------------------------------------------------------
    async def process_records(self, batch: Records) -> asyncio.Future[None]:
        """One fetch of the events topic: fold it; returns the future of its delivery (see _chain)."""
        # Own task, shielded: faust cancels the fetcher on rebalance/shutdown, and a batch cancelled between
        # taking the processors' outputs and delivering them would lose them (a re-delivery is a duplicate
        # to the core and re-emits nothing). The fetcher, if cancelled, does not ack the batch.
        return await asyncio.shield(asyncio.ensure_future(self._guarded(self._process_records(batch))))

    @staticmethod
    async def _guarded(step: Awaitable[Any]) -> Any:
        try:
            return await step
        except Exception:
            # Returning would let the consumer ack (and faust commit) this batch. Die instead; the
            # restarted worker re-reads it from the last committed offset.
            log.critical("batch failed; exiting without committing it", exc_info=True)
            logging.shutdown()
            os._exit(70)

    async def _chain(self, work: list[tuple[int, Outputs]], state: list[Message],
                     raws: list[bytes]) -> asyncio.Future[None]:
        """Start delivering a folded batch (or tick); at most ``MAX_IN_FLIGHT`` deliveries are in flight.

        Call under the lock, with the outputs taken and the state records encoded at the end of the fold
        (``_state_messages``): the processors move on with the next batch meanwhile, and state written
        later than its own outputs would be newer than what is acknowledged. Outputs and rows of a
        delivery go out at once (the store writer keeps them in order); its state records wait for the
        previous delivery to complete, so changelog records of a call stay in order and deliveries
        complete - and offsets are acked - in fold order.
        """
        flights = self._flights
        while flights and flights[0].done():
            flights.popleft()
        if len(flights) >= MAX_IN_FLIGHT:
            await flights.popleft()  # completes only after every delivery before it
        previous = flights[-1] if flights else None
        delivered = asyncio.ensure_future(self._guarded(self._deliver(work, state, raws, previous)))
        flights.append(delivered)
        return delivered

    async def _drain(self) -> None:
        """Wait for the deliveries in flight (before a revocation, before declaring caught up); the last
        one completes only after the one before it."""
        if self._flights:
            await self._flights[-1]

    async def _process_records(self, batch: Records) -> asyncio.Future[None]:
        async with self.lock:
            t0 = time.perf_counter()
            if self._t_out is not None:
                self.prof["between"] += t0 - self._t_out
            touched: dict[int, set[str]] = {}
            beats: set[int] = set()
            raws: list[bytes] = []
            keep_raw = raws.append if self.store_events else None
            source = self.topic
            n = 0
            wall_ms = int(time.time() * 1000)
            for tp, recs in batch.items():
                p = tp.partition
                rt = self._runtime(p)
                feed = rt.processor.feed_raw
                ids = touched.setdefault(p, set())
                add_id = ids.add
                beat = False
                for rec in recs:
                    raw = rec.value
                    event = feed(raw, source)
                    if event is None:
                        continue
                    etype = event["type"]
                    if etype == "node.heartbeat":
                        beat = True
                        self.watch.heard(event, wall_ms)
                        continue
                    if etype == "node.lost":
                        continue
                    add_id(event["call_id"])
                    if keep_raw is not None:
                        keep_raw(raw)
                if beat:
                    beats.add(p)
                last = recs[-1].offset
                if last > rt.last_offset:
                    rt.last_offset = last
                n += len(recs)
            self.stats["events"] += n
            self.stats["batches"] += 1
            work = [(p, rt.processor.take()) for p, rt in self.runtimes.items()]
            state = self._state_messages(work, touched, beats)
            t1 = time.perf_counter()
            self.prof["fold"] += t1 - t0
            delivered = await self._chain(work, state, raws)
            self._t_out = time.perf_counter()
            self.prof["wait"] += self._t_out - t1
            self._log_profile()
            return delivered

    async def on_timer(self) -> None:
        async with self.lock:
            # Under the lock: "caught up" (and the ready file) must never be decided while a batch's
            # outputs and state are still in flight.
            await self._update_catch_up()
            # Deadlines are judged on the nodes' clocks as events are folded; the wall clock only
            # counts node silence, and only while every partition of this worker is read to its end.
            nodes = {n for rt in self.runtimes.values() for n in rt.processor.node_calls.nodes()}
            verdicts = self.watch.step(int(time.time() * 1000), self._reading_live(), nodes)
            if verdicts:
                await self._publish_verdicts(verdicts)
            if time.monotonic() - self._last_evict >= EVICT_INTERVAL:
                self._last_evict = time.monotonic()
                await self._evict()

    def _reading_live(self) -> bool:
        """Every assigned partition caught up since assignment and folded up to its last known highwater."""
        if not self.runtimes:
            return False
        consumer = self.app.consumer
        for p, rt in self.runtimes.items():
            if not rt.caught_up:
                return False
            hw = consumer.highwater(TP(self.topic, p))
            if hw is not None and rt.last_offset + 1 < hw:
                return False
        return True

    async def _publish_verdicts(self, verdicts: list[dict[str, Any]]) -> None:
        """node.lost events go into the events topic, to every partition like heartbeats: each partition's
        processor closes that node's calls when it reads them (as replay will)."""
        producer = await self._producer()
        await producer.client._wait_on_metadata(self.topic)
        parts = sorted(producer.client.cluster.partitions_for_topic(self.topic) or ())
        await self._publish([(self.topic, p, v["call_id"].encode(), _dumps(v))
                             for v in verdicts for p in parts])

    # -- output -------------------------------------------------------------------------------------
    async def _deliver(self, work: list[tuple[int, Outputs]], state: list[Message],
                       raws: list[bytes], previous: asyncio.Future[None] | None = None) -> None:
        t0 = time.perf_counter()
        work = [(p, out) for p, out in work if out]
        copartitioned = await self._copartitioned() if work else set()
        messages, cdrs, alerts = self._output_messages(work, copartitioned)
        # Outputs and rows are independent of each other; both must be acknowledged before any state.
        # The rows go to the writer process (as the JSON just encoded for Kafka: bytes cross the pipe far
        # cheaper than dicts) while this loop talks to the broker.
        await asyncio.gather(self._publish(messages), self.writer.write(raws, cdrs, alerts))
        self.prof["outputs+store"] += time.perf_counter() - t0
        if previous is not None:
            await previous
        t1 = time.perf_counter()
        # Acknowledged before the batch's offsets are: faust commits after flushing *its* producer only.
        await self._publish(state)
        self.prof["state"] += time.perf_counter() - t1

    async def _copartitioned(self) -> set[str]:
        """Output topics with as many partitions as the events topic.

        A call's outputs go to the partition number its events came from there: the same partition the
        key's murmur2 hash picks when the events were keyed by call id (as the B2BUA sends them), at no
        hashing cost in this loop (aiokafka's murmur2 is pure Python: 6 us for a 36-byte key, measured).
        """
        if self._copartitioned_topics is None:
            producer = await self._producer()
            k = self.cfg.kafka
            counts: dict[str, int] = {}
            for topic in (self.topic, k.topic_commands, k.topic_alerts, k.topic_cdrs):
                await producer.client._wait_on_metadata(topic)
                counts[topic] = len(producer.client.cluster.partitions_for_topic(topic) or ())
            events = counts[self.topic]
            self._copartitioned_topics = {t for t, n in counts.items() if t != self.topic and n == events}
        return self._copartitioned_topics

    def _output_messages(self, work: list[tuple[int, Outputs]], copartitioned: set[str]
                         ) -> tuple[list[Message], list[bytes], list[bytes]]:
        """Kafka messages of the outputs, and the encoded CDRs and alerts among them (for the store)."""
        k = self.cfg.kafka
        messages: list[Message] = []
        cdrs: list[bytes] = []
        alerts: list[bytes] = []
        append = messages.append
        for p, out in work:
            to_cmd = p if k.topic_commands in copartitioned else None
            to_alert = p if k.topic_alerts in copartitioned else None
            to_cdr = p if k.topic_cdrs in copartitioned else None
            for cmd in out.commands:
                append((k.topic_commands, to_cmd, cmd["call_id"].encode(), _dumps(cmd)))
            for alert in out.alerts:
                value = _dumps(alert)
                alerts.append(value)
                append((k.topic_alerts, to_alert, alert["call_id"].encode(), value))
                log.warning("zombie alert %s: call %s (%s via %s) %s", alert["kind"], alert["call_id"],
                            alert["account"], alert["vendor"], alert["message"])
            for cdr in out.cdrs:
                value = _dumps(cdr)
                cdrs.append(value)
                append((k.topic_cdrs, to_cdr, cdr["call_id"].encode(), value))
            for notice in out.notices:
                log.warning("partition %d: %s", p, notice)
            for source, raw, err in out.dead_letters:
                append((k.topic_dead_letter, None, None, _dumps(dead_letter_record(source, raw, err))))
                log.warning("dead letter from %s: %s", source, err)
            self.stats["cdrs"] += len(out.cdrs)
            self.stats["alerts"] += len(out.alerts)
            self.stats["commands"] += len(out.commands)
            self.stats["dead_letters"] += len(out.dead_letters)
        return messages, cdrs, alerts

    async def _publish(self, messages: list[Message]) -> None:
        """Send and wait until the broker acknowledged every message (at-least-once: resend all on error)."""
        if not messages:
            return
        delay = 0.2
        while True:
            try:
                producer = await self._producer()
                await self._send_batched(producer, messages)
                return
            except Exception as exc:
                log.warning("publishing %d messages failed (%s); retry in %.1f s", len(messages), exc, delay)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    @staticmethod
    async def _send_batched(producer: AIOKafkaProducer, messages: list[Message]) -> None:
        # One produce batch per topic-partition instead of one send() coroutine and future per message:
        # the per-message cost of AIOKafkaProducer.send is several times the encoding. Keyed messages
        # without a partition get the producer's default (murmur2) partitioner, as send() would.
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

    def _changelog(self, p: int, key: str, value: Any) -> Message:
        # faust's json codec for keys and values, so faust's recovery reads these back as usual.
        return (self.changelog_topic, p, *call_table.encode(key, value))

    def _state_messages(self, work: list[tuple[int, Outputs]], touched: dict[int, set[str]],
                        beats: set[int]) -> list[Message]:
        """Changelog records of every call the batch (or tick) touched, encoded now (see ``_chain``)."""
        for p, out in work:
            if out:
                ids = touched.setdefault(p, set())
                ids.update(m["call_id"] for m in out.cdrs)
                ids.update(m["call_id"] for m in out.alerts)
                ids.update(m["call_id"] for m in out.commands)
        data = self.table.data
        messages: list[Message] = []
        for p, ids in touched.items():
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            states = rt.processor.states
            for cid in ids:
                st: CallState | None = states.get(cid)
                if st is None:
                    continue
                if st.closed:
                    if cid not in rt.closed_ids:
                        rt.closed.append((rt.last_offset, cid))
                        rt.closed_ids.add(cid)
                    if cid not in data:
                        # Born and closed within this batch, never written: no record and, at eviction,
                        # no tombstone. A re-delivery of the batch brings its call.setup along and
                        # rebuilds it; once the batch is committed nothing can reach it.
                        continue
                value = call_table.state_value(p, st)
                data[cid] = value
                messages.append(self._changelog(p, cid, value))
        for p in beats:
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            proc = rt.processor
            seen = {"clocks": proc.clocks.to_dict(), "beats": dict(proc.heartbeats),
                    "addresses": dict(proc.addresses)}
            if seen != rt.live_written:
                key = call_table.liveness_key(p)
                value = {"p": p, **seen}
                data[key] = value
                messages.append(self._changelog(p, key, value))
                rt.live_written = seen
        return messages

    async def _evict(self) -> None:
        """Drop closed calls whose closing batch is committed (no re-delivery can reach them now)."""
        committed = self.app.consumer._committed_offset
        data = self.table.data
        messages: list[Message] = []
        tombstones: list[Message] = []
        for p, rt in self.runtimes.items():
            done = committed.get(TP(self.topic, p))
            if done is None:
                continue
            states = rt.processor.states
            while rt.closed:
                at, cid = rt.closed[0]
                limit = (rt.target or 0) - 1 if at is None else at
                if (at is None and not rt.caught_up) or limit >= done:
                    break
                rt.closed.popleft()
                rt.closed_ids.discard(cid)
                st = states.get(cid)
                if st is None or not st.closed:
                    continue
                del states[cid]
                rt.processor.closed.add(cid, st.end_ms or 0)
                if cid in data:  # else never written (see _state_messages): nothing to tombstone
                    del data[cid]
                    tombstones.append(self._changelog(p, cid, None))
            new = rt.processor.closed.take_new()
            if new:
                # The closed-call memory before the tombstones, on the same partition: a restart never
                # finds a call neither in the table nor in the memory.
                tag = f"{done}-{uuid.uuid4().hex[:8]}"
                key = call_table.closed_key(p, tag)
                messages.append(self._changelog(p, key, call_table.closed_value(p, new)))
            messages += tombstones
            tombstones = []
        await self._publish(messages)


def _brokers(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def make_app(cfg: Config, app_id: str = DEFAULT_APP_ID, batch_size: int = DEFAULT_BATCH,
             ready_file: str | None = None, store_events: bool = True, **settings: Any) -> faust.App:
    """The faust app: batch path on the events topic, call-state table, enforcement timer.

    ``batch_size`` is the most records one fetch (one batch) holds. ``settings`` are passed to
    ``faust.App`` (e.g. ``store="rocksdb://"``). The pipeline object is ``app.sipledger`` (stats,
    runtimes) for tests and benchmarks.
    """
    n = cfg.kafka.partitions
    datadir = cfg.path(".sipledger/faust") / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    conf: dict[str, Any] = {
        "broker": _brokers(cfg.kafka.bootstrap),
        # The changelog is the durable copy; memory keeps recovery simple and needs no local disk
        # state that could disagree with the log after a crash.
        "store": "memory://",
        "topic_partitions": n,
        "topic_replication_factor": 1,
        "web_enabled": False,  # no HTTP port: several workers on one host must not collide
        "datadir": str(datadir),
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        "stream_buffer_maxsize": max(4096, 2 * batch_size),
        # One fetch = one batch; per partition a fetch holds up to consumer_max_fetch_size bytes.
        "broker_max_poll_records": max(500, batch_size),
        "consumer_max_fetch_size": 4 * 1024 * 1024,
        "table_standby_replicas": 0,
        "autodiscover": False,
    }
    conf.update(settings)
    app = PipelineApp(app_id, **conf)
    events = app.topic(cfg.kafka.topic_events, key_serializer="raw", value_serializer="raw", partitions=n)
    # No key/value types: faust then uses its json codec both ways (str keys, dict values).
    table = app.Table(TABLE_NAME, default=None, partitions=n)
    pipe = KafkaPipeline(cfg, app, table, store_events=store_events, ready_file=ready_file)
    app.sipledger = pipe  # type: ignore[attr-defined]
    # Subscribed through faust's conductor (so faust assigns, seeks and commits it), consumed in batches.
    app.topics.add(events)
    cast(BatchConsumer, app.consumer).batch_handlers[cfg.kafka.topic_events] = pipe.process_records

    @table.on_recover
    async def _recovered() -> None:
        await pipe.on_recover()

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        await pipe.on_revoked()

    @app.timer(TICK_INTERVAL)
    async def _tick() -> None:
        try:
            await pipe.on_timer()
        except Exception:
            log.critical("tick failed; exiting", exc_info=True)
            logging.shutdown()
            os._exit(70)

    return app


def run_worker(cfg: Config, app_id: str = DEFAULT_APP_ID, loglevel: str = "warn",
               batch_size: int = DEFAULT_BATCH, ready_file: str | None = None, store_events: bool = True,
               **settings: Any) -> None:
    """Run one worker in this process until it is stopped (SIGTERM/SIGINT)."""
    app = make_app(cfg, app_id=app_id, batch_size=batch_size, ready_file=ready_file,
                   store_events=store_events, **settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


def run(cfg: Config, overrides: Mapping[str, Any] | None = None) -> None:
    """Entry point of ``sipledger pipeline`` when events.log is kafka://...

    ``overrides``: ``app_id``, ``loglevel``, ``batch_size``, ``ready_file``, ``store_events`` and any
    ``faust.App`` setting.
    """
    opts = dict(overrides or {})
    run_worker(cfg, app_id=opts.pop("app_id", DEFAULT_APP_ID), loglevel=opts.pop("loglevel", "warn"),
               batch_size=int(opts.pop("batch_size", DEFAULT_BATCH)), ready_file=opts.pop("ready_file", None),
               store_events=bool(opts.pop("store_events", True)), **opts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m pipeline.faust_app",
                                     description="sipledger pipeline faust worker (Kafka mode)")
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--config", help="sipledger TOML config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID, help="faust app id = consumer group")
    parser.add_argument("-l", "--loglevel", default="warn",
                        choices=["crit", "error", "warn", "info", "debug"])
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--ready-file", help="written once every assigned partition caught up")
    parser.add_argument("--no-store-events", action="store_true",
                        help="do not insert raw call events into ClickHouse (CDRs and alerts still are)")
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, args.set)
    # faust's Worker reads sys.argv for its own options; give it only the program name.
    sys.argv = sys.argv[:1]
    run_worker(cfg, app_id=args.app_id, loglevel=args.loglevel, batch_size=args.batch_size,
               ready_file=args.ready_file, store_events=not args.no_store_events)


if __name__ == "__main__":
    main()
