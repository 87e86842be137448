"""A worker the consumer group expelled writes no state (found by tests/drills/test_prepaid_faults.py).

When a worker's session expires (its loop or the broker stalled longer than ``pipeline.session_timeout``),
the group hands its partitions to another worker, which restores them from the changelog as it is then
and folds on from the committed offsets. The expelled worker learns it from aiokafka (a heartbeat or a
commit answered "unknown member": the coordinator's generation is reset) and is then revoked. Its
deliveries still in flight must not write their changelog records after that: the next restore would
read those older states over the new owner's. In the drill that left prepaid calls open in the call table
after their CDR was written (the new owner had folded their end within one batch and written no record
of them), so their holds stayed reserved and their debits were missing from the balances the nodes
follow, and each such call would be ended again at its hard cap (a false alert and command).

A rebalance the worker takes part in is different: the group waits for it, so its deliveries finish first.
No broker is needed: the app is built as ``sipledger pipeline`` builds it, its state writes and its
consumer's aiokafka coordinator are replaced by stand-ins. (The broker's own fencing of a worker that
lost a partition, a second line behind these, is tested in test_state_writer.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.faust_app import Fenced, make_app
from sipledger import config as config_mod

STATE = ("sipledger-pipeline-call-state-changelog", 0, b'"c1"', b'{"state": "older"}')


def _pipeline(tmp_path: Path, generation: int, extra: str = "") -> tuple[Any, list[Any]]:
    """The worker's pipeline, whose sends land in the returned list and whose aiokafka coordinator has
    ``generation`` (-1: the group forgot the member); ``extra`` is appended to its config."""
    cfg_file = tmp_path / "sipledger.toml"
    cfg_file.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\ntopic_events = "ev"\n' + extra)
    app = make_app(config_mod.load(str(cfg_file), []), app_id=f"unit-{uuid.uuid4().hex[:6]}")
    pipe: Any = app.sipledger  # type: ignore[attr-defined]
    pipe.writer.kill()
    written: list[Any] = []

    async def write(_partition: int, messages: list[Any]) -> None:
        written.extend(messages)

    pipe.state_writers.write = write
    # aiokafka's coordinator as the consumer thread holds it: generation -1 once the group forgot the member
    coordinator = SimpleNamespace(generation=generation, member_id="" if generation < 0 else "w1-1")
    app.consumer._thread._ensure_consumer = lambda: SimpleNamespace(_coordinator=coordinator)
    return pipe, written


async def _revoke_with_a_delivery_in_flight(tmp_path: Path, generation: int) -> list[Any]:
    """A delivery waiting (for the broker, the store) when the revocation comes; it is let go while the
    revocation waits. Returns the changelog records it managed to write."""
    pipe, written = _pipeline(tmp_path, generation)
    broker_back = asyncio.Event()
    epoch = pipe.epoch

    async def delivery() -> bool:  # the state step of KafkaPipeline._deliver
        await broker_back.wait()  # outputs and rows acknowledged at last
        try:
            await pipe._write_state({0: [STATE]}, epoch)
        except Fenced:
            return False  # writes no state, its offsets are never acked
        return True

    flight = asyncio.ensure_future(pipe._guarded(delivery()))
    pipe._flights.append(flight)
    revoking = asyncio.ensure_future(pipe.before_revoke())
    await asyncio.sleep(0.05)  # the revocation is waiting for the delivery now
    broker_back.set()
    await revoking
    await asyncio.gather(flight, return_exceptions=True)
    return written


def test_an_expelled_worker_fences_its_deliveries_in_flight(tmp_path: Path) -> None:
    assert asyncio.run(_revoke_with_a_delivery_in_flight(tmp_path, generation=-1)) == []


def test_a_worker_still_in_the_group_lets_its_deliveries_finish_before_the_handover(tmp_path: Path) -> None:
    assert asyncio.run(_revoke_with_a_delivery_in_flight(tmp_path, generation=7)) == [STATE]


def test_a_delivery_reaching_its_writes_before_the_expelled_worker_is_revoked_writes_nothing(
        tmp_path: Path) -> None:
    async def publish() -> list[Any]:
        pipe, written = _pipeline(tmp_path, generation=-1)
        with pytest.raises(Fenced):
            await pipe._write_state({0: [STATE]}, pipe.epoch)
        return written

    assert asyncio.run(publish()) == []


def test_a_revocation_that_times_out_leaves_the_next_deliveries_acknowledged(tmp_path: Path) -> None:
    """A revocation whose wait for the deliveries in flight times out fences them; it must not cancel them.

    Found by tests/drills/test_prepaid_faults.py: after the broker outage a worker's revocation waited
    its 7.5 s in vain and the same worker got the partitions back, but its commits stayed where its
    re-read began. The timed-out wait had cancelled the last delivery it awaited and, through ``await
    previous``, the whole chain; the re-read's deliveries chained onto the cancelled ones and ended
    cancelled too, so their offsets were never acked and faust (contiguous acks only) committed nothing
    past them.
    """
    async def run() -> tuple[Any, Any, list[Any]]:
        pipe, written = _pipeline(tmp_path, generation=7, extra="[pipeline]\nrebalance_timeout = 1\n")
        broker_back = asyncio.Event()

        async def write(_partition: int, messages: list[Any]) -> None:
            await broker_back.wait()  # the broker (or store) hangs past the revocation's wait
            written.extend(messages)

        pipe.state_writers.write = write
        before = await pipe._chain([], {0: [STATE]}, [])  # folded before the revocation: its state hangs
        await pipe.before_revoke()  # waits half the rebalance timeout (0.5 s), then fences it
        assert pipe.epoch == 1 and not before.done()
        # The partitions come back to this worker: the first batch it re-reads is delivered after the
        # fenced one (state records stay in fold order).
        after_state = ("sipledger-pipeline-call-state-changelog", 0, b'"c1"', b'{"state": "re-read"}')
        after = await pipe._chain([], {0: [after_state]}, [])
        broker_back.set()
        await asyncio.wait([before, after], timeout=5)
        return before, after, written

    before, after, written = asyncio.run(run())
    assert not before.cancelled()  # fenced (or already past its writes), not cancelled
    assert not after.cancelled() and after.result() is True  # so the consumer acks its offsets
    assert written[-1][3] == b'{"state": "re-read"}'


def test_a_state_write_the_broker_refuses_asks_the_group_to_rebalance_and_is_not_acknowledged(
        tmp_path: Path) -> None:
    """The broker refused a partition's state transaction (another producer took the partition's
    transactional id) while the group has not told this worker it lost the partition. The delivery is not
    acknowledged, and the worker asks the group to rebalance, once: a new assignment takes the id afresh.
    It never takes the id back by itself, which would fence a rightful new owner."""
    async def run() -> tuple[list[bool], int]:
        pipe, _ = _pipeline(tmp_path, generation=7)
        rejoins: list[str] = []
        coordinator = SimpleNamespace(generation=7, member_id="w1-1",
                                      request_rejoin=lambda: rejoins.append("rejoin"))
        thread = pipe.app.consumer._thread
        thread._ensure_consumer = lambda: SimpleNamespace(_coordinator=coordinator)

        async def call_thread(fn: Any) -> Any:
            return await fn()

        thread.call_thread = call_thread

        async def refused(_partition: int, _messages: list[Any]) -> None:
            raise Fenced

        pipe.state_writers.write = refused
        results = [await (await pipe._chain([], {0: [STATE]}, [])) for _ in range(2)]
        return results, len(rejoins)

    results, rejoins = asyncio.run(run())
    assert results == [False, False]  # neither delivery is acked: their events are re-read
    assert rejoins == 1
