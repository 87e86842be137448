"""Apache Kafka 4.3.1 in KRaft combined mode, assembled from Maven Central, as a user process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ..ports import free_port
from .process import ServiceRecord, StackError, port_open, running_record, start

NAME = "kafka"
POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"

_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d{ISO8601}] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


def libs_dir(stack_dir: Path) -> Path:
    return stack_dir / "kafka" / "libs"


def fetch(stack_dir: Path) -> Path:
    """Copy the broker's runtime jars from Maven Central (cached: a second call does nothing)."""
    libs = libs_dir(stack_dir)
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-tools-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is not installed; run deploy/install.sh")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"Maven could not assemble Kafka:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return libs


def _java(libs: Path, *args: str, log4j: Path) -> list[str]:
    return ["java", "-Xms256m", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{libs}/*", *args]


def up(stack_dir: Path, port: int = 0, timeout: float = 60.0,
       extra_listener: tuple[int, int] | None = None) -> tuple[ServiceRecord, bool]:
    """Start the broker unless one of ours runs already. Returns (record, started_now).

    ``extra_listener``: (port, advertised port) of a second plaintext listener ``EXTRA``, for clients that
    must reach the broker through something in between (a test's proxy that can cut one client off).
    """
    rec = running_record(stack_dir, NAME)
    if rec is not None:
        return rec, False
    libs = fetch(stack_dir)
    home = stack_dir / "kafka"
    data = home / "data"
    log4j = home / "log4j2.xml"
    log4j.write_text(_LOG4J2)
    props = home / "server.properties"
    ports_file = home / "ports.json"
    # Restart on the same data and ports when we can, so topics and unconsumed events survive a
    # `stack down`/`up`; otherwise format fresh storage for a new quorum.
    saved = json.loads(ports_file.read_text()) if ports_file.exists() else None
    reuse = (saved is not None and (data / "meta.properties").exists() and props.exists()
             and (port in (0, saved["port"])) and not port_open(saved["port"])
             and not port_open(saved["controller_port"]))
    if reuse:
        port, cport = saved["port"], saved["controller_port"]
    else:
        port = port or free_port()
        cport = free_port()
        if data.exists():
            shutil.rmtree(data)
        _write_props(props, data, port, cport, extra_listener)
        uuid = subprocess.run(_java(libs, "kafka.tools.StorageTool", "random-uuid", log4j=log4j),
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res = subprocess.run(_java(libs, "kafka.tools.StorageTool", "format", "-t", uuid, "-c", str(props),
                                   log4j=log4j), capture_output=True, text=True)
        if res.returncode != 0:
            raise StackError(f"kafka storage format failed: {res.stdout}{res.stderr}")
        ports_file.write_text(json.dumps({"port": port, "controller_port": cport}))
    log = home / "kafka.log"
    log_offset = log.stat().st_size if log.exists() else 0
    env = dict(os.environ)
    rec = start(stack_dir, NAME, _java(libs, "kafka.Kafka", str(props), log4j=log4j), port, log,
                ready=lambda: port_open(port) and _started(log, log_offset), timeout=timeout, env=env,
                extra={"controller_port": cport})
    return rec, True


def _started(log: Path, offset: int) -> bool:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return b"Kafka Server started" in fh.read()
    except FileNotFoundError:
        return False


def _write_props(props: Path, data: Path, port: int, cport: int,
                 extra_listener: tuple[int, int] | None = None) -> None:
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    if extra_listener is not None:
        listeners += f",EXTRA://127.0.0.1:{extra_listener[0]}"
        advertised += f",EXTRA://127.0.0.1:{extra_listener[1]}"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners={listeners}",
        f"advertised.listeners={advertised}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTRA:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.partitions=4",
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
        "",
    ]))


# The prepaid balances topic (pipeline -> B2BUA nodes, kafka.topic_balances): a node reads it from its
# beginning for the latest record of each (account, partition) key, so it is compacted.
BALANCES_CONFIGS: dict[str, str] = {"cleanup.policy": "compact", "segment.ms": str(60 * 60 * 1000)}


def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30.0,
                  configs: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create missing topics (name -> partitions; ``configs``: name -> topic configs such as
    ``cleanup.policy``). Returns the names it created."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        left_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sipledger-stack",
                                     request_timeout_ms=10_000, bootstrap_timeout_ms=left_ms)
            break
        except Exception as exc:  # the broker may still be electing its controller
            last = exc
            time.sleep(0.5)
    else:
        raise StackError(f"cannot reach Kafka at {bootstrap}: {last}")
    try:
        existing = set(admin.list_topics())
        missing = {t: {"num_partitions": n, "replication_factor": 1,
                       "configs": dict((configs or {}).get(t, {}))}
                   for t, n in topics.items() if t not in existing}
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, timeout_ms=15_000)
        return list(missing)
    finally:
        admin.close()


def topic_partitions(bootstrap: str, topics: list[str], timeout: float = 10.0) -> dict[str, int]:
    """Partition counts of the topics that exist among ``topics``."""
    from kafka.admin import KafkaAdminClient

    ms = int(timeout * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sipledger-stack", request_timeout_ms=ms,
                             bootstrap_timeout_ms=ms)
    try:
        wanted = set(topics) & set(admin.list_topics())
        if not wanted:
            return {}
        return {t["topic"] if "topic" in t else t["name"]: len(t["partitions"])
                for t in admin.describe_topics(sorted(wanted))}
    finally:
        admin.close()
