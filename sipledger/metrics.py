"""Prometheus endpoints: one small HTTP server per process, reading the process's own counters.

Each process (a B2BUA node, a pipeline worker, the embedded runner) hands a function that returns
its metric families when scraped; nothing is updated on the hot path for Prometheus' sake (the
counters already exist for the core's own use), and a scrape reads them without stopping anything.
Off unless ``metrics.port`` (or the per-process key) is set.
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


class _Collector:
    def __init__(self, families: Families) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._families()
        except Exception:  # a scrape must never take the process down
            log.exception("collecting metrics failed")


def serve(host: str, port: int, families: Families) -> tuple[Any, threading.Thread]:
    """Start the endpoint (``/metrics``); returns the server and its thread (``server.shutdown()``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))  # type: ignore[arg-type]
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server, thread


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
