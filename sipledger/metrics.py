"""Prometheus endpoints: one small HTTP server per process, reading the process's own counters.

Each process (a B2BUA node, a pipeline worker, the embedded runner) hands a function that returns
its metric families when scraped; nothing is updated on the hot path for Prometheus' sake (the
counters already exist for the core's own use), and a scrape reads them without stopping anything.
Off unless the process's key is set (``metrics.b2bua_port``, ``metrics.pipeline_port``).

A scrape runs on the endpoint's own thread while the process goes on mutating its counters, without a
lock: reading a dict that grows meanwhile may raise ``RuntimeError`` (changed size during iteration),
so a collection is read whole and retried a few times rather than served half.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger("sipledger.metrics")

Families = Callable[[], Iterable[Metric]]


# Attempts at reading a process's families whole while it mutates them (see the module docstring).
COLLECT_ATTEMPTS = 5


class _Collector:
    def __init__(self, families: Families) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for attempt in range(1, COLLECT_ATTEMPTS + 1):
            try:
                metrics = list(self._families())
            except RuntimeError:  # a dict grew while it was read: read again
                if attempt == COLLECT_ATTEMPTS:
                    log.exception("collecting metrics failed %d times", attempt)
                continue
            except Exception:  # a scrape must never take the process down
                log.exception("collecting metrics failed")
                return
            yield from metrics
            return


def serve(host: str, port: int, families: Families) -> tuple[Any, threading.Thread]:
    """Start the endpoint (``/metrics``); returns the server and its thread (``server.shutdown()``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))  # type: ignore[arg-type]
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server, thread


def stop(server: Any) -> None:
    """Stop an endpoint started by ``serve`` and free its port (blocks up to half a second)."""
    server.shutdown()
    server.server_close()


def counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
            samples: Iterable[tuple[Iterable[str], float]] = ()) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for values, v in samples:
        m.add_metric(list(values), v)
    return m


def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
          samples: Iterable[tuple[Iterable[str], float]] = ()) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for values, v in samples:
        m.add_metric(list(values), v)
    return m


def histogram(name: str, doc: str, buckets: list[tuple[str, int]], total: float) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=[(le, float(n)) for le, n in buckets], sum_value=total)
