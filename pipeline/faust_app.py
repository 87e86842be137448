"""Kafka mode of the pipeline: a faust worker around the shared ``Processor``.

How to run it
-------------
* ``python3 -m pipeline.faust_app worker --config sipledger.toml [--set k=v ...] [-l warn]
  [--app-id sipledger-pipeline] [--ready-file PATH] [--batch-size 2000]``
* from Python / the CLI: ``pipeline.faust_app.run(cfg)`` (blocks until the worker stops; SIGTERM/SIGINT stop
  it). ``run(cfg, {"app_id": ..., "loglevel": ..., "batch_size": ..., "ready_file": ...})`` overrides.
* Start workers with ``start_new_session=True`` and stop them with
  ``sipledger.stack.process.terminate_group(pid, grace)``: a faust worker can hang in aiokafka's consumer
  thread after SIGTERM, so every stop must be able to end in SIGKILL. A SIGKILL loses nothing (below).
* The events topic (``kafka.topic_events``) must exist before the worker starts; the worker creates its
  own changelog topic ``<app id>-call-state-changelog``.

Design
------
* One agent on ``kafka.topic_events`` (raw bytes, keyed by call_id) takes batches with
  ``stream.take_events``. Every partition has its own ``Processor``: a call lives on one partition, and the
  B2BUA broadcasts node.heartbeat to every partition, so each processor sees every node. No rule lives here.
* State: a changelog-backed faust Table ``call-state`` (memory store; the changelog is the durable copy
  and is replayed on start). Key = call_id, value = ``{"p": partition, "s": CallState.to_dict()}``;
  key ``~liveness/<p>`` holds the partition's node last-seen times. Changelog writes go to partition ``p``
  explicitly (``Table.send_changelog``) so the timer, which has no current event, can write too. On
  partition assignment (table recovery done) the partition's Processor is restored from the table and
  its DeadlineQueue is rebuilt from the states: deadlines survive a restart.
* Order per batch (and per timer tick), all under one lock:
  1. fold events (``Processor.feed_raw``: invalid ones become dead letters);
  2. publish commands / alerts / CDRs / dead letters with a separate aiokafka producer and wait for the
     broker's acks (retried until acknowledged);
  3. write CDRs, alerts and call events through ``StoreSink`` and retry ``flush()`` until it returns True;
  4. only then write the touched call states to the changelog;
  5. return, which lets ``take_events`` ack the batch; faust commits acked offsets (after flushing its
     producer, i.e. the changelog writes) every ``broker_commit_interval``.
  A crash anywhere re-delivers the uncommitted events onto a state that is at most as new as the log:
  duplicates of applied events are ignored by the core, and anything re-emitted (same CDR content,
  deterministic alert/command ids) is folded by the store's ReplacingMergeTree + FINAL and deduped by
  nodes. Writing state before outputs would lose CDRs, so that order is the point of the design.
* Time: a 0.1 s timer calls ``Processor.tick`` with the wall clock, but only for partitions that have
  caught up with the log since assignment (processed up to the highwater seen then). A worker that was
  down must first read the backlog - which may hold the call.terminated - before calling anything a
  zombie or a node lost.
* Closed calls stay in memory and in the table until the consumer's committed offset has passed the
  batch that closed them (a re-delivery can then no longer reach them); then they are dropped and
  tombstoned, which keeps the changelog and recovery small.
* An unexpected exception ends the process at once (``os._exit``) instead of letting faust ack the batch
  on the way out: a restart re-delivers it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP, EventT

from pipeline.dead_letter import dead_letter_record
from pipeline.domain import CallState
from pipeline.processor import Outputs, Processor, load_decks, policy_from_config
from pipeline.store_sink import StoreSink
from sipledger import config as config_mod
from sipledger.config import Config
from sipledger.store import Store, migrate, open_store

log = logging.getLogger("sipledger.pipeline.faust")

DEFAULT_APP_ID = "sipledger-pipeline"
DEFAULT_BATCH = 2000
TABLE_NAME = "call-state"
LIVENESS_PREFIX = "~liveness/"
TICK_INTERVAL = 0.1
EVICT_INTERVAL = 2.0


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


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
    live_written: dict[str, int] = field(default_factory=dict)


class KafkaPipeline:
    """The worker's state and I/O; faust only calls ``on_recover``, ``process_batch`` and ``on_timer``."""

    def __init__(self, cfg: Config, app: faust.App, table: faust.Table, store_events: bool = True,
                 ready_file: str | None = None) -> None:
        self.cfg = cfg
        self.app = app
        self.table = table
        self.topic = cfg.kafka.topic_events
        self.policy = policy_from_config(cfg)
        self.sell, self.buy = load_decks(cfg)
        self.bill_modes = {a.name: a.bill_mode for a in cfg.accounts}
        self.runtimes: dict[int, PartitionRuntime] = {}
        # One lock: the agent and the timer both mutate processors and share the sink and producer.
        self.lock = asyncio.Lock()
        self.sink = StoreSink(self._open_store, batch_size=cfg.pipeline.batch_size, store_events=store_events)
        self.producer: AIOKafkaProducer | None = None
        self.ready_file = ready_file
        self._ready_written = False
        self._last_evict = 0.0
        self._assigned_at: float | None = None
        self.stats = {"events": 0, "cdrs": 0, "alerts": 0, "commands": 0, "dead_letters": 0}

    # -- resources ----------------------------------------------------------------------------------
    def _open_store(self) -> Store:
        store = open_store(self.cfg.store.url, str(self.cfg.base_dir))
        migrate(store)  # idempotent; done on every (re)connect so a fresh database works too
        return store

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap, acks="all",
                                        linger_ms=5, max_batch_size=256 * 1024,
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
            self._assigned_at = time.time()
        async with self.lock:
            for p in list(self.runtimes):
                if p not in assigned:
                    del self.runtimes[p]  # revoked: another worker owns its calls and deadlines now
            new = sorted(assigned - set(self.runtimes))
            if new:
                self._restore(new)
        log.info("assigned partitions %s of %s (restored %s)", sorted(assigned), self.topic, new)

    def _restore(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        states: dict[int, dict[str, Any]] = {p: {} for p in wanted}
        live: dict[int, dict[str, int]] = {p: {} for p in wanted}
        for value in self.table.data.values():
            if not isinstance(value, dict) or value.get("p") not in wanted:
                continue
            p = value["p"]
            if "s" in value:
                states[p][value["s"]["call_id"]] = value["s"]
            elif "live" in value:
                live[p] = value["live"]
        for p in wanted:
            proc = self._new_processor()
            proc.restore({"states": states[p], "liveness": {"last_seen": live[p], "calls": {}}})
            for st in proc.states.values():
                proc.liveness.track(st)  # which open calls each node owns: derived, not persisted
            rt = PartitionRuntime(proc, live_written=dict(live[p]))
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
                Path(self.ready_file).write_text(json.dumps({
                    "partitions": sorted(self.runtimes), "assigned_at": self._assigned_at,
                    "ready_at": time.time(), "events": self.stats["events"], "cdrs": self.stats["cdrs"]}))
                self._ready_written = True
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

    # -- input --------------------------------------------------------------------------------------
    async def process_batch(self, events: Sequence[EventT]) -> None:
        t_in = time.perf_counter()
        if os.environ.get("SIPLEDGER_FAUST_PROFILE"):
            log.error("PROF gap=%.4f n=%d", t_in - getattr(self, "_t_out", t_in), len(events))
        try:
            await self._process_batch(events)
        finally:
            self._t_out = time.perf_counter()
            if os.environ.get("SIPLEDGER_FAUST_PROFILE"):
                log.error("PROF body=%.4f", self._t_out - t_in)

    async def _process_batch(self, events: Sequence[EventT]) -> None:
        async with self.lock:
            touched: dict[int, set[str]] = {}
            beats: set[int] = set()
            sink = self.sink
            for ev in events:
                msg = ev.message
                p = msg.partition
                rt = self._runtime(p)
                event = rt.processor.feed_raw(msg.value, source=self.topic)
                if msg.offset > rt.last_offset:
                    rt.last_offset = msg.offset
                if event is None:
                    continue
                if event["type"] == "node.heartbeat":
                    beats.add(p)
                    continue
                touched.setdefault(p, set()).add(event["call_id"])
                sink.add_event(event)
            self.stats["events"] += len(events)
            work = [(p, rt.processor.take()) for p, rt in self.runtimes.items()]
            await self._deliver(work, touched, beats)

    async def on_timer(self) -> None:
        await self._update_catch_up()
        now_ms = int(time.time() * 1000)
        async with self.lock:
            work: list[tuple[int, Outputs]] = []
            for p, rt in self.runtimes.items():
                if rt.caught_up:
                    rt.processor.tick(now_ms)
                    out = rt.processor.take()
                    if out:
                        work.append((p, out))
            if work:
                await self._deliver(work, {}, set())
            if time.monotonic() - self._last_evict >= EVICT_INTERVAL:
                self._last_evict = time.monotonic()
                self._evict()

    # -- output -------------------------------------------------------------------------------------
    async def _deliver(self, work: list[tuple[int, Outputs]], touched: dict[int, set[str]],
                       beats: set[int]) -> None:
        work = [(p, out) for p, out in work if out]
        for p, out in work:
            ids = touched.setdefault(p, set())
            ids.update(m["call_id"] for m in out.cdrs)
            ids.update(m["call_id"] for m in out.alerts)
            ids.update(m["call_id"] for m in out.commands)
        if work:
            await self._publish(work)
            for _, out in work:
                for cdr in out.cdrs:
                    self.sink.add_cdr(cdr)
                for alert in out.alerts:
                    self.sink.add_alert(alert)
        await self._flush_store()
        self._write_state(touched, beats)

    async def _publish(self, work: list[tuple[int, Outputs]]) -> None:
        k = self.cfg.kafka
        messages: list[tuple[str, bytes | None, bytes]] = []
        for _, out in work:
            for cmd in out.commands:
                messages.append((k.topic_commands, cmd["call_id"].encode(), _dumps(cmd)))
            for alert in out.alerts:
                messages.append((k.topic_alerts, alert["call_id"].encode(), _dumps(alert)))
                log.warning("zombie alert %s: call %s (%s via %s) %s", alert["kind"], alert["call_id"],
                            alert["account"], alert["vendor"], alert["message"])
            for cdr in out.cdrs:
                messages.append((k.topic_cdrs, cdr["call_id"].encode(), _dumps(cdr)))
            for source, raw, err in out.dead_letters:
                messages.append((k.topic_dead_letter, None, _dumps(dead_letter_record(source, raw, err))))
                log.warning("dead letter from %s: %s", source, err)
            self.stats["cdrs"] += len(out.cdrs)
            self.stats["alerts"] += len(out.alerts)
            self.stats["commands"] += len(out.commands)
            self.stats["dead_letters"] += len(out.dead_letters)
        delay = 0.2
        while True:  # at-least-once: resend everything until the broker acknowledged all of it
            try:
                producer = await self._producer()
                futures = [await producer.send(topic, value=value, key=key) for topic, key, value in messages]
                await producer.flush()
                for fut in futures:
                    fut.result()
                return
            except Exception as exc:
                log.warning("publishing %d outputs failed (%s); retry in %.1f s", len(messages), exc, delay)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _flush_store(self) -> None:
        # Blocking driver calls run in a thread so the faust loop (consumer, timers) keeps going; the
        # lock keeps the sink single-threaded. flush() backs off by itself while the store is down.
        while not await asyncio.to_thread(self.sink.flush):
            await asyncio.sleep(0.1)

    def _write_state(self, touched: dict[int, set[str]], beats: set[int]) -> None:
        table, data = self.table, self.table.data
        for p, ids in touched.items():
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            states = rt.processor.states
            for cid in ids:
                st: CallState | None = states.get(cid)
                if st is None:
                    continue
                value = {"p": p, "s": st.to_dict()}
                data[cid] = value
                table.send_changelog(p, cid, value)
                if st.closed and cid not in rt.closed_ids:
                    rt.closed.append((rt.last_offset, cid))
                    rt.closed_ids.add(cid)
        for p in beats:
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            seen = rt.processor.liveness.to_dict()["last_seen"]
            if seen != rt.live_written:
                key = f"{LIVENESS_PREFIX}{p}"
                value = {"p": p, "live": seen}
                data[key] = value
                table.send_changelog(p, key, value)
                rt.live_written = dict(seen)

    def _evict(self) -> None:
        """Drop closed calls whose closing batch is committed (no re-delivery can reach them now)."""
        committed = self.app.consumer._committed_offset
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
                with contextlib.suppress(KeyError):
                    del self.table.data[cid]
                self.table.send_changelog(p, cid, None, value_serializer="raw")


def _brokers(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def make_app(cfg: Config, app_id: str = DEFAULT_APP_ID, batch_size: int = DEFAULT_BATCH,
             ready_file: str | None = None, store_events: bool = True, **settings: Any) -> faust.App:
    """The faust app: agent on the events topic, call-state table, enforcement timer.

    ``settings`` are passed to ``faust.App`` (e.g. ``store="rocksdb://"``). The pipeline object is
    ``app.sipledger`` (stats, runtimes) for tests and benchmarks.
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
        "broker_max_poll_records": max(500, batch_size),
        "table_standby_replicas": 0,
        "autodiscover": False,
    }
    conf.update(settings)
    app = faust.App(app_id, **conf)
    events = app.topic(cfg.kafka.topic_events, key_serializer="raw", value_serializer="raw", partitions=n)
    # No key/value types: faust then uses its json codec both ways (str keys, dict values).
    table = app.Table(TABLE_NAME, default=None, partitions=n)
    pipe = KafkaPipeline(cfg, app, table, store_events=store_events, ready_file=ready_file)
    app.sipledger = pipe  # type: ignore[attr-defined]

    @table.on_recover
    async def _recovered() -> None:
        await pipe.on_recover()

    @app.agent(events, name="sipledger-call-events")
    async def _process(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(batch_size, within=0.2):
            try:
                await pipe.process_batch(batch)
            except Exception:
                # Leaving the loop would let take_events ack (and faust commit) this batch. Die instead;
                # the restarted worker re-reads it from the last committed offset.
                log.critical("batch failed; exiting without committing it", exc_info=True)
                logging.shutdown()
                os._exit(70)

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
               batch_size: int = DEFAULT_BATCH, ready_file: str | None = None, **settings: Any) -> None:
    """Run one worker in this process until it is stopped (SIGTERM/SIGINT)."""
    app = make_app(cfg, app_id=app_id, batch_size=batch_size, ready_file=ready_file, **settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


def run(cfg: Config, overrides: Mapping[str, Any] | None = None) -> None:
    """Entry point of ``sipledger pipeline`` when events.log is kafka://...

    ``overrides``: ``app_id``, ``loglevel``, ``batch_size``, ``ready_file`` and any ``faust.App`` setting.
    """
    opts = dict(overrides or {})
    run_worker(cfg, app_id=opts.pop("app_id", DEFAULT_APP_ID), loglevel=opts.pop("loglevel", "warn"),
               batch_size=int(opts.pop("batch_size", DEFAULT_BATCH)), ready_file=opts.pop("ready_file", None),
               **opts)


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
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, args.set)
    # faust's Worker reads sys.argv for its own options; give it only the program name.
    sys.argv = sys.argv[:1]
    run_worker(cfg, app_id=args.app_id, loglevel=args.loglevel, batch_size=args.batch_size,
               ready_file=args.ready_file)


if __name__ == "__main__":
    main()
