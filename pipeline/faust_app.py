"""Kafka mode of the pipeline: a faust worker around the shared ``Processor``.

How to run it
-------------
* ``sipledger pipeline`` with ``events.log = "kafka://..."``, or
  ``python3 -m pipeline.faust_app worker --config sipledger.toml [--set k=v ...] [-l warn]
  [--app-id sipledger-pipeline] [--ready-file PATH] [--batch-size 16000] [--no-store-events]``
* from Python: ``pipeline.faust_app.run(cfg, {"app_id": ..., "loglevel": ..., "batch_size": ...,
  "ready_file": ..., "store_events": False})`` (blocks until the worker stops).
* Start as many workers as there are partitions, on any hosts, with the same app id (= consumer group).
  SIGTERM/SIGINT stop a worker within ``pipeline.shutdown_grace`` + about 2 s whatever the broker's state
  (it leaves the group, so its partitions move at once); a SIGKILL loses nothing either (below), but its
  partitions wait for ``pipeline.session_timeout`` before they move.
* The events topic (``kafka.topic_events``) must exist before the worker starts (faust would consume
  nothing from a topic created later); the worker refuses to start without it. It creates its own
  compacted changelog topic ``<app id>-call-state-changelog`` and status topic ``<app id>-status``.
* ``SIPLEDGER_FAUST_PROFILE=1`` logs (at error level, so ``-l error`` shows it) the time spent per stage
  every 10 s and when the worker is ready.

Design
------
* faust runs the consumer group (assignment, offsets, commits) and the timer; nothing else. The group's
  session, heartbeat and rebalance timeouts are ``pipeline.session_timeout``, ``heartbeat_interval`` and
  ``rebalance_timeout`` (faust's defaults left a dead worker's partitions idle about 61 s).
* The events topic (raw bytes, keyed by call_id) is *not* read through a faust agent: faust's per-message
  path (``_drain_messages`` runs a ``wait_first`` - two tasks and an ``asyncio.wait`` - per message, then
  an Event, a queue put and an ack per message) cost ~125 us/event, several times the pipeline itself.
  ``BatchConsumer`` (faust's aiokafka consumer with its fetch loop replaced) hands every fetch of the
  events topic - partition -> aiokafka records, up to ``--batch-size`` records - to
  ``KafkaPipeline.process_records`` in one call, and acks its offsets in faust's own bookkeeping only
  once that fetch's delivery (below) completed. The next fetch is already requested while one is handled.
* Every partition has its own ``Processor``: a call lives on one partition, and the B2BUA broadcasts
  node.heartbeat to every partition, so each processor sees every node. No rule lives here.
* State: the changelog topic ``<app id>-call-state-changelog`` (compacted, one partition per events
  partition; names and record format in pipeline/call_table.py: key = call_id, value = the call's state
  with positional fields; key ``~liveness/<p>`` holds the partition's node last-seen times). The worker
  writes it with its own producer, to partition ``p`` explicitly, and awaits the acks, so a batch (or
  timer tick) knows its state is acknowledged. There is no faust Table: faust's table recovery hung for
  good against this broker, and decided on its own when a partition was recovered (issue 17).
* Restore (pipeline/changelog_restore.py): on every assignment each assigned partition is restored from
  its changelog partition, read from the beginning to the end offset it has after the assignment; its
  Processor is rebuilt from the last record of every key, deadlines included. Before reading, the worker
  takes the partition's transactional id (``<app id>-state-<p>``, pipeline/state_writer.py): the broker
  then refuses whatever an earlier owner still sends, so the read sees its last word. Until then the partition
  stays paused (``BatchConsumer.resume_partitions`` holds it back; should records arrive anyway they
  wait); the others keep flowing. A read that receives nothing for ``pipeline.restore_stall_timeout`` is
  retried, and after ``pipeline.restore_attempts`` the worker exits with status 69 for its supervisor to
  restart it: never a partition served from half its states. Partitions that stay with a worker across
  a rebalance are restored too: with an eager rebalance another worker may have owned them meanwhile
  (after a session expiry), and only the log knows.
* Order per batch (and per timer tick):
  1. under the lock, fold events (``Processor.feed_raw``: invalid ones become dead letters), take the
     outputs and encode the changelog records of every touched call (the state as of this batch);
     then start the delivery (steps 2-4) and return; the next batch folds meanwhile. Deliveries in
     flight are bounded by the rows the store writer holds unacknowledged (``pipeline.max_pending_rows``)
     and by ``MAX_IN_FLIGHT``, not by a small count: a store that is slow or down holds offsets and state
     back, but reading, folding, commands and alerts go on (issue 11: the sink never stalls decisions)
     until that memory bound is reached, and then reading pauses (which the node watch sees as not
     caught up, so nothing is judged from the silence that follows);
  2. publish commands / alerts / CDRs / dead letters with a separate aiokafka producer (one produce batch
     per partition) and meanwhile hand CDRs, alerts and the raw call events to the store writer process
     (pipeline/store_writer.py: a ``StoreSink`` on the second core); wait until the broker acknowledged
     every output and the writer reported every row stored (both retried);
  3. only then, and after the previous delivery completed, write the batch's changelog records and
     account.balance records, one transaction per partition on the partition's own transactional
     producer, and wait for the commits - unless the delivery was fenced meanwhile (below);
  4. complete; the consumer then acks the batch's offsets and faust commits acked offsets every
     ``broker_commit_interval``. Deliveries complete in fold order, so offsets are acked in order.
  A batch runs in its own task, shielded from the fetcher's cancellation (faust cancels the fetcher on
  rebalance and shutdown): outputs taken from the processors are always delivered, unless the process is
  gone. A crash anywhere re-delivers the uncommitted events onto a state that is at most as new as the
  log: duplicates of applied events are ignored by the core, and anything re-emitted (same CDR content,
  deterministic alert/command ids) is folded by the store's ReplacingMergeTree + FINAL and deduped by
  nodes. Writing state before outputs would lose CDRs, so that order is the point of the design.
* Revocation: before faust hands partitions over, the worker waits for the batch being folded and the
  deliveries in flight (at most half of ``pipeline.rebalance_timeout``) and commits the acked offsets.
  If they do not finish in time (a store or broker that hangs), the worker *fences* them: a fenced
  delivery writes no state and its offsets are never acked, so it is as if it never happened - the next
  owner restores the state as of the delivery before and re-reads the events. A worker the group
  expelled (its session expired: its loop or the broker stalled) fences them at once, and so does any
  delivery that reaches its writes meanwhile: the group did not wait for it, so its partitions may be
  restored by another worker already, and a state written after that restore would stand in the
  changelog over the new owner's (``BatchConsumer.membership_lost``). That check cannot see an expiry
  the coordinator has not told the worker about yet (a broker just back from an outage), nor stop a batch
  aiokafka already holds; the broker's fencing does (step 3: a state transaction of a worker whose
  partition another one took is refused or aborted; the prepaid drill once lost a debit to that gap).
  A fetch that completed across a rebalance is dropped (the new assignment seeks to the committed offsets).
* Time: a 0.1 s timer calls ``Processor.tick`` with the wall clock, but only for partitions that have
  caught up with the log since assignment (processed up to the highwater seen then). A worker that was
  down must first read the backlog - which may hold the call.terminated - before calling anything a
  zombie or a node lost.
* Closed calls stay in memory and in the changelog until the consumer's committed offset has passed the
  batch that closed them (a re-delivery can then no longer reach them); then they are dropped and
  tombstoned, which keeps the changelog and restores small. A call set up and closed within one batch
  is never written at all (no state record, no tombstone): a re-delivery of that batch starts before
  its call.setup and rebuilds it. A prepaid call is written all the same: its debit is on its state
  until the eviction settles it into the ledger's record. When catching up a backlog that is most
  calls, about half the changelog records.
* Shutdown (SIGTERM/SIGINT, ``PipelineWorker``): stop folding, wait up to ``pipeline.shutdown_grace`` for
  the deliveries in flight, commit what is acked, leave the group, publish a last status and exit
  (``os._exit``: faust's own stop can hang in aiokafka's consumer thread, e.g. while the broker is down).
  Nothing undelivered is acked, so the next owner re-reads it. A watchdog exits regardless after
  ``shutdown_grace`` + ``SHUTDOWN_MARGIN_S``.
* Status: every ``STATUS_INTERVAL_S`` (and at once on a change of assignment or restore) the worker
  publishes what it does - partitions and their restore state, store writer's pending rows, deliveries
  in flight - to the compacted topic ``<app id>-status`` keyed by worker; ``sipledger status`` reads it
  (sipledger/pipeline_status.py).
* Prepaid balances: each partition's processor keeps its share of the ledger (pipeline/domain/ledger.py);
  its account.balance records go, with the partition's state (step 3), to the compacted one-partition
  topic ``kafka.topic_balances`` (key ``<account>/<partition>``; created by the worker) that the B2BUA
  nodes follow (read committed), its rows to the store writer (``account_ledger``). Top-ups and
  settled debits are persisted in the changelog as ``~ledger/<p>`` (pipeline/call_table.py), restored
  with the partition's states.
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
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import faust
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.protocol.commit import OffsetCommitRequest
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode import ServiceT

from pipeline import call_table
from pipeline.call_table import DEFAULT_APP_ID
from pipeline.changelog_restore import PartitionLog, read_partitions
from pipeline.dead_letter import dead_letter_record
from pipeline.domain import CallState, alert_line
from pipeline.domain.gateways import GATEWAY_EVENT_TYPES
from pipeline.gc_policy import settle_after_startup
from pipeline.metrics import PipelineCounts, faust_families, serve_pipeline
from pipeline.node_watch import NodeWatch
from pipeline.processor import Outputs, Processor, load_decks, policy_from_config
from pipeline.state_writer import PRODUCE_BATCH_BYTES, Fenced, Message, StateWriters, send_batched
from pipeline.store_writer import StoreWriterProcess
from sipledger import config as config_mod
from sipledger import logsetup
from sipledger.config import Config
from sipledger.pipeline_status import STATUS_INTERVAL_S, status_topic
from sipledger.topic_reader import TopicReadError

log = logging.getLogger("sipledger.pipeline.faust")

DEFAULT_BATCH = 16_000  # records a fetch: per-batch costs (parts, produce requests) shared by more events
TICK_INTERVAL = 0.1
EVICT_INTERVAL = 2.0
PROFILE_EVERY = 10.0
# Deliveries (outputs, rows, state) of folded batches under way while the next batch folds: a bound on
# futures and buffers; the real bound while the store is down is pipeline.max_pending_rows.
MAX_IN_FLIGHT = 256
# The broker counts as reachable for the node watch while it acknowledged a status record this recently
# (one goes every STATUS_INTERVAL_S).
BROKER_SILENCE_MS = 7_000
# A worker whose node watch cannot count silence this long says so in its log (and again as often).
BLIND_REPORT_MS = 30_000
# Highwater samples a partition keeps for measuring how far its reading has come (one per change).
HW_SAMPLES = 256
# The longest a fetch waits on the broker for new records (see ShortPollConsumerThread).
FETCH_MAX_WAIT_MS = 100
# Bounds of the broker calls a stopping worker still makes (commit, leave group, last status), and the
# margin its watchdog adds to pipeline.shutdown_grace before exiting regardless.
SHUTDOWN_CALL_S = 1.0
SHUTDOWN_MARGIN_S = 2.5
# The broker calls of the timer (highwaters) must not hold it up while the broker is away.
BROKER_CALL_S = 2.0
# Exit statuses (sysexits.h): a batch or tick failed, the restart re-delivers it (EX_SOFTWARE); Kafka not
# usable - a restore that could not complete, or the topics at start (EX_UNAVAILABLE).
EXIT_FAILED = 70
EXIT_UNAVAILABLE = 69
# Changelog topic: compacted; small segments so the cleaner can compact all but the newest minutes
# and a restore reads mostly live calls (the active segment is never compacted).
CHANGELOG_CONFIGS = {"cleanup.policy": "compact", "segment.ms": str(10 * 60 * 1000),
                     "segment.bytes": str(64 * 1024 * 1024), "min.cleanable.dirty.ratio": "0.2",
                     "delete.retention.ms": str(60 * 60 * 1000)}
# Status topic: one record per worker process (host:pid), so a worker restarted many times leaves many
# keys; deletion after a day (on top of compaction) forgets those of processes long gone.
STATUS_CONFIGS = {"cleanup.policy": "compact,delete", "retention.ms": str(24 * 60 * 60 * 1000),
                  "segment.ms": str(60 * 60 * 1000)}

# aiokafka records of one fetch of one topic, by partition.
Records = Mapping[TP, Sequence[Any]]
# Returns once the fetch is folded, with a future that completes once its outputs, rows and state are
# acknowledged (True) or fenced (False; the consumer acks its offsets only on True).
BatchHandler = Callable[[Records], Awaitable["asyncio.Future[bool]"]]
# Changelog and balance records by the events partition whose state they are (pipeline/state_writer.py).
StateMessages = dict[int, list[Message]]


def _dumps(obj: Any) -> bytes:
    # orjson: the same compact JSON as json.dumps(separators=(",", ":")) at a fraction of the cost.
    return orjson.dumps(obj, default=str)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _profiling() -> bool:
    return bool(os.environ.get("SIPLEDGER_FAUST_PROFILE"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _exit_now(status: int) -> None:
    logging.shutdown()
    os._exit(status)


class PartitionGate(Protocol):
    """What ``BatchConsumer`` asks the pipeline about the batch topic's partitions."""

    stopping: bool

    def owns(self, partition: int) -> bool:
        """Assigned to this worker now (served or being restored)."""
        ...

    def serving(self, partition: int) -> bool:
        """Its states are restored: its events may be folded."""
        ...

    async def wait_serving(self, partitions: Collection[int]) -> None:
        """Return once every one of ``partitions`` is served or no longer owned (or the worker stops)."""
        ...

    async def before_revoke(self) -> None:
        """Finish or fence the deliveries in flight, before partitions are handed over."""
        ...


class ShortPollConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, with the broker's long poll cut to ``FETCH_MAX_WAIT_MS``.

    aiokafka keeps one fetch in flight per broker, and faust asks the broker to hold a fetch up to
    1,500 ms while none of its partitions has new data. A partition whose buffered records run out while
    such a fetch is parked waits for it: measured in the catch-up benchmark as stalls of 0.5-0.8 s (a
    tenth of the run) with records waiting on the broker, and in live running it is up to 1.5 s more
    between an event and the rule it triggers. Capping the wait bounds that; the price is an empty
    fetch a partition every FETCH_MAX_WAIT_MS while idle.
    """

    # faust's own messages under a faust logger name (held at WARNING, rate-limited: sipledger.logsetup),
    # not under this module's name, which mode gives a subclass (also in place of a module logger that
    # mode marked as its own, such as faust_aiokafka.logger).
    logger = logging.getLogger("faust.pipeline.consumer")

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
    acknowledged; only then are its offsets acked, and not at all if the delivery was fenced or the
    consumer generation changed meanwhile (a rebalance: the new owner re-reads them). The next fetch is
    read meanwhile.

    ``gate`` (the pipeline) decides which of the batch topic's partitions may flow: a partition whose
    states are being restored stays paused (``resume_partitions`` holds it back, whoever asks), records
    of partitions no longer owned are dropped, and a revocation first waits for (or fences) the
    deliveries in flight and commits what they acked.
    """

    logger = logging.getLogger("faust.pipeline.consumer")
    batch_handlers: dict[str, BatchHandler]
    gate: PartitionGate | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers = {}
        self.gate = None
        self.fetch_wait = 0.0  # seconds spent waiting for the next fetch (profiling)

    def _new_consumer_thread(self) -> ShortPollConsumerThread:
        return ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def membership_lost(self) -> bool:
        """Whether the group coordinator forgot this worker: aiokafka resets its generation when a heartbeat,
        a commit or a join is answered "unknown member" or "illegal generation" (the session expired: the
        loop or the broker stalled longer than ``pipeline.session_timeout``), until it joins again. By then
        the group may have handed this worker's partitions to another one."""
        try:
            coordinator = cast(Any, self)._thread._ensure_consumer()._coordinator
        except Exception:  # not started: nothing of it is in flight either
            return False
        return getattr(coordinator, "generation", None) == OffsetCommitRequest.DEFAULT_GENERATION_ID

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        gate = self.gate
        if gate is not None:
            # faust resumes every assigned partition once a rebalance settles; a partition whose states are
            # not restored yet stays paused until the pipeline resumes it itself.
            tps = [tp for tp in tps if tp.topic not in self.batch_handlers or gate.serving(tp.partition)]
        super().resume_partitions(tps)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        gate = self.gate
        if gate is not None and revoked:
            await gate.before_revoke()
            # faust forgets the acked offsets of revoked partitions next: commit them first, so the next
            # owner does not re-read what this worker delivered since the last periodic commit.
            try:
                await asyncio.wait_for(self.commit(), BROKER_CALL_S)
            except Exception as exc:
                log.warning("committing offsets before revocation failed (%s); the next owner re-reads "
                            "them", exc or type(exc).__name__, extra=logsetup.RATE_LIMITED)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - needs a broker
        callback = self.callback
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = cast(Any, fetcher)._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        gate = self.gate
        # The next fetch, started before the current one is handled: the consumer thread reads and
        # unpacks it while this loop folds, instead of this loop idling for it afterwards.
        prefetch: asyncio.Future[Any] | None = None
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                t_fetch = time.perf_counter()
                if prefetch is None:
                    prefetch = asyncio.ensure_future(self._wait_next_records(1.0))
                records, active = await prefetch
                prefetch = None
                self.fetch_wait += time.perf_counter() - t_fetch
                # As faust does: never loop without giving the event loop a turn.
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if gate is not None and gate.stopping:
                    continue  # the worker is stopping: nothing more is folded (nor acked)
                if not self.flow_active:
                    with contextlib.suppress(Exception):
                        await self.perform_seek()
                    continue
                if gate is not None:
                    # A partition is fetched only once restored (it stays paused until then); should its
                    # records come earlier anyway, they wait for the restore and never fold onto states
                    # that are not back yet.
                    waiting = {tp.partition for tp in records if tp.topic in self.batch_handlers
                               and gate.owns(tp.partition) and not gate.serving(tp.partition)}
                    if waiting:
                        await gate.wait_serving(waiting)
                        if gate.stopping:
                            continue
                # Offsets are acked only if no rebalance happened between this fold and its delivery.
                generation = self.app.consumer_generation_id
                prefetch = asyncio.ensure_future(self._wait_next_records(1.0))
                batches: dict[str, dict[TP, list[Any]]] = {}
                for tp, recs in records.items():
                    if tp.topic not in self.batch_handlers:
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        await self._deliver_each(tp, recs, callback)
                        continue
                    # Every record aiokafka hands out for a served partition is folded: aiokafka keeps
                    # the positions (it returns only records of assigned partitions at their current
                    # position, and a seek discards what was fetched before it). Records are never
                    # skipped by bookkeeping of this loop's own, which lost events when a fetch taken
                    # after a rebalance's seek was dropped as "from before the rebalance" (issue 17). A
                    # fetch that really came before the seek holds events the partition re-reads: the
                    # core ignores such duplicates, and holds early events until the gap is filled.
                    if gate is not None and not gate.serving(tp.partition):
                        continue  # not this worker's (any more): its owner reads it from the committed offset
                    if acks_enabled_for(tp.topic) and recs[-1].offset - recs[0].offset != len(recs) - 1:
                        # Offsets missing from the log (compaction, transaction markers) must be known to
                        # faust as gaps, or the committed offset never passes them. Only gaps inside a
                        # fetch are certain: across fetches a seek may have intervened.
                        prev = recs[0].offset
                        for r in recs:
                            if r.offset - prev > 1:
                                await self._add_gap(tp, prev + 1, r.offset)
                            prev = r.offset
                    batches.setdefault(tp.topic, {})[tp] = list(recs)
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

    def _ack_when_delivered(self, delivered: asyncio.Future[bool], batch: Records, generation: int) -> None:
        # Offsets of a batch are acked once its outputs, rows and state are acknowledged, and not at all
        # after a rebalance (the new owner re-reads them), a fencing (its state was not written) or a
        # failure (the process is exiting).
        def done(fut: asyncio.Future[bool]) -> None:
            if not fut.cancelled() and fut.exception() is None and fut.result() and \
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
    logger = logging.getLogger("faust.pipeline.consumer")
    Consumer = BatchConsumer


class PipelineApp(faust.App):
    """A faust App whose consumer is a ``BatchConsumer``."""

    logger = logging.getLogger("faust.pipeline.app")

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


@dataclass(slots=True)
class PartitionRuntime:
    """What a worker holds for one assigned, restored partition of the events topic."""

    processor: Processor
    # Calls with a record in the changelog that no tombstone followed (restored or written since): a
    # closed call in here gets a tombstone when dropped; one never written does not.
    written: set[str] = field(default_factory=set)
    last_offset: int = -1
    target: int | None = None  # highwater when first checked after the restore; caught up once processed
    caught_up: bool = False
    # (offset of the batch that closed it, or None for "closed before this assignment", call_id)
    closed: deque[tuple[int | None, str]] = field(default_factory=deque)
    closed_ids: set[str] = field(default_factory=set)
    live_written: dict[str, Any] = field(default_factory=dict)
    served_at_ms: int = 0
    restore: dict[str, Any] = field(default_factory=dict)
    # (highwater, wall ms it was seen) samples not yet read up to: once the folded offset reaches a
    # sample's highwater, everything written before its wall time has been read (the node watch's
    # measure; steady traffic keeps a few records unread at any instant, so "at the highwater now"
    # would rarely hold).
    hw_seen: deque[tuple[int, int]] = field(default_factory=deque)
    read_through_ms: int | None = None

    def read_through(self, highwater: int | None, now_ms: int) -> int | None:
        """Everything written to this partition before the returned wall time has been folded."""
        if highwater is not None and (not self.hw_seen or self.hw_seen[-1][0] != highwater):
            if len(self.hw_seen) >= HW_SAMPLES:
                self.hw_seen.popleft()  # a reader this far behind measures from older samples only
            self.hw_seen.append((highwater, now_ms))
        done = self.last_offset + 1
        while self.hw_seen and self.hw_seen[0][0] <= done:
            _, at = self.hw_seen.popleft()
            self.read_through_ms = at
        if highwater is not None and done >= highwater:
            self.read_through_ms = now_ms
        return self.read_through_ms


class KafkaPipeline:
    """The worker's state and I/O; faust calls ``on_assigned``, ``process_records`` and ``on_timer``,
    and the consumer asks it (as its ``PartitionGate``) which partitions may flow."""

    def __init__(self, cfg: Config, app: faust.App, store_events: bool = True,
                 ready_file: str | None = None) -> None:
        self.cfg = cfg
        self.app = app
        self.topic = cfg.kafka.topic_events
        self.app_id = str(app.conf.id)
        self.changelog_topic = call_table.changelog_topic(self.app_id)
        self.status_topic = status_topic(self.app_id)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.policy = policy_from_config(cfg)
        self.sell, self.buy = load_decks(cfg)
        self.bill_modes = {a.name: a.bill_mode for a in cfg.accounts}
        # Restored partitions, served: their events are folded.
        self.runtimes: dict[int, PartitionRuntime] = {}
        # Partitions assigned now (served or being restored) and the restore under way.
        self.assigned: set[int] = set()
        self._restoring: asyncio.Task[None] | None = None
        self._served = asyncio.Event()  # set whenever a restore completes (wait_serving wakes up)
        # Bumped on every revocation and assignment: a restore finishing for an older assignment is
        # discarded.
        self._assignment_seq = 0
        # Bumped to fence the deliveries in flight (handed-over partitions, shutdown): a delivery folded
        # under an older epoch writes no state and is never acked.
        self.epoch = 0
        self.stopping = False
        self.restore_failures = 0
        # One lock: the batches and the timer both mutate processors and share the writer and producer.
        self.lock = asyncio.Lock()
        self.store_events = store_events
        self.writer = StoreWriterProcess(cfg.store.url, str(cfg.base_dir), cfg.pipeline.batch_size,
                                         store_events=store_events)
        self.writer.start()  # now, not in the first batch: its start-up is not the batch's work
        self.producer: AIOKafkaProducer | None = None
        # Each owned partition's transactional producer: its state writes, fenced (pipeline/state_writer.py).
        self.state_writers = StateWriters(cfg.kafka.bootstrap, self.app_id)
        self._rejoin_epoch = -1  # the epoch in which a refused state write last asked for a rebalance
        self.status_producer: AIOKafkaProducer | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._status_at = 0.0
        self._status_dirty = True
        self.started_ms = _now_ms()
        self.ready_file = ready_file
        self._ready_written = False
        self._last_evict = 0.0
        # When the broker last acknowledged this worker's status record: a broker that is away makes
        # every partition look caught up (its highwater is stale), and silence then means nothing.
        self._broker_ok_ms = 0
        self._blind_since: int | None = None
        self._blind_reported = 0
        p = cfg.pipeline
        self.watch = NodeWatch(p.node_timeout, f"{self.app_id}@{self.worker_id}", p.probe_attempts,
                               p.probe_timeout, takeover=p.takeover)
        self._assigned_at: float | None = None
        self._cpu_at_assign: float | None = None
        self._writer_cpu_at_assign: float | None = None
        self.stats = {"events": 0, "cdrs": 0, "alerts": 0, "commands": 0, "dead_letters": 0, "batches": 0}
        self.counts = PipelineCounts()  # alerts by kind, commands by type, restores (pipeline/metrics.py)
        self.profile = _profiling()
        # fold: decode..encode state; wait: for the previous delivery; outputs+store and state: inside the
        # deliveries (overlapping the next fold); between: outside the handler (fetching).
        self.prof: dict[str, float] = {"fold": 0.0, "wait": 0.0, "outputs+store": 0.0, "state": 0.0,
                                       "between": 0.0}
        # Deliveries in flight, oldest first; they complete in this order, so the last one is the
        # one to wait for.
        self._flights: deque[asyncio.Future[bool]] = deque()
        self._copartitioned_topics: set[str] | None = None
        self._prof_last = time.monotonic()
        self._t_out: float | None = None

    # -- resources ----------------------------------------------------------------------------------
    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap, acks="all",
                                        linger_ms=5, max_batch_size=PRODUCE_BATCH_BYTES,
                                        max_request_size=2 * PRODUCE_BATCH_BYTES,
                                        client_id=f"{self.app_id}-outputs")
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()  # else it is reported "Unclosed" when collected
                raise
            self.producer = producer
        return self.producer

    async def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None

    def _new_processor(self) -> Processor:
        return Processor(self.policy, self.sell, self.buy, self.bill_modes)

    # -- assignment (PartitionGate) -----------------------------------------------------------------
    def owns(self, partition: int) -> bool:
        return partition in self.assigned

    def serving(self, partition: int) -> bool:
        return partition in self.runtimes

    async def wait_serving(self, partitions: Collection[int]) -> None:
        while not self.stopping and any(p in self.assigned and p not in self.runtimes for p in partitions):
            self._served.clear()
            await self._served.wait()

    def _expelled(self) -> bool:
        consumer = self.app.consumer
        return isinstance(consumer, BatchConsumer) and consumer.membership_lost()

    async def before_revoke(self) -> None:
        """Let the batch being folded and the deliveries in flight finish before faust hands partitions
        over; fence them if they take longer than half the rebalance timeout, or at once if the group
        expelled this worker."""
        revoked = sorted(self.assigned)
        self._assignment_seq += 1
        if self._restoring is not None:
            self._restoring.cancel()  # its result would be for partitions this worker may no longer own
            self._restoring = None
        limit = self.cfg.pipeline.rebalance_timeout / 2
        expelled = self._expelled()
        if expelled:
            # The group waits for a member that takes part in a rebalance, not for one whose session
            # expired: its partitions may be another worker's already, restored from the changelog as it
            # was. Deliveries finishing now would write older states after that restore, which the next
            # restore would take for the latest (calls open again after their CDR, prepaid holds kept).
            self.epoch += 1
            log.warning("the consumer group expelled this worker (its session expired): the deliveries in "
                        "flight are fenced; they write no state and their events are re-read by the next "
                        "owner")
        if not await self._quiesce(limit) and not expelled:
            self.epoch += 1
            log.warning("deliveries in flight did not finish within %.1f s of the revocation; fenced: they "
                        "write no state and their events are re-read by the next owner", limit)
        self.assigned = set()
        self.runtimes.clear()
        self._served.set()
        self._status_dirty = True
        log.info("revoked partitions %s of %s", revoked, self.topic)

    async def _quiesce(self, timeout: float) -> bool:
        """True once no batch is being folded and every delivery in flight completed, within ``timeout``."""
        async def quiet() -> None:
            async with self.lock:
                await self._drain()

        try:
            await asyncio.wait_for(quiet(), timeout)
            return True
        except (TimeoutError, Fenced):
            return False

    async def on_assigned(self, assigned: set[TP]) -> None:
        """A rebalance gave this worker ``assigned``: restore their states, then let them flow."""
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        self._assignment_seq += 1
        if self._restoring is not None:  # normally cancelled by before_revoke already
            self._restoring.cancel()
            self._restoring = None
        self.assigned = parts
        self.runtimes.clear()  # before_revoke cleared them already; never serve an older assignment's
        self._status_dirty = True
        if self._assigned_at is None:
            settle_after_startup()  # faust is up: the rest is per-event churn
            self._assigned_at = time.time()
            self._cpu_at_assign = time.process_time()
            self._writer_cpu_at_assign = self.writer.cpu_seconds()
        log.info("assigned partitions %s of %s; restoring their call states from %s", sorted(parts),
                 self.topic, self.changelog_topic)
        if parts:
            self._restoring = asyncio.ensure_future(self._restore(sorted(parts), self._assignment_seq))

    async def _restore(self, partitions: list[int], seq: int) -> None:
        """Read the partitions' changelog to its end, then serve them; retry a stalled read, and exit
        the worker when it cannot complete."""
        pcfg = self.cfg.pipeline
        attempts = pcfg.restore_attempts
        for attempt in range(1, attempts + 1):
            try:
                # The partitions' transactional ids first: whatever an earlier owner still sends is
                # refused from now on, so the read below sees its last word (pipeline/state_writer.py).
                await self._fence(partitions)
                logs = await _in_thread(read_partitions, self.cfg.kafka.bootstrap, self.changelog_topic,
                                        partitions, pcfg.restore_stall_timeout)
            except TopicReadError as exc:
                self.restore_failures += 1
                if attempt < attempts:
                    log.warning("restoring partitions %s failed (attempt %d of %d): %s; retrying", partitions,
                                attempt, attempts, exc)
                    continue
                log.critical("restoring partitions %s failed %d times, last: %s; exiting so that a "
                             "supervisor restarts this worker (no event of theirs was processed)",
                             partitions, attempts, exc)
                _exit_now(EXIT_UNAVAILABLE)
            except Exception:
                log.critical("restoring partitions %s failed; exiting", partitions, exc_info=True)
                _exit_now(EXIT_UNAVAILABLE)
            if seq != self._assignment_seq or self.stopping:
                return  # another rebalance started meanwhile: its own restore serves its partitions
            self._serve(logs, attempt)
            return

    async def _fence(self, partitions: list[int]) -> None:
        """Take the partitions' transactional ids (pipeline/state_writer.py), bounded like the read."""
        try:
            await asyncio.wait_for(self.state_writers.fence(partitions),
                                   self.cfg.pipeline.restore_stall_timeout)
        except Exception as exc:
            raise TopicReadError(f"taking the partitions' transactional ids failed: "
                                 f"{exc or type(exc).__name__}") from None

    def _serve(self, logs: Mapping[int, PartitionLog], attempt: int) -> None:
        # Runs on the event loop with no await between building and installing: no batch can observe a
        # partition half-installed, so this needs no lock (a fold in progress touches only served ones).
        now = _now_ms()
        for p, plog in sorted(logs.items()):
            proc = self._new_processor()
            rec = plog.live  # node clocks, heartbeats, addresses, takeovers (or an older {"live": ...})
            proc.restore({"states": plog.states, "clocks": rec.get("clocks", rec.get("live", {})),
                          "heartbeats": rec.get("beats", {}), "addresses": rec.get("addresses", {}),
                          "taken_over": rec.get("taken_over", {}), "gateways": rec.get("gateways", {}),
                          "ledger": plog.ledger})
            proc.partition = p  # names this partition's share in its account.balance records
            for records in plog.closed:
                proc.closed.load(records)  # closed calls remembered: late redeliveries change nothing
            info = dict(plog.summary(), attempt=attempt, restored_at_ms=now)
            rt = PartitionRuntime(proc, written=set(proc.states), live_written=_liveness_record(proc),
                                  served_at_ms=now, restore=info)
            for cid, st in proc.states.items():
                if st.closed:
                    rt.closed.append((None, cid))
                    rt.closed_ids.add(cid)
            self.runtimes[p] = rt
            self.counts.restores += 1
            log.info("partition %d restored from %s: %d records up to end offset %d, %d calls (%d open), "
                     "%d deadlines armed, in %.2f s; serving", p, self.changelog_topic, plog.records,
                     plog.end_offset, len(proc.states), info["open_calls"], len(proc.deadlines), plog.seconds)
        self._served.set()
        self._status_dirty = True
        self.app.consumer.resume_partitions({TP(self.topic, p) for p in logs})

    async def _update_catch_up(self) -> None:
        pending = [p for p, rt in self.runtimes.items() if not rt.caught_up]
        if not pending:
            if not self._ready_written and self.ready_file and self.runtimes and \
                    self.runtimes.keys() == self.assigned:
                async with self.lock:
                    await self._drain()  # caught up means delivered, not only folded
                cpu = time.process_time() - (self._cpu_at_assign or 0.0)
                Path(self.ready_file).write_text(json.dumps({
                    "partitions": sorted(self.runtimes), "assigned_at": self._assigned_at,
                    "ready_at": time.time(), "events": self.stats["events"], "cdrs": self.stats["cdrs"],
                    "batches": self.stats["batches"], "cpu_s": cpu,
                    "writer_cpu_s": _minus(self.writer.cpu_seconds(), self._writer_cpu_at_assign),
                    "restores": {p: rt.restore for p, rt in self.runtimes.items()}}))
                self._ready_written = True
                self._log_profile(force=True)
            return
        need = [TP(self.topic, p) for p in pending if self.runtimes[p].target is None]
        if need:
            try:
                highwaters = await asyncio.wait_for(self.app.consumer.highwaters(*need), BROKER_CALL_S)
            except Exception:
                return  # the broker is away: asked again at the next tick
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
            if rt is None or rt.caught_up or rt.target is None:
                continue
            if rt.last_offset + 1 >= rt.target:
                rt.caught_up = True
                self._status_dirty = True
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
    async def process_records(self, batch: Records) -> asyncio.Future[bool]:
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
            _exit_now(EXIT_FAILED)

    async def _chain(self, work: list[tuple[int, Outputs]], state: StateMessages,
                     raws: list[bytes]) -> asyncio.Future[bool]:
        """Start delivering a folded batch (or tick); waits while ``MAX_IN_FLIGHT`` deliveries or
        ``pipeline.max_pending_rows`` rows are in flight.

        Call under the lock, with the outputs taken and the state records encoded at the end of the fold
        (``_state_messages``): the processors move on with the next batch meanwhile, and state written
        later than its own outputs would be newer than what is acknowledged. Outputs and rows of a
        delivery go out at once (the store writer keeps them in order); its state records wait for the
        previous delivery to complete, so changelog records of a call stay in order and deliveries
        complete - and offsets are acked - in fold order.
        """
        epoch = self.epoch
        flights = self._flights
        while flights and flights[0].done():
            flights.popleft()
        budget = self.cfg.pipeline.max_pending_rows
        while flights and (len(flights) >= MAX_IN_FLIGHT or self.writer.pending_rows >= budget):
            # Shielded: a caller cancelled here (the timer task) must not cancel the delivery (see _drain).
            await asyncio.shield(flights.popleft())  # completes only after every delivery before it
        previous = flights[-1] if flights else None
        delivered = asyncio.ensure_future(self._guarded(self._deliver(work, state, raws, previous, epoch)))
        flights.append(delivered)
        return delivered

    async def _drain(self) -> None:
        """Wait for the deliveries in flight (before a revocation, before declaring caught up); the last
        one completes only after the one before it."""
        if self._flights:
            # Shielded: cancelling a task cancels the task it awaits, so a revocation whose wait timed out
            # (wait_for cancels it) would cancel the last delivery and, through its ``await previous``,
            # every delivery before it; and every delivery folded after that chains onto a cancelled one,
            # ends cancelled in turn and is never acked. faust then commits no offset past the first of
            # them for as long as this worker keeps the partition (it commits contiguous acks only, and
            # these events are not read again). A fenced delivery must finish as fenced (False) instead.
            await asyncio.shield(self._flights[-1])

    async def _process_records(self, batch: Records) -> asyncio.Future[bool]:
        async with self.lock:
            t0 = time.perf_counter()
            if self._t_out is not None:
                self.prof["between"] += t0 - self._t_out
            touched: dict[int, set[str]] = {}
            beats: set[int] = set()
            raws: list[bytes] = []
            keep_raw = raws.append if self.store_events else None
            source = self.topic
            runtimes = self.runtimes
            n = 0
            wall_ms = _now_ms()
            for tp, recs in batch.items():
                p = tp.partition
                rt = runtimes.get(p)
                if rt is None:  # BatchConsumer hands over only served partitions
                    raise RuntimeError(f"records of partition {p}, whose states are not restored")
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
                        beat = True  # the partition's node record (takeovers) changes
                        continue
                    if etype in GATEWAY_EVENT_TYPES:
                        beat = True  # the node record holds the gateways' last reports (kept as events)
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
            work = [(p, rt.processor.take()) for p, rt in runtimes.items()]
            state = self._state_messages(work, touched, beats)
            t1 = time.perf_counter()
            self.prof["fold"] += t1 - t0
            delivered = await self._chain(work, state, raws)
            self._t_out = time.perf_counter()
            self.prof["wait"] += self._t_out - t1
            self._log_profile()
            return delivered

    async def on_timer(self) -> None:
        if self.stopping:
            return
        await self._update_catch_up()
        async with self.lock:
            # Deadlines are judged on the nodes' clocks as events are folded; the wall clock only counts
            # node silence, and only up to the time everything assigned has been read through.
            nodes = {n for rt in self.runtimes.values() for n in rt.processor.node_calls.nodes()}
            verdicts = self.watch.step(_now_ms(), self._read_through_ms(), nodes)
            if verdicts:
                await self._publish_verdicts(verdicts)
            if time.monotonic() - self._last_evict >= EVICT_INTERVAL:
                self._last_evict = time.monotonic()
                tombstones = self._evict()
                if tombstones:
                    await self._chain([], tombstones, [])
        self._maybe_publish_status()

    def _read_through_ms(self) -> int | None:
        """The wall time up to which everything written to the assigned partitions has been folded, or
        None while that cannot be told: a partition not served or not yet caught up since its restore,
        or a broker that stopped acknowledging (its highwaters are stale). pipeline/domain/liveness.py
        counts a node's silence only up to this time."""
        now = _now_ms()
        through, why = self._reading_position(now)
        if through is None:
            # A worker that cannot tell how far it has read cannot see a node die: say so, and why.
            if self._blind_since is None:
                self._blind_since = now
            elif now - self._blind_since >= BLIND_REPORT_MS and now - self._blind_reported >= BLIND_REPORT_MS:
                self._blind_reported = now
                log.warning("node watch: no node's silence counted for %.0f s: %s",
                            (now - self._blind_since) / 1000, why)
        else:
            self._blind_since = None
        return through

    def _reading_position(self, now: int) -> tuple[int | None, str]:
        if not self.assigned or self.assigned != self.runtimes.keys():
            return None, f"partitions assigned {sorted(self.assigned)}, served {sorted(self.runtimes)}"
        if now - self._broker_ok_ms > BROKER_SILENCE_MS:
            return None, "the broker has not acknowledged this worker's status for over " \
                         f"{BROKER_SILENCE_MS // 1000} s"
        consumer = self.app.consumer
        through = now
        for p, rt in self.runtimes.items():
            if not rt.caught_up:
                return None, f"partition {p} not caught up since its restore"
            at = rt.read_through(consumer.highwater(TP(self.topic, p)), now)
            if at is None:
                return None, f"partition {p}: no highwater known yet"
            through = min(through, at)
        return through, ""

    async def _publish_verdicts(self, verdicts: list[dict[str, Any]]) -> None:
        """node.lost events go into the events topic, to every partition like heartbeats: each partition's
        processor closes (or hands over) that node's calls when it reads them, as replay will."""
        producer = await self._producer()
        await producer.client._wait_on_metadata(self.topic)
        parts = sorted(producer.client.cluster.partitions_for_topic(self.topic) or ())
        await self._publish([(self.topic, p, v["call_id"].encode(), _dumps(v))
                             for v in verdicts for p in parts])

    # -- output -------------------------------------------------------------------------------------
    async def _deliver(self, work: list[tuple[int, Outputs]], state: StateMessages, raws: list[bytes],
                       previous: asyncio.Future[bool] | None, epoch: int) -> bool:
        """Outputs and rows, then state; False if fenced before the state was written."""
        try:
            t0 = time.perf_counter()
            work = [(p, out) for p, out in work if out]
            copartitioned = await self._copartitioned() if work else set()
            messages, cdrs, alerts, ledger = self._output_messages(work, copartitioned)
            # Outputs and rows are independent of each other; both must be acknowledged before any
            # state. The rows go to the writer process (as the JSON just encoded for Kafka: bytes cross the
            # pipe far cheaper than dicts) while this loop talks to the broker.
            await asyncio.gather(self._publish(messages, epoch),
                                 self.writer.write(raws, cdrs, alerts, ledger))
            self.prof["outputs+store"] += time.perf_counter() - t0
            if previous is not None:
                await previous
            t1 = time.perf_counter()
            # Acknowledged before the batch's offsets are: faust commits after flushing *its* producer only.
            await self._write_state(state, epoch)
            self.prof["state"] += time.perf_counter() - t1
            return True
        except Fenced:
            return False

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
                         ) -> tuple[list[Message], list[bytes], list[bytes], list[bytes]]:
        """Kafka messages of the outputs, and the encoded CDRs, alerts and prepaid ledger rows among them
        (for the store)."""
        k = self.cfg.kafka
        messages: list[Message] = []
        cdrs: list[bytes] = []
        alerts: list[bytes] = []
        ledger: list[bytes] = []
        append = messages.append
        for p, out in work:
            ledger.extend(_dumps(row) for row in out.ledger)
            to_cmd = p if k.topic_commands in copartitioned else None
            to_alert = p if k.topic_alerts in copartitioned else None
            to_cdr = p if k.topic_cdrs in copartitioned else None
            for cmd in out.commands:
                append((k.topic_commands, to_cmd, cmd["call_id"].encode(), _dumps(cmd)))
            for alert in out.alerts:
                value = _dumps(alert)
                alerts.append(value)
                append((k.topic_alerts, to_alert, alert["call_id"].encode(), value))
                log.warning("%s", alert_line(alert))
            for cdr in out.cdrs:
                value = _dumps(cdr)
                cdrs.append(value)
                append((k.topic_cdrs, to_cdr, cdr["call_id"].encode(), value))
            for notice in out.notices:
                log.warning("partition %d: %s", p, notice, extra=logsetup.RATE_LIMITED)
            for source, raw, err in out.dead_letters:
                append((k.topic_dead_letter, None, None, _dumps(dead_letter_record(source, raw, err))))
                log.warning("dead letter from %s: %s", source, err)
            self.stats["cdrs"] += len(out.cdrs)
            self.stats["alerts"] += len(out.alerts)
            self.stats["commands"] += len(out.commands)
            self.stats["dead_letters"] += len(out.dead_letters)
            self.counts.add(out)
        return messages, cdrs, alerts, ledger

    async def _publish(self, messages: list[Message], epoch: int | None = None) -> None:
        """Send and wait until the broker acknowledged every message (at-least-once: resend all on error).

        With ``epoch``, raises ``Fenced`` instead of sending (or retrying) once the pipeline's epoch moved
        on: what was folded under an older epoch must not write state any more.
        """
        if not messages:
            return
        delay = 0.2
        while True:
            # Also while the group has expelled this worker, before its revocation bumps the epoch.
            if epoch is not None and (epoch != self.epoch or self._expelled()):
                raise Fenced
            try:
                producer = await self._producer()
                await send_batched(producer, messages)
                return
            except Exception as exc:
                log.warning("publishing %d messages failed (%s); retry in %.1f s", len(messages),
                            exc or type(exc).__name__, delay, extra=logsetup.RATE_LIMITED)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _write_state(self, state: StateMessages, epoch: int) -> None:
        """Each partition's state records as one transaction of its own producer (pipeline/state_writer.py),
        retried until acknowledged; ``Fenced`` once the epoch moved on, the group expelled this worker or
        the broker refused the partition's writes (another worker took the partition)."""
        results = await asyncio.gather(*(self._write_partition_state(p, msgs, epoch)
                                         for p, msgs in state.items() if msgs), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _write_partition_state(self, p: int, messages: list[Message], epoch: int) -> None:
        delay = 0.2
        while True:
            if epoch != self.epoch or self._expelled():
                raise Fenced
            try:
                await self.state_writers.write(p, messages)
                return
            except Fenced:
                if epoch == self.epoch and not self._expelled() and self._rejoin_epoch != epoch:
                    # The broker refused a partition the group has not taken from this worker as far as it
                    # knows: let the group settle who owns it (a new assignment takes the id afresh) rather
                    # than take the id back here, which would fence a rightful new owner.
                    self._rejoin_epoch = epoch
                    log.warning("partition %d: the broker refused its state writes (another holder took its "
                                "transactional id); not acknowledged; asking the group to rebalance", p)
                    await self._request_rejoin()  # bounded: this delivery is not acknowledged anyway
                raise
            except Exception as exc:
                log.warning("writing the state of partition %d failed (%s); retry in %.1f s", p,
                            exc or type(exc).__name__, delay, extra=logsetup.RATE_LIMITED)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _changelog(self, p: int, key: str, value: Any) -> Message:
        # faust's json codec for keys and values (call_table.encode), as earlier workers' tables wrote.
        return (self.changelog_topic, p, *call_table.encode(key, value))

    def _state_messages(self, work: list[tuple[int, Outputs]], touched: dict[int, set[str]],
                        beats: set[int]) -> StateMessages:
        """Changelog records of every call the batch (or tick) touched, and the prepaid balance records,
        by partition; encoded now (see ``_chain``)."""
        for p, out in work:
            if out:
                ids = touched.setdefault(p, set())
                ids.update(m["call_id"] for m in out.cdrs)
                ids.update(m["call_id"] for m in out.alerts)
                ids.update(m["call_id"] for m in out.commands)
        by_partition: StateMessages = {}
        for p, ids in touched.items():
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            messages = by_partition.setdefault(p, [])
            states = rt.processor.states
            written = rt.written
            for cid in ids:
                st: CallState | None = states.get(cid)
                if st is None:
                    continue
                if st.closed:
                    if cid not in rt.closed_ids:
                        rt.closed.append((rt.last_offset, cid))
                        rt.closed_ids.add(cid)
                    if cid not in written and st.credit_hold is None:
                        # Born and closed within this batch, never written: no record and, at eviction,
                        # no tombstone. A re-delivery of the batch brings its call.setup along and
                        # rebuilds it; once the batch is committed nothing can reach it. Not so a prepaid
                        # call: its debit lives on its state until the eviction settles it into the
                        # ledger's record, and a handover between the batch's commit (a revocation
                        # commits at once) and that eviction would lose the debit with the state.
                        continue
                written.add(cid)
                messages.append(self._changelog(p, cid, call_table.state_value(p, st)))
        balances = self.cfg.kafka.topic_balances
        for p, out in work:
            if p not in self.runtimes:
                continue
            if any(row["kind"] == "topup" for row in out.ledger):
                # Top-ups live only in the ledger's own record (holds and debits are on call states).
                led = self.runtimes[p].processor.ledger
                by_partition.setdefault(p, []).append(
                    self._changelog(p, call_table.ledger_key(p), {"p": p, **led.to_dict()}))
            # Prepaid: one record per (account, partition) on the one-partition compacted balances topic,
            # which every B2BUA node reads from its beginning (b2bua/balances_in.py); the key keeps the
            # latest of each partition's share. Written with the partition's state (fenced the same way):
            # a stale share landing after the new owner's would be what the nodes believe.
            for rec in out.balances:
                by_partition.setdefault(p, []).append(
                    (balances, 0, f"{rec['account']}/{p}".encode(), _dumps(rec)))
        for p in beats:
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            seen = _liveness_record(rt.processor)
            if seen != rt.live_written:
                by_partition.setdefault(p, []).append(
                    self._changelog(p, call_table.liveness_key(p), {"p": p, **seen}))
                rt.live_written = seen
        return by_partition

    def _evict(self) -> StateMessages:
        """Drop closed calls whose closing batch is committed (no re-delivery can reach them now);
        returns their tombstones, by partition."""
        committed = self.app.consumer._committed_offset
        by_partition: StateMessages = {}
        for p, rt in self.runtimes.items():
            messages = by_partition.setdefault(p, [])
            done = committed.get(TP(self.topic, p))
            if done is None:
                continue
            tombstones: list[Message] = []
            evicted: list[str] = []
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
                evicted.append(cid)
                rt.processor.closed.add(cid, st.end_ms or 0)
                if cid in rt.written:  # else never written (see _state_messages): nothing to tombstone
                    rt.written.discard(cid)
                    tombstones.append(self._changelog(p, cid, None))
            new = rt.processor.closed.take_new()
            if new:
                # The closed-call memory before the tombstones, on the same partition: a restart never
                # finds a dropped call neither in the table nor in the memory.
                key = call_table.closed_key(p, f"{done}-{uuid.uuid4().hex[:8]}")
                messages.append(self._changelog(p, key, call_table.closed_value(p, new)))
            led = rt.processor.ledger
            before = led.tracked()
            led.settle(evicted)
            if led.tracked() != before:
                # Their debits are settled now: the ledger's record before the tombstones (its
                # last_settled names these calls, so a restart that still finds one does not count it twice).
                messages.append(self._changelog(p, call_table.ledger_key(p), {"p": p, **led.to_dict()}))
            messages += tombstones
        return {p: msgs for p, msgs in by_partition.items() if msgs}

    # -- status -------------------------------------------------------------------------------------
    def status(self, state: str = "running") -> dict[str, Any]:
        """What ``sipledger status`` shows of this worker."""
        now = _now_ms()
        parts: dict[str, Any] = {}
        for p in sorted(self.assigned | set(self.runtimes)):
            rt = self.runtimes.get(p)
            if rt is None:
                parts[str(p)] = {"state": "restoring"}
            else:
                parts[str(p)] = {"state": "caught_up" if rt.caught_up else "catching_up",
                                 "since_ms": rt.served_at_ms, "offset": rt.last_offset,
                                 "open_calls": sum(1 for s in rt.processor.states.values() if not s.closed),
                                 "restore": rt.restore}
        return {"worker": self.worker_id, "app_id": self.app_id, "host": socket.gethostname(),
                "pid": os.getpid(), "state": state, "ts_ms": now, "started_ms": self.started_ms,
                "topic": self.topic, "changelog": self.changelog_topic, "partitions": parts,
                "restore_failures": self.restore_failures,
                "writer": {"pending_rows": self.writer.pending_rows,
                           "pending_batches": self.writer.pending_batches, "alive": self.writer.alive()},
                "deliveries_in_flight": sum(1 for f in self._flights if not f.done()),
                "stats": dict(self.stats)}

    def _maybe_publish_status(self) -> None:
        now = time.monotonic()
        if self._status_task is not None and not self._status_task.done():
            return  # the last one is still under way (a broker that is away): skip, do not pile up
        if not self._status_dirty and now - self._status_at < STATUS_INTERVAL_S:
            return
        self._status_at = now
        self._status_dirty = False
        self._status_task = asyncio.ensure_future(self.publish_status(self.status()))

    async def publish_status(self, status: dict[str, Any], timeout: float = BROKER_CALL_S) -> None:
        """Best effort: status is information, never worth holding anything up for."""
        producer = self.status_producer
        try:
            if producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap, acks=1, linger_ms=0,
                                            request_timeout_ms=int(timeout * 1000),
                                            client_id=f"{self.app_id}-status")
                await asyncio.wait_for(producer.start(), timeout)
                self.status_producer = producer
            await asyncio.wait_for(producer.send_and_wait(
                self.status_topic, key=self.worker_id.encode(), value=_dumps(status)), timeout)
            self._broker_ok_ms = _now_ms()
        except Exception as exc:
            log.debug("publishing the worker status failed: %s", exc)
            self.status_producer = None
            if producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), timeout)

    # -- shutdown -----------------------------------------------------------------------------------
    async def shutdown(self, reason: str) -> None:
        """Stop within ``pipeline.shutdown_grace`` + a few broker calls, delivering what is in flight if
        it can and acking nothing that is not; then end the process."""
        if self.stopping:
            return
        self.stopping = True
        self._served.set()
        grace = self.cfg.pipeline.shutdown_grace
        log.info("%s: stopping; waiting up to %.1f s for the deliveries in flight", reason, grace)
        drained = await self._quiesce(grace)
        self.epoch += 1  # nothing started from here on writes state
        consumer = self.app.consumer
        if drained:
            try:
                await asyncio.wait_for(consumer.commit(), SHUTDOWN_CALL_S)
            except Exception as exc:
                log.warning("committing offsets at shutdown failed (%s); they are re-read", exc or "timeout")
        else:
            log.warning("deliveries still in flight after %.1f s: not acked, their events are re-read by "
                        "the next owner", grace)
        # Both bounded, and side by side: with the broker away each would use its whole bound.
        last = self.status("stopped")
        await asyncio.gather(self._leave_group(), self.publish_status(last, SHUTDOWN_CALL_S),
                             self.state_writers.close(SHUTDOWN_CALL_S))
        self.writer.kill()  # rows of undelivered batches: their events are re-read, so are the rows
        log.info("stopped (%d events, %d CDRs processed)", self.stats["events"], self.stats["cdrs"])
        _exit_now(0)

    async def _request_rejoin(self) -> None:
        try:
            thread = cast(Any, self.app.consumer)._thread
            coordinator = thread._ensure_consumer()._coordinator

            async def rejoin() -> None:  # on the consumer thread's loop, which owns the coordinator
                coordinator.request_rejoin()

            await asyncio.wait_for(thread.call_thread(rejoin), BROKER_CALL_S)
        except Exception as exc:
            log.warning("asking the group to rebalance failed (%s)", exc or "timeout")

    async def _leave_group(self) -> None:
        # So that the group moves this worker's partitions now rather than after the session timeout.
        # Closing the coordinator, not only sending LeaveGroup: a coordinator left running rejoins the
        # group at once, and the group then waits for this dead member's session to expire.
        try:
            thread = cast(Any, self.app.consumer)._thread
            coordinator = thread._ensure_consumer()._coordinator
            await asyncio.wait_for(thread.call_thread(coordinator.close), SHUTDOWN_CALL_S)
        except Exception as exc:
            log.info("leaving the consumer group failed (%s); the group notices after the session timeout",
                     exc or "timeout")


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread of its own: a blocked read never holds up the loop, nor exit
    (the default executor's threads are joined when a loop closes)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"sipledger-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await fut


class PipelineWorker(faust.Worker):
    """faust's Worker with sipledger's logging and a bounded stop.

    * Logging: ``sipledger.logsetup`` instead of faust's colorlog set-up (escape codes in redirected
      logs, INFO chatter of every client): the level given here applies to sipledger's loggers.
    * SIGTERM/SIGINT: ``KafkaPipeline.shutdown`` instead of faust's stop, which could hang in aiokafka's
      consumer thread (stack-facts: after SIGTERM the worker closed its loop and hung until SIGKILL);
      a watchdog thread ends the process if even that does not finish in time.
    """

    logger = logging.getLogger("faust.pipeline.worker")

    def __init__(self, app: faust.App, pipe: KafkaPipeline, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.pipe = pipe
        # faust's terminal spinner writes cursor escape codes even into a redirected log.
        self.spinner = None
        self._stopping: asyncio.Future[None] | None = None

    def _setup_logging(self) -> None:
        logsetup.configure(self.loglevel or "warn")

    def _arm_watchdog(self) -> None:
        limit = self.pipe.cfg.pipeline.shutdown_grace + SHUTDOWN_MARGIN_S

        def expire() -> None:
            log.error("not stopped within %.1f s; exiting now", limit)
            _exit_now(0)

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        timer.start()

    def _stop_on(self, reason: str) -> None:
        if self._stopping is None:
            self._arm_watchdog()
            self._stopping = asyncio.ensure_future(self.pipe.shutdown(reason), loop=self.loop)

    def _on_sigterm(self) -> None:
        self._stop_on("SIGTERM")

    def _on_sigint(self) -> None:
        self._stop_on("SIGINT")


def _liveness_record(proc: Processor) -> dict[str, Any]:
    """A partition's node record in the changelog (key ``~liveness/<p>``): node clocks, newest heartbeats,
    probe addresses and the calls handed over from lost nodes (to release them if those come back)."""
    snap = proc.snapshot_nodes()
    return {"clocks": snap["clocks"], "beats": snap["heartbeats"], "addresses": snap["addresses"],
            "taken_over": snap["taken_over"], "gateways": snap["gateways"]}


def _brokers(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def faust_settings(cfg: Config) -> dict[str, Any]:
    """The group's timing, from ``pipeline.*`` keys, as faust settings (faust passes them to aiokafka's
    consumer as session_timeout_ms, heartbeat_interval_ms and rebalance_timeout_ms)."""
    p = cfg.pipeline
    return {"broker_session_timeout": p.session_timeout, "broker_heartbeat_interval": p.heartbeat_interval,
            "broker_rebalance_timeout": p.rebalance_timeout,
            # faust refuses a session timeout above the request timeout (90 s by default).
            "broker_request_timeout": max(90.0, p.session_timeout + 5.0)}


def make_app(cfg: Config, app_id: str = DEFAULT_APP_ID, batch_size: int = DEFAULT_BATCH,
             ready_file: str | None = None, store_events: bool = True, **settings: Any) -> faust.App:
    """The faust app: batch path on the events topic, restores, enforcement timer.

    ``batch_size`` is the most records one fetch (one batch) holds. ``settings`` are passed to
    ``faust.App``. The pipeline object is ``app.sipledger`` (stats, runtimes) for tests and benchmarks.
    """
    n = cfg.kafka.partitions
    # faust's own folder (it keeps nothing there: no faust table) goes into the working directory, which a
    # service can write (systemd's StateDirectory), not beside the config (/etc/sipledger), which it may not.
    datadir = Path(".sipledger", "faust", app_id).resolve()
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    conf: dict[str, Any] = {
        "broker": _brokers(cfg.kafka.bootstrap),
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
        # No faust table, so no standby replicas: a restore reads the compacted changelog instead.
        "table_standby_replicas": 0,
        # faust's leader-election topic serves nothing here (no faust table, no leader-only work).
        "topic_disable_leader": True,
        "autodiscover": False,
        **faust_settings(cfg),
    }
    conf.update(settings)
    app = PipelineApp(app_id, **conf)
    events = app.topic(cfg.kafka.topic_events, key_serializer="raw", value_serializer="raw", partitions=n)
    pipe = KafkaPipeline(cfg, app, store_events=store_events, ready_file=ready_file)
    app.sipledger = pipe  # type: ignore[attr-defined]
    # Subscribed through faust's conductor (so faust assigns, seeks and commits it), consumed in batches.
    app.topics.add(events)
    consumer = cast(BatchConsumer, app.consumer)
    consumer.batch_handlers[cfg.kafka.topic_events] = pipe.process_records
    consumer.gate = pipe

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        await pipe.on_assigned(assigned)

    @app.timer(TICK_INTERVAL)
    async def _tick() -> None:
        try:
            await pipe.on_timer()
        except Exception:
            log.critical("tick failed; exiting", exc_info=True)
            _exit_now(EXIT_FAILED)

    return app


def ensure_topics(cfg: Config, app_id: str) -> None:
    """The events topic must exist; the changelog and status topics are created if missing (compacted).

    Raises ``RuntimeError`` with a one-line reason. The changelog must have as many partitions as the
    events topic: changelog partition ``p`` holds the states of events partition ``p``.
    """
    from sipledger.stack.kafka_broker import BALANCES_CONFIGS, create_topics, topic_partitions
    from sipledger.stack.process import StackError

    bootstrap = cfg.kafka.bootstrap
    changelog = call_table.changelog_topic(app_id)
    try:
        counts = topic_partitions(bootstrap, [cfg.kafka.topic_events, changelog])
        events = counts.get(cfg.kafka.topic_events)
        if not events:
            raise RuntimeError(f"no topic {cfg.kafka.topic_events!r} (kafka.topic_events) on Kafka at "
                               f"{bootstrap}: create it first (`sipledger stack init`)")
        if counts.get(changelog, events) != events:
            raise RuntimeError(f"changelog topic {changelog!r} has {counts[changelog]} partitions, the "
                               f"events topic {events}: each events partition needs its own changelog "
                               "partition")
        create_topics(bootstrap, {changelog: events, status_topic(app_id): 1,
                                  cfg.kafka.topic_signalling: events, cfg.kafka.topic_balances: 1},
                      configs={changelog: CHANGELOG_CONFIGS, status_topic(app_id): STATUS_CONFIGS,
                               cfg.kafka.topic_balances: BALANCES_CONFIGS})
    except StackError as exc:
        raise RuntimeError(str(exc)) from None
    except RuntimeError:
        raise
    except Exception as exc:
        raise RuntimeError(f"Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from None


def run_worker(cfg: Config, app_id: str = DEFAULT_APP_ID, loglevel: str = "warn",
               batch_size: int = DEFAULT_BATCH, ready_file: str | None = None, store_events: bool = True,
               **settings: Any) -> None:
    """Run one worker in this process until it is stopped (SIGTERM/SIGINT)."""
    logsetup.configure(loglevel)
    try:
        ensure_topics(cfg, app_id)
    except RuntimeError as exc:
        log.critical("cannot start: %s", exc)
        _exit_now(EXIT_UNAVAILABLE)
    app = make_app(cfg, app_id=app_id, batch_size=batch_size, ready_file=ready_file,
                   store_events=store_events, **settings)
    try:  # metrics.pipeline_port: read at scrape time from the worker's own state
        serve_pipeline(cfg, faust_families(app.sipledger))  # type: ignore[attr-defined]
    except config_mod.ConfigError as exc:
        log.critical("cannot start: %s", exc)
        _exit_now(1)
    worker = PipelineWorker(app, app.sipledger, loglevel=loglevel, quiet=True)  # type: ignore[attr-defined]
    # Call analysis: records of the call-signalling topic into the store, in a thread of their own.
    from pipeline.signalling_ingest import start_kafka_follower

    start_kafka_follower(cfg, app_id)
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
