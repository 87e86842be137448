"""`sipledger stack up|down|status`: the local Kafka broker and ClickHouse server together."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from ..config import Config
from . import clickhouse_server, kafka_broker
from .process import StackError, port_open, running_record, stop

__all__ = ["StackError", "down", "status", "up"]
SERVICES = (kafka_broker.NAME, clickhouse_server.NAME)


CONFIG_NAME = "sipledger.toml"


def stack_config(bootstrap: str | None, store_url: str | None, partitions: int) -> str:
    """A ready-to-use configuration for the stack's services (Kafka mode, ClickHouse store)."""
    lines = ["# Written by `sipledger stack up` for the services of this stack; its ports stay the same",
             "# across `stack down` / `stack up`. Use it with --config, or copy these lines into yours.", ""]
    if bootstrap:
        lines += ["[events]", f'log = "kafka://{bootstrap}"', "", "[kafka]", f"partitions = {partitions}", ""]
    if store_url:
        lines += ["[store]", f'url = "{store_url}"', ""]
    return "\n".join(lines)


def up(stack_dir: Path, cfg: Config, topics: dict[str, int], only: str | None = None,
       configs: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[str]:
    bootstrap = store_url = None
    if only in (None, kafka_broker.NAME):
        rec, started = kafka_broker.up(stack_dir, cfg.stack.kafka_port)
        verb = "started" if started else "already running"
        yield f"kafka: {verb}, pid {rec.pid}, bootstrap 127.0.0.1:{rec.port}"
        bootstrap = f"127.0.0.1:{rec.port}"
        created = kafka_broker.create_topics(f"127.0.0.1:{rec.port}", topics, configs=configs)
        if created:
            yield f"kafka: created topics {', '.join(created)}"
    if only in (None, clickhouse_server.NAME):
        rec, started = clickhouse_server.up(stack_dir, cfg.stack.clickhouse_port)
        verb = "started" if started else "already running"
        url = clickhouse_server.url(rec)
        yield f"clickhouse: {verb}, pid {rec.pid}, store URL {url}"
        from ..store import migrate, open_store

        with open_store(url) as store:
            migrate(store)
        yield f"clickhouse: schema applied (ClickHouse {store.dialect.version})"
        store_url = url
    if only is None:
        path = stack_dir / CONFIG_NAME
        path.write_text(stack_config(bootstrap, store_url, cfg.kafka.partitions))
        yield f"config for this stack: {path} (sipledger ... --config {path})"


def down(stack_dir: Path) -> Iterator[str]:
    for name in SERVICES:
        if stop(stack_dir, name):
            yield f"{name}: stopped"
        else:
            yield f"{name}: was not running"


def status(stack_dir: Path) -> tuple[list[str], bool]:
    lines = []
    all_up = True
    for name in SERVICES:
        rec = running_record(stack_dir, name)
        if rec is None:
            lines.append(f"{name}: down")
            all_up = False
            continue
        answering = port_open(rec.port)
        all_up = all_up and answering
        where = (f"bootstrap 127.0.0.1:{rec.port}" if name == kafka_broker.NAME
                 else f"store URL {clickhouse_server.url(rec)}")
        state = "running" if answering else "running but not answering"
        lines.append(f"{name}: {state}, pid {rec.pid}, {where}")
    return lines, all_up
