"""The pipeline's Prometheus metrics (``metrics.pipeline_port``): embedded runner and faust worker.

Both drivers already keep what an operator watches (events read, CDRs, alerts, commands, dead letters,
the store's pending rows, the partitions and their restores); the families here read that state when
scraped, from the endpoint's thread, without the drivers' locks: the values are plain ints and sizes,
and a dict that grows during a read is read again (``sipledger.metrics``). The only thing the drivers
count for Prometheus' sake is ``PipelineCounts`` (alerts by kind, commands by type, restores), one
increment per output, which they did not need before.

Names (``_total`` is added to counters on the wire), shared by both modes where the quantity is:

* ``sipledger_pipeline_events_total``, ``_cdrs_total``, ``_dead_letters_total``,
  ``_alerts_total{kind}``, ``_commands_total{type}``
* ``sipledger_pipeline_deadlines_pending{partition}``, ``_open_calls{partition}`` (embedded:
  ``partition="journal"``)
* ``sipledger_pipeline_sink_pending_rows``, ``_sink_oldest_pending_seconds``,
  ``_sink_rows_written_total{table}``
* embedded only: ``_journal_lag_bytes``, ``_late_events_total``, ``_clamped_events_total``,
  ``_stale_verdicts_total``, ``_sink_failures``
* faust only: ``_partition_lag{partition}`` (highwater minus the next offset to fold),
  ``_partition_commit_lag{partition}`` (highwater minus the group's committed offset),
  ``_partition_caught_up{partition}``, ``_partition_restore_seconds{partition}``,
  ``_partition_restore_records{partition}``, ``_partitions_assigned``, ``_partitions_restoring``,
  ``_restores_total``, ``_restore_failures_total``, ``_batches_total``, ``_deliveries_in_flight``,
  ``_sink_pending_batches``, ``_store_writer_alive``
* ``sipledger_pipeline_info{mode, worker}`` = 1
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from sipledger.config import Config, ConfigError
from sipledger.metrics import counter, gauge, serve

if TYPE_CHECKING:
    from pipeline.embedded import EmbeddedPipeline
    from pipeline.faust_app import KafkaPipeline
    from pipeline.processor import Outputs

Families = Callable[[], Iterator[Metric]]

# Every family each driver yields (counters get ``_total`` on the wire): what dashboards may name.
COMMON_NAMES = ("sipledger_pipeline_events", "sipledger_pipeline_cdrs", "sipledger_pipeline_dead_letters",
                "sipledger_pipeline_alerts", "sipledger_pipeline_commands",
                "sipledger_pipeline_deadlines_pending", "sipledger_pipeline_open_calls",
                "sipledger_pipeline_sink_pending_rows", "sipledger_pipeline_sink_oldest_pending_seconds",
                "sipledger_pipeline_sink_rows_written", "sipledger_pipeline_info")
EMBEDDED_NAMES = (*COMMON_NAMES, "sipledger_pipeline_late_events", "sipledger_pipeline_clamped_events",
                  "sipledger_pipeline_stale_verdicts", "sipledger_pipeline_journal_lag_bytes",
                  "sipledger_pipeline_sink_failures")
FAUST_NAMES = (*COMMON_NAMES, "sipledger_pipeline_batches", "sipledger_pipeline_partition_lag",
               "sipledger_pipeline_partition_commit_lag", "sipledger_pipeline_partition_caught_up",
               "sipledger_pipeline_partition_restore_seconds", "sipledger_pipeline_partition_restore_records",
               "sipledger_pipeline_partitions_assigned", "sipledger_pipeline_partitions_restoring",
               "sipledger_pipeline_restores", "sipledger_pipeline_restore_failures",
               "sipledger_pipeline_deliveries_in_flight", "sipledger_pipeline_sink_pending_batches",
               "sipledger_pipeline_store_writer_alive")


class PipelineCounts:
    """What a driver counts as it publishes: alerts by kind, commands by type, partitions restored.

    Per driver, not per Processor: a faust worker builds new processors at every assignment, and a
    Prometheus counter must only grow for the life of the process."""

    __slots__ = ("alerts", "commands", "restores")

    def __init__(self) -> None:
        self.alerts: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.restores = 0

    def add(self, out: Outputs) -> None:
        for cmd in out.commands:
            self.commands[cmd["type"]] += 1
        for alert in out.alerts:
            self.alerts[alert["kind"]] += 1


def _common(stats: dict[str, int], counts: PipelineCounts) -> Iterator[Metric]:
    yield counter("sipledger_pipeline_events", "Events read from the log (heartbeats and refused ones too)",
                  stats["events"])
    yield counter("sipledger_pipeline_cdrs", "CDRs built", stats["cdrs"])
    yield counter("sipledger_pipeline_dead_letters", "Messages refused (dead-letter topic or file)",
                  stats["dead_letters"])
    yield counter("sipledger_pipeline_alerts", "Zombie alerts raised, by kind", labels=["kind"],
                  samples=(((k,), n) for k, n in sorted(counts.alerts.items())))
    yield counter("sipledger_pipeline_commands", "Commands issued to B2BUA nodes, by type", labels=["type"],
                  samples=(((t,), n) for t, n in sorted(counts.commands.items())))


def _info(mode: str, worker: str) -> Metric:
    return gauge("sipledger_pipeline_info", "This pipeline process", labels=["mode", "worker"],
                 samples=[((mode, worker), 1)])


def embedded_families(pipe: EmbeddedPipeline) -> Families:
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def collect() -> Iterator[Metric]:
        proc = pipe.processor
        yield from _common(pipe.stats, pipe.counts)
        yield counter("sipledger_pipeline_late_events", "Events of calls already closed (changed nothing)",
                      proc.late_events)
        yield counter("sipledger_pipeline_clamped_events", "Events dated too far ahead of their node's "
                      "clock (held back until confirmed)", proc.clamped_events)
        yield counter("sipledger_pipeline_stale_verdicts", "node.lost verdicts ignored: a newer heartbeat "
                      "of the node had been read", proc.stale_verdicts)
        yield gauge("sipledger_pipeline_deadlines_pending", "Call deadlines armed (caps, session expiries)",
                    labels=["partition"], samples=[(("journal",), len(proc.deadlines))])
        open_calls = sum(1 for s in list(proc.states.values()) if not s.closed)
        yield gauge("sipledger_pipeline_open_calls", "Calls open in the pipeline's state",
                    labels=["partition"], samples=[(("journal",), open_calls)])
        try:
            size = pipe.paths.events.stat().st_size
        except FileNotFoundError:
            size = 0
        yield gauge("sipledger_pipeline_journal_lag_bytes", "Bytes of the events journal not read yet",
                    max(0, size - pipe.read_offset))
        lag = pipe.sink.lag()
        yield from _sink(lag.pending_rows, lag.oldest_pending_s, pipe.sink.written.items())
        yield gauge("sipledger_pipeline_sink_failures", "Store writes failed in a row (0: the store "
                    "takes rows)", lag.failures)
        yield _info("embedded", worker)

    return collect


def _sink(pending: int, age: float, written: Iterable[tuple[str, int]]) -> Iterator[Metric]:
    yield gauge("sipledger_pipeline_sink_pending_rows", "Rows (CDRs, alerts, events) not yet acknowledged "
                "by the store", pending)
    yield gauge("sipledger_pipeline_sink_oldest_pending_seconds", "Age of the oldest row not yet "
                "acknowledged by the store (0: none)", age)
    yield counter("sipledger_pipeline_sink_rows_written", "Rows the store acknowledged, by table",
                  labels=["table"], samples=(((t,), n) for t, n in sorted(written)))


def faust_families(pipe: KafkaPipeline) -> Families:
    from faust.types import TP

    def collect() -> Iterator[Metric]:
        yield from _common(pipe.stats, pipe.counts)
        yield counter("sipledger_pipeline_batches", "Fetches folded", pipe.stats["batches"])
        consumer = pipe.app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        lag, commit_lag, caught_up, deadlines, open_calls = [], [], [], [], []
        restore_s, restore_records = [], []
        for p, rt in sorted(list(pipe.runtimes.items())):
            label = (str(p),)
            tp = TP(pipe.topic, p)
            hw = consumer.highwater(tp)
            if hw is not None:
                lag.append((label, max(0, hw - (rt.last_offset + 1))))
                done = committed.get(tp)
                commit_lag.append((label, max(0, hw - (done or 0))))
            caught_up.append((label, int(rt.caught_up)))
            deadlines.append((label, len(rt.processor.deadlines)))
            open_calls.append((label, sum(1 for s in list(rt.processor.states.values()) if not s.closed)))
            restore_s.append((label, float(rt.restore.get("seconds", 0.0))))
            restore_records.append((label, int(rt.restore.get("records", 0))))
        yield gauge("sipledger_pipeline_partition_lag", "Events on the broker not folded yet (highwater "
                    "minus the next offset)", labels=["partition"], samples=lag)
        yield gauge("sipledger_pipeline_partition_commit_lag", "Events past the group's committed offset "
                    "(re-read after a crash)", labels=["partition"], samples=commit_lag)
        yield gauge("sipledger_pipeline_partition_caught_up", "1 once the partition was read to the end it "
                    "had when restored", labels=["partition"], samples=caught_up)
        yield gauge("sipledger_pipeline_deadlines_pending", "Call deadlines armed (caps, session expiries)",
                    labels=["partition"], samples=deadlines)
        yield gauge("sipledger_pipeline_open_calls", "Calls open in the pipeline's state",
                    labels=["partition"], samples=open_calls)
        yield gauge("sipledger_pipeline_partition_restore_seconds", "Duration of the partition's last "
                    "changelog restore", labels=["partition"], samples=restore_s)
        yield gauge("sipledger_pipeline_partition_restore_records", "Changelog records read by the "
                    "partition's last restore", labels=["partition"], samples=restore_records)
        yield gauge("sipledger_pipeline_partitions_assigned", "Partitions assigned to this worker",
                    len(pipe.assigned))
        yield gauge("sipledger_pipeline_partitions_restoring", "Assigned partitions whose states are being "
                    "restored", len(pipe.assigned - pipe.runtimes.keys()))
        yield counter("sipledger_pipeline_restores", "Partitions restored from the changelog",
                      pipe.counts.restores)
        yield counter("sipledger_pipeline_restore_failures", "Restore attempts that failed",
                      pipe.restore_failures)
        yield gauge("sipledger_pipeline_deliveries_in_flight", "Folded batches whose outputs, rows or state "
                    "are not acknowledged yet", sum(1 for f in list(pipe._flights) if not f.done()))
        writer = pipe.writer
        yield from _sink(writer.pending_rows, writer.oldest_pending_s, dict(writer.written).items())
        yield gauge("sipledger_pipeline_sink_pending_batches", "Batches handed to the store writer and not "
                    "acknowledged yet", writer.pending_batches)
        yield gauge("sipledger_pipeline_store_writer_alive", "1 while the store writer process runs",
                    int(writer.alive()))
        yield _info("kafka", f"{pipe.app_id}@{pipe.worker_id}")

    return collect


def serve_pipeline(cfg: Config, families: Families) -> Any:
    """Start the endpoint when ``metrics.pipeline_port`` is set; the server (``sipledger.metrics.stop``)
    or None. A port that is taken raises ``ConfigError`` naming the key."""
    m = cfg.metrics
    if not m.pipeline_port:
        return None
    try:
        server, _ = serve(m.listen_host, m.pipeline_port, families)
    except OSError as exc:
        raise ConfigError("metrics.pipeline_port", f"cannot listen on {m.listen_host}:{m.pipeline_port}: "
                          f"{exc.strerror or exc}") from None
    return server
