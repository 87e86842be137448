"""`sipledger status`: what the pipeline's faust workers are doing, from the command line.

Everything comes from the broker with Kafka's protocol (kafka-python), no Java tools:

* per partition of the events topic: the end offset, the group's committed offset and the lag between
  them (the events no worker has delivered yet), and which worker serves it;
* the group's state and member count, from its coordinator;
* per worker, what the worker itself published last on the compacted topic ``<app id>-status`` (every
  ``STATUS_INTERVAL_S`` and on every change, pipeline/faust_app.py): the state of each of its partitions
  (``restoring`` its call states from the changelog, ``catching_up`` with the log, ``caught_up``) with the
  restore's record count, end offset and time, the store writer's pending rows and the deliveries in
  flight. A worker silent for ``STALE_AFTER_S`` is shown as such (killed, or cut off from the broker);
  one that stopped cleanly says so; reports older than ``FORGET_AFTER_S`` (processes long gone) are left
  out.

Kafka mode only (``events.log = "kafka://..."``); the embedded pipeline has no group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import orjson

STATUS_INTERVAL_S: Final = 2.0
STALE_AFTER_S: Final = 10.0
# Reports older than this are of processes long gone (every restart is a new worker id): not shown.
FORGET_AFTER_S: Final = 3600.0
# Broker calls of the CLI: an operator wants an answer, or the reason there is none, within seconds.
CLI_TIMEOUT_S: Final = 5.0


def status_topic(app_id: str) -> str:
    return f"{app_id}-status"


class StatusError(RuntimeError):
    """The status could not be read; the message says why, in one line."""


def _worker_statuses(bootstrap: str, app_id: str) -> dict[str, dict[str, Any]]:
    from .topic_reader import NoSuchTopic, TopicReader, latest_by_key

    with TopicReader(bootstrap, CLI_TIMEOUT_S) as reader:
        try:
            ends = reader.end_offsets(status_topic(app_id))
        except NoSuchTopic:
            return {}  # no worker of this app id ever started
        latest = latest_by_key((rec.key, rec.value) for rec in reader.read(status_topic(app_id), ends))
    return {key.decode(): orjson.loads(value) for key, value in latest.items()}


def _group(bootstrap: str, group: str, topic: str) -> tuple[str, int, dict[int, int]]:
    """(state, members, partition -> committed offset) of the consumer group on ``topic``."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import CoordinatorNotAvailableError, GroupIdNotFoundError, KafkaError

    ms = int(CLI_TIMEOUT_S * 1000)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sipledger-status",
                                 request_timeout_ms=ms, bootstrap_timeout_ms=ms)
    except KafkaError:
        raise StatusError(f"Kafka at {bootstrap} is unreachable") from None
    try:
        try:
            described = admin.describe_groups([group]).get(group, {})
            offsets = admin.list_group_offsets(group).get(group, {})
        except (CoordinatorNotAvailableError, GroupIdNotFoundError):
            return "none", 0, {}  # no group has ever joined on this broker, or not this one
        state = str(described.get("group_state") or described.get("state") or "unknown")
        members = len(described.get("members") or ())
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()
                     if tp.topic == topic and meta is not None and meta.offset >= 0}
        return state, members, committed
    except KafkaError as exc:
        raise StatusError(f"reading group {group!r} from Kafka at {bootstrap} failed: {exc}") from None
    finally:
        admin.close()


def collect(bootstrap: str, topic: str, app_id: str, now_ms: int | None = None) -> dict[str, Any]:
    """The whole status as one JSON-able dict (what ``--format json`` prints). Raises StatusError."""
    from .topic_reader import TopicReader, TopicReadError

    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    try:
        with TopicReader(bootstrap, CLI_TIMEOUT_S) as reader:
            ends = reader.end_offsets(topic)
        workers = _worker_statuses(bootstrap, app_id)
    except TopicReadError as exc:
        raise StatusError(str(exc)) from None
    state, members, committed = _group(bootstrap, app_id, topic)
    served: dict[int, tuple[str, dict[str, Any]]] = {}
    forgotten = 0
    for wid, st in sorted(workers.items()):
        age_s = (now_ms - int(st.get("ts_ms", 0))) / 1000
        if age_s > FORGET_AFTER_S:
            del workers[wid]
            forgotten += 1
            continue
        st["age_s"] = round(age_s, 1)
        st["live"] = st.get("state") == "running" and age_s <= STALE_AFTER_S
        if st["live"]:
            for p, info in st.get("partitions", {}).items():
                served[int(p)] = (wid, info)
    partitions = []
    for p, end in sorted(ends.items()):
        done = committed.get(p)
        wid, info = served.get(p, (None, {}))
        partitions.append({"partition": p, "end": end, "committed": done,
                           "lag": end - (done or 0), "worker": wid,
                           "state": info.get("state", "unassigned"), "restore": info.get("restore")})
    return {"bootstrap": bootstrap, "group": app_id, "topic": topic, "group_state": state,
            "members": members, "partitions": partitions, "total_lag": sum(p["lag"] for p in partitions),
            "workers": workers, "forgotten_workers": forgotten}


def render(status: dict[str, Any], echo: Callable[[str], Any]) -> None:
    """Plain text for people (no colours: it is often redirected)."""
    echo(f"group {status['group']} on {status['bootstrap']}: {status['group_state']}, "
         f"{status['members']} member(s); topic {status['topic']}, total lag {status['total_lag']}")
    echo(f"{'partition':>9} {'end':>10} {'committed':>10} {'lag':>8}  {'state':<12} {'worker':<28} restore")
    for p in status["partitions"]:
        r = p["restore"]
        restore = (f"{r['calls']} calls ({r['open_calls']} open) from {r['records']} records to offset "
                   f"{r['end_offset']} in {r['seconds']:.2f} s") if r else "-"
        committed = "-" if p["committed"] is None else str(p["committed"])
        echo(f"{p['partition']:>9} {p['end']:>10} {committed:>10} {p['lag']:>8}  {p['state']:<12} "
             f"{p['worker'] or '-':<28} {restore}")
    if not status["workers"]:
        echo("no worker has published a status within the last hour (none started with this app id?)")
    for wid, w in sorted(status["workers"].items()):
        if w.get("state") == "stopped":
            life = f"stopped {w['age_s']:.0f} s ago"
        elif w["live"]:
            life = f"running, seen {w['age_s']:.1f} s ago"
        else:
            life = f"SILENT for {w['age_s']:.0f} s (killed or cut off from the broker)"
        writer = w.get("writer", {})
        parts = sorted(int(p) for p in w.get("partitions", {}))
        echo(f"worker {wid}: {life}; partitions {parts}; store writer {writer.get('pending_rows', 0)} rows "
             f"pending in {writer.get('pending_batches', 0)} batches"
             f"{'' if writer.get('alive', True) else ' (writer process DEAD)'}; "
             f"{w.get('deliveries_in_flight', 0)} deliveries in flight; "
             f"{w.get('restore_failures', 0)} failed restore attempts; "
             f"{w.get('stats', {}).get('events', 0)} events, {w.get('stats', {}).get('cdrs', 0)} CDRs")
