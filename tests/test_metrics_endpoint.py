"""The metrics endpoint itself: a taken port names its key, a scrape that meets a dict growing under it
is read again, and a collector that fails does not take the process down."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from metrics_scrape import one, scrape
from prometheus_client.core import Metric

from b2bua.server import B2BUAServer
from pipeline.metrics import serve_pipeline
from sipledger.config import ConfigError, from_dict
from sipledger.metrics import counter, serve, stop
from sipledger.ports import free_port


def test_a_taken_port_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = from_dict({"metrics": {"b2bua_port": port, "pipeline_port": port},
                         "events": {"log": f"file://{tmp_path}/events.jsonl"}}, tmp_path)
        with pytest.raises(ConfigError, match=r"metrics\.pipeline_port.*cannot listen"):
            serve_pipeline(cfg, lambda: iter(()))
        server = B2BUAServer(cfg)
        with pytest.raises(ConfigError, match=r"metrics\.b2bua_port.*cannot listen"):
            asyncio.run(server.start())
        assert server.transports is None  # refused before any SIP socket was bound


def test_a_scrape_reads_again_when_a_dict_grew_meanwhile() -> None:
    calls = {"n": 0}

    def families() -> Iterator[Metric]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dictionary changed size during iteration")
        yield counter("sipledger_test_things", "Things", 3)

    port = free_port()
    server, _ = serve("127.0.0.1", port, families)
    try:
        assert one(scrape(port), "sipledger_test_things_total") == 3
        assert calls["n"] == 2
    finally:
        stop(server)


def test_a_failing_collector_serves_an_empty_page() -> None:
    def families() -> Iterator[Metric]:
        raise KeyError("boom")

    port = free_port()
    server, _ = serve("127.0.0.1", port, families)
    try:
        assert scrape(port) == {}
    finally:
        stop(server)
