"""Call signalling records in the store: the embedded follower on chDB, the Kafka follower on ClickHouse
18.16 (the B2BUA's own publisher in front), refused records as dead letters, and the retention by days."""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from b2bua.actions import Address
from b2bua.signalling_trace import SignallingRecorder, TraceSettings
from b2bua.sip.message import Request, Response
from b2bua.sip.serializer import build_response, serialize
from pipeline.signalling_ingest import JournalSignallingFollower, SignallingSink, start_kafka_follower
from schemas.validation import validate_signalling
from sipledger.cli import main
from sipledger.config import from_dict
from sipledger.eventlog import FileJournal
from sipledger.eventlog.signalling import open_signalling_publisher
from sipledger.store import migrate, open_store
from sipledger.store.signalling import TABLE, fetch_records, record_columns, rows_to_records

B2BUA = Address("127.0.0.1", 5060)
CALLER = Address("127.0.0.1", 15080)
CARRIER = Address("127.0.0.1", 5070, "tcp")


def make_record(n: int, started: datetime) -> dict[str, Any]:
    """A record made by the recorder itself: an INVITE in, one out to the carrier, their answers, memos."""
    wall = started.timestamp()
    rec = SignallingRecorder(TraceSettings(sample_rate=1.0, bodies=n % 2 == 0), "node-1", B2BUA, wall,
                             random.Random(n))
    invite = Request("INVITE", f"sip:1555{n:07d}@127.0.0.1:5060", [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-{n}"), ("From", f"<sip:1000@x>;tag=a{n}"),
        ("To", f"<sip:1555{n:07d}@x>"), ("Call-ID", f"caller-{n}@127.0.0.1"), ("CSeq", "1 INVITE"),
        ("Content-Type", "application/sdp")], b"v=0\r\ns=-\r\n")
    rec.seen_in(invite, CALLER, 0.0)
    trace = rec.start(f"call-{n}", "acme", "sample", 0.0, invite.call_id, invite)
    rec.step_done()
    rec.memo(f"call-{n}", 0.001, "route: prefix '1555'")
    out = Request("INVITE", "sip:1555@127.0.0.1:5070;transport=tcp", [
        ("Via", f"SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-o{n}"), ("From", f"<sip:1000@b>;tag=b{n}"),
        ("To", "<sip:1555@127.0.0.1:5070>"), ("Call-ID", f"carrier-{n}@127.0.0.1"), ("CSeq", "1 INVITE")])
    rec.bind(trace, f"carrier-{n}@127.0.0.1", "carrier")
    rec.seen_out(out, serialize(out), CARRIER, 0.002)
    busy: Response = build_response(out, 486, to_tag="t")
    rec.seen_in(busy, CARRIER, 0.050)
    answer = build_response(invite, 486, to_tag="u")
    rec.seen_out(answer, serialize(answer), CALLER, 0.051)
    rec.end(f"call-{n}", 0.051, "busy", "callee")
    record = rec.flush(f"call-{n}")
    assert record is not None
    validate_signalling(record)
    return record


def test_records_survive_the_table_as_they_were() -> None:
    now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    recs = [make_record(i, now) for i in range(3)]
    cols = record_columns(recs)
    rows = [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
    assert len(rows) == sum(len(r["entries"]) for r in recs)
    assert rows_to_records(reversed(rows)) == recs


def embedded_config(tmp_path: Path, retention: int = 7) -> Any:
    return from_dict({"events": {"log": f"file://{tmp_path}/log/events.jsonl"},
                      "store": {"url": f"chdb://{tmp_path}/store"}, "trace": {"retention_days": retention}},
                     tmp_path)


def test_the_embedded_follower_stores_records_once_refuses_bad_ones_and_keeps_the_retention(
        tmp_path: Path) -> None:
    today = datetime.now(UTC).replace(microsecond=0)
    old, fresh = make_record(1, today - timedelta(days=10)), make_record(2, today)
    journal = FileJournal(tmp_path / "log" / "call-signalling.jsonl")
    journal.publish(old)
    journal.publish(fresh)
    journal.publish({**fresh, "call_id": "bad", "entries": [{"n": 1}]})
    journal.flush()
    with open(journal.path, "ab") as fh:
        fh.write(b"{not json\n")
    dead: list[tuple[str, Any]] = []
    store = open_store(f"chdb://{tmp_path}/store")
    try:
        migrate(store)
        checkpoint = tmp_path / "log" / "call-signalling-checkpoint.json"
        # 30 days at first (the follower prunes after its first insert), 7 further down.
        sink = SignallingSink(store, 30, lambda source, raw, err: dead.append((source, err)))
        follower = JournalSignallingFollower(journal.path, checkpoint, sink)
        assert follower.step(force=True) == 4
        assert (sink.stored, sink.refused) == (2, 2)
        assert str(dead[1][1]).startswith("not valid JSON")
        assert dead[0][1].field is not None and dead[0][1].field.startswith("entries.0")
        assert json.loads(checkpoint.read_text())["offset"] == journal.path.stat().st_size
        assert fetch_records(store, "call-2") == [fresh]
        assert fetch_records(store, "carrier-1@127.0.0.1") == [old]  # either leg's Call-ID finds it
        # A restart from the checkpoint reads nothing again; one from the start folds what it re-reads.
        again = JournalSignallingFollower(journal.path, checkpoint, sink)
        assert again.step(force=True) == 0
        checkpoint.unlink()
        JournalSignallingFollower(journal.path, checkpoint, sink).step(force=True)
        assert fetch_records(store, "call-2") == [fresh]
        # Retention: with 7 days, the day 10 days back goes, today stays.
        sink.retention_days = 7
        dropped = sink.prune(force=True)
        assert dropped == [(today - timedelta(days=10)).strftime("%Y%m%d")]
        assert fetch_records(store, "call-1") == [] and fetch_records(store, "call-2") == [fresh]
        assert sink.prune() == []  # not due again within the hour
    finally:
        store.close()


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_kafka_records_reach_clickhouse_18_16_and_old_days_are_dropped(real_stack: Any,
                                                                       tmp_path: Path) -> None:
    from pipeline.kafka_io import make_producer, read_topic
    from sipledger.stack.kafka_broker import create_topics

    sfx = uuid.uuid4().hex[:8]
    topic, dead_topic, db = f"call-signalling-{sfx}", f"dead-letter-{sfx}", f"trace_{sfx}"
    create_topics(real_stack.kafka_bootstrap, {topic: 2, dead_topic: 1})
    cfg = from_dict({"events": {"log": f"kafka://{real_stack.kafka_bootstrap}",
                                "spool_dir": str(tmp_path / "spool")},
                     "kafka": {"topic_signalling": topic, "topic_dead_letter": dead_topic},
                     "store": {"url": real_stack.clickhouse_url(db)}, "trace": {"retention_days": 30}},
                    tmp_path)
    store = open_store(cfg.store.url)
    migrate(store)
    assert store.dialect.major == 18
    today = datetime.now(UTC).replace(microsecond=0)
    recs = [make_record(1, today - timedelta(days=5)), make_record(2, today), make_record(3, today)]
    publisher = open_signalling_publisher(cfg)  # what the B2BUA publishes with: spooled, keyed by call id
    for rec in recs:
        publisher.publish(rec)
    producer = make_producer(real_stack.kafka_bootstrap)
    producer.send(topic, key=b"bad", value=json.dumps({**recs[1], "failed": "no"}).encode())
    producer.flush()
    producer.close()
    follower = start_kafka_follower(cfg, f"trace-test-{sfx}")
    assert follower is not None
    try:
        deadline = time.monotonic() + 60
        while (follower.sink.stored < 3 or follower.sink.refused < 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (follower.sink.stored, follower.sink.refused) == (3, 1)
        for rec in recs:
            assert fetch_records(store, rec["call_id"]) == [rec]
        (letter,) = [v for _, v in read_topic(real_stack.kafka_bootstrap, dead_topic)]
        assert letter["field"] == "failed" and letter["source"].startswith(f"{topic}/")
        # The same record again (a redelivery) shows once.
        publisher.publish(recs[2])
        deadline = time.monotonic() + 30
        while follower.sink.stored < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fetch_records(store, "call-3") == [recs[2]]
        res = CliRunner().invoke(main, ["trace", "caller-3@127.0.0.1", "--set", f"store.url={cfg.store.url}"])
        assert res.exit_code == 0 and "<-- 486 Busy Here" in res.output, res.output
        # Retention on 18.16 (3 days; a sink of the test's own: the follower's store is its thread's).
        days = lambda: sorted(r["partition_id"] for r in store.query(  # noqa: E731
            f"SELECT DISTINCT partition_id FROM system.parts WHERE database = '{db}' AND table = '{TABLE}' "
            "AND active"))
        assert days() == sorted({(today - timedelta(days=5)).strftime("%Y%m%d"), today.strftime("%Y%m%d")})
        pruner = SignallingSink(store, 3, lambda *_: None)
        assert pruner.prune(force=True) == [(today - timedelta(days=5)).strftime("%Y%m%d")]
        assert days() == [today.strftime("%Y%m%d")]
        assert fetch_records(store, "call-1") == [] and fetch_records(store, "call-2") == [recs[1]]
    finally:
        follower.stop()
        publisher.close(1.0)
        store.execute(f"DROP DATABASE IF EXISTS {db}")
        store.close()
