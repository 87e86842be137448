"""Liveness probes on the wire, and the B2BUA in Kafka mode (events out, terminate commands in).

The SIP peers are the project's simulated UAs: a legacy caller that keeps answering in-dialog
OPTIONS, one that vanishes, and a carrier that answers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sip_harness.b2bua_runner import RunningB2BUA, make_config

from sipledger.config import from_dict
from sipledger.simulator.behaviours import CallerBehaviour, CarrierBehaviour
from sipledger.simulator.caller import Caller
from sipledger.simulator.carrier import Carrier
from sipledger.stack.kafka_broker import create_topics

pytestmark = pytest.mark.sipp


def _by_call(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] != "node.heartbeat":
            out.setdefault(e["call_id"], []).append(e)
    return out


def test_liveness_probes_prove_a_live_legacy_call_and_end_a_vanished_one(tmp_path: Path) -> None:
    async def scenario() -> tuple[RunningB2BUA, list[Any]]:
        async with Carrier("gw", default="answer") as carrier, Caller("phones") as caller:
            raw = make_config(
                tmp_path, [carrier.port], timers={"liveness_probe_interval": 1, "no_timer_max_duration": 60}
            )
            node = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "events" / "events.jsonl").start()
            try:
                alive = CallerBehaviour("no_timer_bye", talk_time=4.0)
                gone = CallerBehaviour("no_timer_vanish", watch_time=12.0)
                carrier.expect("15551230001", CarrierBehaviour("answer", ring_delay=0.2, talk_time=60))
                carrier.expect("15551230002", CarrierBehaviour("answer", ring_delay=0.2, talk_time=60))
                outcomes = await asyncio.gather(
                    caller.place_call(("127.0.0.1", node.server.port), "15551230001", alive),
                    caller.place_call(("127.0.0.1", node.server.port), "15551230002", gone),
                )
                node.wait_terminated(count=2, timeout=20)
                return node, list(outcomes)
            finally:
                node.stop()

    node, (alive, gone) = asyncio.run(scenario())
    calls = list(_by_call(node.events()).values())
    assert len(calls) == 2
    by_callee = {evs[0]["callee"]: evs for evs in calls}
    ok = by_callee["15551230001"]
    assert sum(e["type"] == "liveness.probe_succeeded" for e in ok) >= 2  # proofs of life, one a second
    assert ok[-1]["type"] == "call.terminated" and ok[-1]["reason"] == "normal_caller_bye"
    assert alive.options_received >= 2

    dead = by_callee["15551230002"]
    failed = [e for e in dead if e["type"] == "liveness.probe_failed"]
    assert failed and failed[0]["leg"] == "caller"
    end = dead[-1]
    assert end["type"] == "call.terminated" and end["reason"] == "liveness_probe_failed"
    assert end["initiator"] == "system"
    # ended long before the 60 s no-timer cap: the probe caught the vanished endpoint
    answered = next(e for e in dead if e["type"] == "call.answered")
    assert _ms(end["ts"]) - _ms(answered["ts"]) < 20_000
    assert "OPTIONS" in " ".join(gone.ignored)


def _ms(ts: str) -> int:
    from pipeline.domain.timeutil import parse_ts

    return parse_ts(ts)


def _consume(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Everything on ``topic`` up to its end when called (heartbeats never let it go quiet)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    known = time.monotonic() + 10
    # A topic created moments ago may not be in the metadata this consumer fetched yet (seen on a loaded
    # machine: an empty partition set, then "No partitions are currently assigned").
    while not consumer.partitions_for_topic(topic) and time.monotonic() < known:
        time.sleep(0.2)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(parts)
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = []
    deadline = time.monotonic() + 20
    while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            out += [
                json.loads(m.value)
                for m in msgs
                if m.offset
                < ends[
                    m.topic_partition
                    if hasattr(m, "topic_partition")
                    else TopicPartition(m.topic, m.partition)
                ]
            ]
    consumer.close()
    return out


def test_kafka_mode_events_out_and_a_terminate_command_in(real_stack, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    events_topic, commands_topic = f"ev-{suffix}", f"cmd-{suffix}"
    create_topics(real_stack.kafka_bootstrap, {events_topic: 3, commands_topic: 3})
    bootstrap = real_stack.kafka_bootstrap

    async def scenario() -> None:
        async with Carrier("gw", default="answer") as carrier, Caller("phones") as caller:
            raw = make_config(
                tmp_path,
                [carrier.port],
                events={
                    "log": f"kafka://{bootstrap}",
                    "spool_dir": str(tmp_path / "spool"),
                    "heartbeat_interval": 0.5,
                },
                kafka={
                    "bootstrap": bootstrap,
                    "topic_events": events_topic,
                    "topic_commands": commands_topic,
                    "partitions": 3,
                },
            )
            node = RunningB2BUA(from_dict(raw, tmp_path), tmp_path / "unused.jsonl").start()
            carrier.expect("15551230003", CarrierBehaviour("answer", ring_delay=0.2, talk_time=120))
            try:
                call = asyncio.create_task(
                    caller.place_call(
                        ("127.0.0.1", node.server.port),
                        "15551230003",
                        CallerBehaviour("no_timer_bye", talk_time=60),
                    )
                )
                call_id = await asyncio.to_thread(_wait_answered, bootstrap, events_topic)
                producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
                deadline = time.monotonic() + 30
                while not call.done() and time.monotonic() < deadline:
                    # the node's consumer joins its group asynchronously: repeat until it acts (idempotent)
                    cmd = {
                        "command_id": f"k-{suffix}",
                        "type": "call.terminate",
                        "call_id": call_id,
                        "node": "wire-node",
                        "reason": "pipeline_terminate",
                        "issued_by": "test",
                        "deadline": "2026-11-25T10:00:00.000Z",
                        "ts": "2026-11-25T10:00:00.000Z",
                        "schema_version": 1,
                    }
                    producer.send(commands_topic, key=call_id.encode(), value=json.dumps(cmd).encode())
                    producer.flush()
                    await asyncio.wait({call}, timeout=2)
                producer.close()
                outcome = await asyncio.wait_for(call, 10)
                assert outcome.ended_by == "remote"  # the caller got the B2BUA's BYE
            finally:
                node.stop()

    asyncio.run(scenario())
    events = _consume(bootstrap, events_topic)
    calls = _by_call(events)
    assert len(calls) == 1
    (evs,) = calls.values()
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    end = evs[-1]
    assert end["type"] == "call.terminated" and end["reason"] == "pipeline_terminate"
    assert end["initiator"] == "system"
    heartbeats = [e for e in events if e["type"] == "node.heartbeat"]
    assert heartbeats and {e["node"] for e in heartbeats} == {"wire-node"}


def _wait_answered(bootstrap: str, topic: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in _consume(bootstrap, topic):
            if e["type"] == "call.answered":
                return e["call_id"]
        time.sleep(0.3)
    seen = [e["type"] for e in _consume(bootstrap, topic)]
    raise AssertionError(
        f"no call.answered on the events topic; it holds {sorted(set(seen))} ({len(seen)} events)"
    )
