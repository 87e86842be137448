"""Embedded mode: the pipeline in one process over the file journal, writing to chDB.

The same ``Processor`` as the faust worker. It follows the events journal from a
checkpointed byte offset, writes CDRs/alerts/events and the prepaid ledger to the store,
terminate commands to the commands journal and account.balance records to the balances
journal (the B2BUA follows both; ``balances.json``, written at each checkpoint, holds the
latest record of every account for a node that starts), alerts to the alerts journal and
webhook, and refused input to the dead-letter file. The checkpoint (offset + call
state snapshot) is saved only after the store acknowledged the rows, so a crash
re-reads at most the last unacknowledged stretch and the store's FINAL folds repeats.

The store never stalls decisions: while it refuses rows they stay buffered (up to
``pipeline.max_pending_rows``, then reading pauses) and reading, folding, commands and alerts go on.
Deadlines are judged on the nodes' own clocks, so nothing is decided from the wall clock
that ran meanwhile. Node liveness (``NodeWatch``) counts silence only while this runner is
caught up with the journal, probes a silent node, and writes a node.lost verdict into the
journal itself, where the Processor reads it back like any event (and replay will too).

Closed calls are dropped from the snapshot at each checkpoint into the closed-call memory,
persisted append-only beside the checkpoint (``pipeline-closed-calls.<gen>.bin``, the
checkpoint holding its generation and valid length), so a late redelivery is recognised
across restarts for ``pipeline.closed_call_retention``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.dead_letter import DeadLetterFile
from pipeline.domain import alert_line
from pipeline.domain.closed_calls import RECORD
from pipeline.gc_policy import settle_after_startup
from pipeline.metrics import PipelineCounts
from pipeline.node_watch import NodeWatch
from pipeline.processor import Outputs, Processor, save_json_atomic
from pipeline.query_server import QueryServer
from pipeline.signalling_ingest import JournalSignallingFollower, SignallingSink
from pipeline.store_sink import StoreSink
from pipeline.webhook import WebhookNotifier
from sipledger.config import Config
from sipledger.eventlog.journal import FileJournal, read_journal
from sipledger.eventlog.layout import EmbeddedPaths
from sipledger.store import Store, migrate, open_store

log = logging.getLogger("sipledger.pipeline")
# Rows are stored (and the input position committed) at least this often, and checkpoints written.
FLUSH_INTERVAL_S = 0.5
CHECKPOINT_INTERVAL_S = 2.0
# The closed-call file is rewritten (expired records dropped) once it holds this many times the live ones.
CLOSED_REWRITE_FACTOR = 2


def call_view(state: Any, now_ms: int, next_due: int | None) -> dict[str, Any]:
    """One active call as the current-call monitor shows it."""
    answer = state.answer_ms
    return {"call_id": state.call_id, "node": state.node, "account": state.account, "caller": state.caller,
            "callee": state.callee, "vendor": state.vendor, "gateway": state.gateway,
            "setup_ms": state.setup_ms, "answer_ms": answer,
            "duration_ms": (now_ms - answer) if answer else 0, "timer_mode": state.timer_mode,
            "next_deadline_ms": next_due}


class EmbeddedPipeline:
    def __init__(self, cfg: Config, store: Store | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.paths = EmbeddedPaths.from_config(cfg)
        self.clock = clock
        self.processor = Processor.from_config(cfg)
        self.store = store or open_store(cfg.store.url, str(cfg.base_dir))
        migrate(self.store)
        self.lock = threading.Lock()
        self.sink = StoreSink(self.store, batch_size=cfg.pipeline.batch_size)
        self.commands = FileJournal(self.paths.commands)
        self.balances = FileJournal(self.paths.balances)
        self.alerts = FileJournal(self.paths.alerts)
        self.dead = DeadLetterFile(self.paths.dead_letter)
        # Call analysis: the B2BUA's signalling records, stored beside (never before) the events' rows.
        self.signalling = JournalSignallingFollower(
            self.paths.signalling, self.paths.signalling_checkpoint,
            SignallingSink(self.store, cfg.trace.retention_days, self.dead.put, clock=clock))
        self.webhook = (WebhookNotifier(cfg.pipeline.webhook_url, self.paths.webhook_dead_letter)
                        if cfg.pipeline.webhook_url else None)
        p = cfg.pipeline
        self.watch = NodeWatch(p.node_timeout, f"embedded:{socket.gethostname()}:{os.getpid()}",
                               p.probe_attempts, p.probe_timeout, takeover=p.takeover)
        # Verdicts are written into the events journal, where this runner reads them back.
        self.verdicts = FileJournal(self.paths.events)
        self.offset = 0
        self._closed_gen = 0
        self._closed_bytes = 0
        self._load_checkpoint()
        # The latest account.balance record of every account (what balances.json holds for nodes).
        self.latest_balances = {a: self.processor.balance_record(a) for a in self.processor.ledger.books}
        self.read_offset = self.offset
        self._read_through_ms: int | None = None  # the node watch's measure of how far reading has come
        self._last_flush = 0.0
        self.server: QueryServer | None = None
        self.stats = {"events": 0, "cdrs": 0, "alerts": 0, "commands": 0, "dead_letters": 0}
        self.counts = PipelineCounts()  # alerts by kind, commands by type (pipeline/metrics.py)
        self._last_checkpoint = 0.0

    # -- checkpoint ---------------------------------------------------------------------------------
    def _load_checkpoint(self) -> None:
        try:
            cp = json.loads(self.paths.checkpoint.read_text())
        except FileNotFoundError:
            return
        self.offset = int(cp["offset"])
        self.processor.restore(cp["snapshot"])
        self._closed_gen = int(cp.get("closed_gen", 0))
        self._closed_bytes = int(cp.get("closed_bytes", 0))
        path = self.paths.closed_calls(self._closed_gen)
        if self._closed_bytes:
            try:
                with open(path, "r+b") as fh:
                    self.processor.closed.load(fh.read(self._closed_bytes))
                    # Records past the checkpoint belong to calls re-read from its offset: drop them.
                    fh.truncate(self._closed_bytes)
            except FileNotFoundError:
                log.error("%s is missing: late redeliveries of calls closed before this checkpoint will "
                          "not be recognised", path)
                self._closed_bytes = 0
        log.info("resuming at byte %d of %s with %d open calls and %d closed calls remembered", self.offset,
                 self.paths.events, len(self.processor.states), len(self.processor.closed))

    def _save_checkpoint(self) -> None:
        closed = self.processor.closed
        size = self._closed_bytes
        if size > CLOSED_REWRITE_FACTOR * RECORD * max(len(closed), 1) and size > 1 << 20:
            # Mostly expired records: start a new generation with the live ones only.
            old = self.paths.closed_calls(self._closed_gen)
            self._closed_gen += 1
            data = closed.entries()
            closed.take_new()
            self.paths.closed_calls(self._closed_gen).write_bytes(data)
            self._closed_bytes = len(data)
        else:
            old = None
            new = closed.take_new()
            if new:
                with open(self.paths.closed_calls(self._closed_gen), "ab") as fh:
                    fh.write(new)
                self._closed_bytes += len(new)
        snap = {"offset": self.offset, "snapshot": self.processor.snapshot(),
                "closed_gen": self._closed_gen, "closed_bytes": self._closed_bytes}
        save_json_atomic(self.paths.checkpoint, snap)
        # Every record up to here is flushed (_publish): the snapshot is current to the journal's size.
        save_json_atomic(self.paths.balances_snapshot, {
            "offset": self.paths.balances.stat().st_size if self.paths.balances.exists() else 0,
            "records": [self.latest_balances[a] for a in sorted(self.latest_balances)]})
        if old is not None:
            old.unlink(missing_ok=True)
        self._last_checkpoint = self.clock()

    # -- serving ------------------------------------------------------------------------------------
    def serve_queries(self) -> str:
        """Serve read queries and the active-call list on loopback; advertise it beside the store."""
        self.server = QueryServer(self.store, self.lock, self.active_calls)
        endpoint = self.server.start()
        advertise = getattr(self.store, "advertise", None)
        if advertise is not None:
            advertise(endpoint)
        return endpoint

    def active_calls(self) -> list[dict[str, Any]]:
        now_ms = int(self.clock() * 1000)
        with self.lock:
            return [call_view(s, now_ms, self.processor.deadlines.at(s.call_id))
                    for s in self.processor.active_calls()]

    # -- the loop -----------------------------------------------------------------------------------
    def step(self, max_events: int = 20_000, force_flush: bool = False) -> int:
        """Read what is new, process it, watch the nodes, store, checkpoint. Returns events read.

        Commands and alerts go out at once (they are what stops a zombie). Rows are stored in
        batches; the checkpoint is written only right after everything read so far is stored, so
        its offset and its call states always describe the same point of the log.
        """
        n = 0
        with self.lock:
            # Rows held for a store that refuses them: up to the bound reading goes on, then it pauses.
            caught_up = self.sink.pending() < self.cfg.pipeline.max_pending_rows
            wall_ms = int(self.clock() * 1000)
            if caught_up:
                for pos, raw in read_journal(self.paths.events, self.read_offset):
                    event = self.processor.feed_raw(raw, source=str(self.paths.events))
                    if event is not None:
                        if event["type"] == "node.heartbeat":
                            self.watch.heard(event, wall_ms)
                        self.sink.add_event(event, raw)
                    self.read_offset = pos
                    n += 1
                    if n >= max_events:
                        caught_up = False  # more may be waiting
                        break
            if caught_up:
                # Read to the end of the journal: everything appended before this pass began is read.
                self._read_through_ms = wall_ms
            self._watch_nodes()
            self._publish(self.processor.take())
            self.stats["events"] += n
            self.signalling.step(force=force_flush)
            now = self.clock()
            due = force_flush or self.sink.should_flush() or now - self._last_flush >= FLUSH_INTERVAL_S
            if not due or not self.sink.flush():
                return n
            self._last_flush = now
            self.offset = self.read_offset
            if force_flush or now - self._last_checkpoint >= CHECKPOINT_INTERVAL_S:
                self.processor.evict_closed()
                self._save_checkpoint()
        return n

    def _watch_nodes(self) -> None:
        verdicts = self.watch.step(int(self.clock() * 1000), self._read_through_ms,
                                   self.processor.node_calls.nodes())
        for event in verdicts:
            self.verdicts.publish(event)
        if verdicts:
            self.verdicts.flush()

    def _publish(self, out: Outputs) -> None:
        for cdr in out.cdrs:
            self.sink.add_cdr(cdr)
        for alert in out.alerts:
            self.sink.add_alert(alert)
            self.alerts.publish(alert)
            log.warning("%s", alert_line(alert))
            if self.webhook is not None:
                self.webhook.send(alert)
        for cmd in out.commands:
            self.commands.publish(cmd)
        for row in out.ledger:
            self.sink.add_ledger(row)
        for rec in out.balances:
            self.balances.publish(rec)
            self.latest_balances[rec["account"]] = {**rec, "held": [], "debited": []}
        for source, raw, err in out.dead_letters:
            self.dead.put(source, raw, err)
            log.warning("dead letter from %s: %s", source, err)
        for notice in out.notices:
            log.warning("%s", notice)
        self.commands.flush()
        self.balances.flush()
        self.alerts.flush()
        self.stats["cdrs"] += len(out.cdrs)
        self.stats["alerts"] += len(out.alerts)
        self.stats["commands"] += len(out.commands)
        self.stats["dead_letters"] += len(out.dead_letters)
        self.counts.add(out)

    def run(self, stop: threading.Event, interval: float = 0.05) -> None:
        settle_after_startup()
        while not stop.is_set():
            if self.step() == 0:
                stop.wait(interval)
        self.step(force_flush=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.webhook is not None:
            self.webhook.close()
        self.watch.close()
        for j in (self.commands, self.balances, self.alerts, self.dead, self.verdicts):
            j.close()
        self.store.close()
