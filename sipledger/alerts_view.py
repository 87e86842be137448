"""`sipledger alerts tail`: zombie alerts (and gateway alerts) as a person reads them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .config import Config

# Alerts already in journals and topics were written by pipelines that put a missing SIP status into
# the message as Python's None ("timeout, status None"); they are permanent, so they are read as the
# current pipeline words it.
_NO_STATUS = re.compile(r"\bstatus None\b")


def message_text(message: str) -> str:
    """An alert's message as a person reads it: a missing status is "no response", not "status None"."""
    return _NO_STATUS.sub("no response", message)


def describe(alert: dict[str, Any]) -> str:
    if alert["kind"] in ("gateway_down", "gateway_up"):
        # No call, no money: the gateway, its node and the evidence are in the message.
        return f"{alert['ts']} {alert['kind']:<19} node {alert['node']}: {alert['message']}"
    ran = alert["ran_ms"] / 1000
    unverified = alert["unverified_ms"] / 1000
    cost = Decimal(alert["estimated_cost"]).quantize(Decimal("0.0001"))
    return (f"{alert['ts']} {alert['kind']:<19} call {alert['call_id']} account {alert['account'] or '-'} "
            f"vendor {alert['vendor'] or '-'} ran {ran:,.0f}s unverified {unverified:,.0f}s "
            f"cost {cost} {alert['currency']}: {message_text(alert['message'])}")


def tail_alerts(cfg: Config, follow: bool, fmt: str, echo: Callable[[str], None]) -> None:
    def show(alert: dict[str, Any]) -> None:
        echo(json.dumps(alert) if fmt == "json" else describe(alert))

    if cfg.events.log.startswith("kafka:"):
        _tail_kafka(cfg, follow, show)
        return
    from sipledger.eventlog.journal import read_journal
    from sipledger.eventlog.layout import EmbeddedPaths

    path = EmbeddedPaths.from_config(cfg).alerts
    offset = 0
    seen: set[str] = set()
    while True:
        for pos, raw in read_journal(path, offset):
            offset = pos
            alert = json.loads(raw)
            if alert["alert_id"] not in seen:  # a restarted pipeline may repeat one
                seen.add(alert["alert_id"])
                show(alert)
        if not follow:
            return
        time.sleep(0.5)


def _tail_kafka(cfg: Config, follow: bool, show: Callable[[dict[str, Any]], None]) -> None:
    """Every alert on the topic up to its current end (no consumer group: nothing committed); with
    ``follow``, then every new one as it arrives, until interrupted."""
    from kafka import KafkaConsumer, TopicPartition

    from .topic_reader import BOOTSTRAP_TIMEOUT_MS, end_offsets, read_to_end

    bootstrap, topic = cfg.kafka.bootstrap, cfg.kafka.topic_alerts
    seen: set[str] = set()

    def once(value: bytes) -> None:
        alert = json.loads(value)
        if alert.get("alert_id") not in seen:  # a re-delivered batch may repeat one
            seen.add(alert.get("alert_id"))
            show(alert)

    ends = end_offsets(bootstrap, topic)
    for rec in read_to_end(bootstrap, topic, ends):
        once(rec.value)
    if not follow:
        return
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, ends[tp.partition])
        while True:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    once(rec.value)
    finally:
        consumer.close()
