"""Fenced state writes against the real broker (pipeline/state_writer.py).

The prepaid fault drill once found a prepaid call open again after its CDR: a worker the group had
expelled during a broker outage still wrote its older record of the call after the new owner had
restored the partition and written the call closed, with its debit. The next restore took the older
record for the latest; the hold stayed reserved and the debit was missing from the balances the nodes
follow. Here the same race is played step by step with two holders of one partition, and the restore
(``read_partitions``, as a worker restores) and a node's balance follower read what is left.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import uuid
from typing import Any

import pytest
from aiokafka.errors import ProducerFenced

from b2bua.balances_in import KafkaBalanceFollower
from pipeline import call_table
from pipeline.changelog_restore import read_partitions
from pipeline.domain import phase
from pipeline.domain.state import CallState
from pipeline.state_writer import Fenced, Message, StateWriters, send_batched
from sipledger.stack.kafka_broker import BALANCES_CONFIGS, create_topics
from sipledger.topic_reader import TopicReader

pytestmark = [pytest.mark.kafka]


def _state(call_id: str, debit: str | None) -> CallState:
    state = CallState(call_id=call_id, node="n1", account="acme")
    state.credit_hold = "120.000000"
    state.credit_debit = debit
    if debit is not None:
        state.phase = phase.ENDED
        state.end_ms = 1_000
    return state


def _record(changelog: str, state: CallState) -> Message:
    return (changelog, 0, *call_table.encode(state.call_id, call_table.state_value(0, state)))


def _balance(topic: str, reserved: str, by: str) -> Message:
    value = {"account": "acme", "partition": 0, "reserved": {"n1": reserved} if reserved else {}, "by": by}
    return (topic, 0, b"acme/0", json.dumps(value).encode())


def _raw(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             isolation_level=isolation, consumer_timeout_ms=1500)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        return [m.value for m in consumer]
    finally:
        consumer.close()


async def _follow(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """What a B2BUA node's balance follower has read once it says it is ready (it read to the end)."""
    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()
    follower = KafkaBalanceFollower(bootstrap, topic, seen.append, ready.set)
    follower.start()
    try:
        await asyncio.wait_for(ready.wait(), 20)
        await asyncio.sleep(0.2)  # records handed over just before the ready call are applied by now
        return list(seen)
    finally:
        await follower.stop()


def test_a_worker_that_lost_its_partition_cannot_write_over_the_new_owners_state(real_stack: Any) -> None:
    bootstrap = real_stack.kafka_bootstrap
    app_id = f"fence-{uuid.uuid4().hex[:8]}"
    changelog = call_table.changelog_topic(app_id)
    balances = f"{app_id}-balances"
    create_topics(bootstrap, {changelog: 1, balances: 1}, configs={balances: BALANCES_CONFIGS})

    async def race() -> None:
        old, new = StateWriters(bootstrap, app_id), StateWriters(bootstrap, app_id)
        try:
            await old.fence([0])
            await old.write(0, [_record(changelog, _state("c1", None)), _balance(balances, "120", "old")])
            # The old owner's next delivery is on the wire when it loses the partition: the call still
            # held (its older view), sent but not committed.
            zombie = old._producers[0]
            await zombie.begin_transaction()
            await send_batched(zombie, [_record(changelog, _state("c1", None)),
                                        _balance(balances, "120", "zombie")])
            # The new owner takes the partition's id before restoring, restores, folds the call's end.
            await new.fence([0])
            restored = await asyncio.to_thread(read_partitions, bootstrap, changelog, [0], 10.0)
            assert restored[0].states["c1"].credit_debit is None  # what the old owner committed
            await new.write(0, [_record(changelog, _state("c1", "0.056300")), _balance(balances, "", "new")])
            # The old owner's delivery goes on: its commit, and any later write, are refused.
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
            with pytest.raises(Fenced):
                await old.write(0, [_record(changelog, _state("c1", None))])
        finally:
            await old.close()
            await new.close()

    asyncio.run(race())

    # The zombie's records did reach the log (a reader of uncommitted records sees them), aborted.
    assert any(b"zombie" in v for v in _raw(bootstrap, balances, "read_uncommitted"))
    # What the next restore reads: the new owner's record of the call, closed with its debit.
    (log,) = read_partitions(bootstrap, changelog, [0], 10.0).values()
    assert log.states["c1"].credit_debit == "0.056300"
    with TopicReader(bootstrap) as reader:  # read to the end through the transaction markers
        ends = reader.end_offsets(balances)
        assert [json.loads(r.value)["by"] for r in reader.read(balances, ends)] == ["old", "new"]
    # What a node follows: the same, and it gets to the end of the topic (ready).
    assert [r["by"] for r in asyncio.run(_follow(bootstrap, balances))] == ["old", "new"]


def test_a_write_without_the_partitions_id_is_refused_before_anything_is_sent(real_stack: Any) -> None:
    bootstrap = real_stack.kafka_bootstrap
    app_id = f"fence-{uuid.uuid4().hex[:8]}"
    changelog = call_table.changelog_topic(app_id)
    create_topics(bootstrap, {changelog: 2})

    async def run() -> None:
        writers = StateWriters(bootstrap, app_id)
        try:
            await writers.fence([1])
            with pytest.raises(Fenced):  # never taken
                await writers.write(0, [_record(changelog, _state("c1", None))])
            await writers.fence([])  # a rebalance left this worker without partitions
            with pytest.raises(Fenced):
                await writers.write(1, [_record(changelog, _state("c1", None))])
        finally:
            await writers.close()

    asyncio.run(run())
    assert read_partitions(bootstrap, changelog, [0, 1], 10.0)[0].states == {}


def test_a_writer_fenced_between_two_writes_gets_fenced_and_logs_no_unhandled_error(
        real_stack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The prepaid drill's path: the old owner's next transaction is refused when it adds the partition to
    it. That is ``Fenced`` for the caller; aiokafka's futures holding the same refusal must not be logged
    by asyncio as exceptions nobody retrieved (an ERROR line in every such handover)."""
    bootstrap = real_stack.kafka_bootstrap
    app_id = f"fence-{uuid.uuid4().hex[:8]}"
    changelog = call_table.changelog_topic(app_id)
    create_topics(bootstrap, {changelog: 1})

    async def run() -> None:
        old, new = StateWriters(bootstrap, app_id), StateWriters(bootstrap, app_id)
        try:
            await old.fence([0])
            await old.write(0, [_record(changelog, _state("c1", None))])
            await new.fence([0])
            with pytest.raises(Fenced):
                await old.write(0, [_record(changelog, _state("c1", None))])
            await new.write(0, [_record(changelog, _state("c1", "0.056300"))])
        finally:
            await old.close()
            await new.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    (log,) = read_partitions(bootstrap, changelog, [0], 10.0).values()
    assert log.states["c1"].credit_debit == "0.056300"
