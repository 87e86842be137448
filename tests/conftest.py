"""Session fixtures: the real Kafka broker and ClickHouse 18.16 server, started for the suite.

They run as plain processes on 127.0.0.1 under .stack/test (ignored by git), through the same
code as `sipledger stack up`, and are stopped at the end, SIGKILL included.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipledger import config as config_mod
from sipledger.stack import clickhouse_server, kafka_broker, process

REPO = Path(__file__).resolve().parents[1]
TEST_STACK = REPO / ".stack" / "test"
TOPICS = {"call-events": 4, "call-commands": 4, "zombie-alerts": 4, "cdrs": 4, "dead-letter": 1}


@dataclass(frozen=True)
class RunningStack:
    dir: Path
    kafka_bootstrap: str
    clickhouse_port: int

    def clickhouse_url(self, database: str = "sipledger") -> str:
        return f"clickhouse://default:@127.0.0.1:{self.clickhouse_port}/{database}"


@pytest.fixture(scope="session")
def real_stack() -> Iterator[RunningStack]:
    TEST_STACK.mkdir(parents=True, exist_ok=True)
    # Share the jars fetched by deploy/install.sh instead of a second Maven run.
    shared_libs = REPO / ".stack" / "kafka" / "libs"
    test_libs = kafka_broker.libs_dir(TEST_STACK)
    if shared_libs.is_dir() and not test_libs.exists():
        test_libs.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared_libs, test_libs)
    if process.running_record(TEST_STACK, kafka_broker.NAME) is None:
        # A fresh log for every session: topics that earlier sessions created by the thousand (one set
        # per test) slow the broker's start and its group coordinator's loading, until consumer groups
        # time out while joining.
        shutil.rmtree(TEST_STACK / "kafka" / "data", ignore_errors=True)
    k, k_started = kafka_broker.up(TEST_STACK)
    c, c_started = clickhouse_server.up(TEST_STACK)
    bootstrap = f"127.0.0.1:{k.port}"
    kafka_broker.create_topics(bootstrap, TOPICS)
    yield RunningStack(TEST_STACK, bootstrap, c.port)
    # Stop only what this session started: another test run may be using services it found running.
    for name, started in ((kafka_broker.NAME, k_started), (clickhouse_server.NAME, c_started)):
        if started:
            process.stop(TEST_STACK, name)


def private_stack_dir(name: str) -> Path:
    """A stack folder of the test's own (for tests that stop or kill services), sharing the jars."""
    stack_dir = REPO / ".stack" / f"{name}-{os.getpid()}"
    libs = REPO / ".stack" / "kafka" / "libs"
    if libs.is_dir() and not (stack_dir / "kafka" / "libs").exists():
        (stack_dir / "kafka").mkdir(parents=True, exist_ok=True)
        os.symlink(libs, stack_dir / "kafka" / "libs")
    return stack_dir


@pytest.fixture()
def default_config() -> config_mod.Config:
    return config_mod.load(None)


@pytest.fixture
def b2bua(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start real B2BUAs (``serve`` on a thread) with the scaled-down test config; stopped afterwards:
    ``b2bua(gateway_ports, transport="udp", **config_sections)``."""
    from sip_harness.b2bua_runner import RunningB2BUA, make_config

    running: list[RunningB2BUA] = []

    def start(gateways: list[int], transport: str = "udp", **sections: dict[str, Any]) -> RunningB2BUA:
        cfg = config_mod.from_dict(make_config(tmp_path, gateways, transport, **sections), tmp_path)
        node = RunningB2BUA(cfg, tmp_path / "events" / "events.jsonl").start()
        running.append(node)
        return node

    yield start
    for node in running:
        node.stop()
