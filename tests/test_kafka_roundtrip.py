"""Events through the real Kafka 4.3.1 broker (KRaft) with kafka-python, validated against the schemas."""

from __future__ import annotations

import json
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.validation import ContractError, decode_event


def _events(call_id: str) -> list[dict]:
    base = {"call_id": call_id, "node": "n1", "schema_version": 1}
    return [
        {**base, "event_id": uuid.uuid4().hex, "seq": 1, "type": "call.setup",
         "ts": "2026-11-25T10:00:00.000Z",
         "caller": "100", "callee": "4420", "account": "acme", "source_ip": "127.0.0.1",
         "timer_supported": False},
        {**base, "event_id": uuid.uuid4().hex, "seq": 2, "type": "call.routed",
         "ts": "2026-11-25T10:00:00.010Z",
         "vendor": "carrier-a", "gateway": "127.0.0.1:5070", "prefix": "44", "attempt": 1},
        {**base, "event_id": uuid.uuid4().hex, "seq": 3, "type": "call.terminated",
         "ts": "2026-11-25T10:00:09.000Z", "reason": "normal_caller_bye", "initiator": "caller",
         "sip_status": None},
    ]


def test_events_round_trip_through_the_real_broker_in_order_per_call(real_stack) -> None:
    topic = "call-events"
    producer = KafkaProducer(bootstrap_servers=real_stack.kafka_bootstrap, acks="all", linger_ms=5)
    calls = [f"rt-{uuid.uuid4().hex[:8]}-{i}" for i in range(50)]
    sent = {c: _events(c) for c in calls}
    for evs in sent.values():
        for e in evs:
            producer.send(topic, key=e["call_id"].encode(), value=json.dumps(e).encode())
    bad = {"type": "call.setup", "seq": 0}  # breaks its schema
    producer.send(topic, key=b"bad", value=json.dumps(bad).encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=real_stack.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got: dict[str, list[dict]] = {}
    rejected = []
    for msg in consumer:
        try:
            ev = decode_event(msg.value)
        except ContractError as exc:
            rejected.append((msg.key, exc.field))
            continue
        if ev["call_id"] in sent:
            assert msg.key.decode() == ev["call_id"]
            got.setdefault(ev["call_id"], []).append(ev)
    consumer.close()
    assert got == sent  # every event, each call in order (one key = one partition)
    assert (b"bad", "seq") in rejected or any(k == b"bad" for k, _ in rejected)
