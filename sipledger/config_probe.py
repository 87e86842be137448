"""What a configuration points at, and whether it answers: `sipledger config check [--probe]`.

Every process of a deployment reads the same file, so one check here says whether the B2BUA, the
workers, `calls`, `alerts` and `replay` will find the broker and the store, before any of them runs.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from .config import Config


def effective_addresses(cfg: Config) -> list[tuple[str, str]]:
    """(what, where) for every address the processes will use, as resolved from the configuration."""
    out = [("SIP", f"{cfg.sip.listen_host}:{cfg.sip.listen_port} ({', '.join(cfg.sip.transports)}), "
                   f"advertised as {cfg.sip.advertised_host or cfg.sip.listen_host}")]
    if cfg.events.log.startswith("kafka:"):
        k = cfg.kafka
        out.append(("events", f"Kafka at {k.bootstrap}, topic {k.topic_events} "
                              f"(spool {cfg.events.spool_dir})"))
        out.append(("commands/alerts/CDRs", f"topics {k.topic_commands}, {k.topic_alerts}, {k.topic_cdrs} "
                                            f"on {k.bootstrap}"))
        out.append(("pipeline", "faust workers (sipledger pipeline) in Kafka mode"))
    else:
        out.append(("events", f"journal {cfg.events.log} (embedded pipeline)"))
    out.append(("store", _redacted(cfg.store.url)))
    m = cfg.metrics
    ends = [f"{what} http://{m.listen_host}:{port}/metrics" for what, port in
            (("B2BUA", m.b2bua_port), ("pipeline", m.pipeline_port)) if port]
    out.append(("metrics", ", ".join(ends) if ends else "off (metrics.b2bua_port, metrics.pipeline_port)"))
    return out


def probe_addresses(cfg: Config, timeout_s: float = 5.0) -> list[tuple[str, bool, str]]:
    """(what, answered, detail): connect to the broker (Kafka mode) and to the store."""
    out: list[tuple[str, bool, str]] = []
    if cfg.events.log.startswith("kafka:"):
        out.append(("Kafka", *_probe_kafka(cfg.kafka.bootstrap, cfg.kafka.topic_events, timeout_s)))
    out.append(("store", *_probe_store(cfg)))
    return out


def _probe_kafka(bootstrap: str, topic: str, timeout_s: float) -> tuple[bool, str]:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        return False, f"{bootstrap} does not answer ({type(exc).__name__})"
    try:
        topics = consumer.topics()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return False, f"{bootstrap} answers, but has no topic {topic!r} (sipledger stack init creates it)"
        return True, f"{bootstrap} answers: {len(topics)} topics, {topic!r} has {len(parts)} partitions"
    except KafkaError as exc:
        return False, f"{bootstrap}: {exc}"
    finally:
        consumer.close()


def _probe_store(cfg: Config) -> tuple[bool, str]:
    from .store import StoreError
    from .store.remote import open_reader

    # clickhouse-driver logs each refused connection with a traceback; the one line below says it.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    try:
        with open_reader(cfg.store.url, str(cfg.base_dir)) as store:
            version = store.query("SELECT version() AS v")[0]["v"]
            tables = {r["name"] for r in store.query("SELECT name FROM system.tables "
                                                     "WHERE database = currentDatabase()")}
    except (StoreError, OSError) as exc:
        return False, f"{_redacted(cfg.store.url)}: {str(exc).splitlines()[0]}"
    missing = {"cdrs", "call_events", "zombie_alerts"} - tables
    note = f"; tables missing: {', '.join(sorted(missing))} (sipledger stack migrate)" if missing else ""
    return True, f"{_redacted(cfg.store.url)} answers: ClickHouse {version}{note}"


def _redacted(url: str) -> str:
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url
