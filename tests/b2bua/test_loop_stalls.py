"""The loop stall watch (b2bua/loop_stalls.py) and the timer task on one call_at handle."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc

from b2bua.loop_stalls import LoopStallWatch
from b2bua.sip.deadlines import DeadlineQueue
from b2bua.transport import TimerTask


def test_a_blocked_loop_is_reported_once_then_the_count_starts_anew() -> None:
    async def main() -> tuple[float, float]:
        watch = LoopStallWatch(period=0.005)
        watch.start(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        time.sleep(0.08)  # the loop is stuck: the next tick runs about 80 ms late
        await asyncio.sleep(0.02)
        first = watch.take()
        await asyncio.sleep(0.02)
        second = watch.take()
        watch.stop()
        return first, second

    first, second = asyncio.run(main())
    assert 0.06 <= first < 1.0 and second < 0.05


def test_timer_task_fires_in_deadline_order_and_skips_cancelled_keys() -> None:
    async def main() -> list[str]:
        fired: list[str] = []
        task = TimerTask(lambda key: fired.append(str(key)))
        loop = asyncio.get_running_loop()
        now = loop.time()
        task.set("late", now + 0.03)
        task.start()
        task.set("early", now + 0.01)  # earlier than the armed wake-up: re-armed
        task.set("gone", now + 0.005)
        task.cancel("gone")
        task.set("rearmed", now + 0.001)
        task.set("rearmed", now + 0.02)  # the new deadline replaces the old one
        await asyncio.sleep(0.06)
        await task.stop()
        return fired

    assert asyncio.run(main()) == ["early", "rearmed", "late"]


def test_deadline_queue_stays_bounded_when_timers_are_cancelled() -> None:
    q = DeadlineQueue()
    for i in range(100_000):
        q.set(("call", i, "limit"), 7200.0 + i)  # a duration cap per call...
        q.cancel(("call", i, "limit"))  # ...cancelled when the call ends
        q.set(("tx", i), 32.0 + i)
        if i >= 10:
            q.cancel(("tx", i - 10))
    assert len(q) == 10 and sum(map(len, q._slots)) + sum(map(len, q._far.values())) == 10
    assert q.pop_due(1e9) == [("tx", i) for i in range(99_990, 100_000)] and len(q) == 0


def test_a_burst_of_timers_leaves_no_large_slot_tables() -> None:
    """20,000 timers within 4 s (50 in each of 400 slots), all cancelled, then 20,000 more all popped:
    each slot emptied gets a fresh table, so what the queue retains stays small (about 0.9 MB if each
    slot kept the table it grew to)."""
    q = DeadlineQueue()

    def slot_bytes() -> int:
        return sum(map(sys.getsizeof, q._slots))

    slots_before, where_before = slot_bytes(), sys.getsizeof(q._where)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            q.set(("cancelled", i), 100.0 + i * 0.0002)
        for i in range(20_000):
            q.cancel(("cancelled", i))
        for i in range(20_000):
            q.set(("popped", i), 200.0 + i * 0.0002)  # beyond the wheel's 82 s: waits far, then moves in
        assert q.pop_due(205.0) == [("popped", i) for i in range(20_000)]
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(q) == 0 and q.next_deadline() is None
    assert slot_bytes() == slots_before
    # The one key -> place dict keeps the table of its peak (576 KiB for 20,000 keys) until later
    # insertions resize it: bounded by the peak number of timers, unlike a table per slot. Left out.
    where_growth = sys.getsizeof(q._where) - where_before
    assert retained - where_growth < 100_000, (retained, where_growth)


def test_deadline_queue_matches_a_sorted_model() -> None:
    """Random sets, re-arms, cancels and pops, near and far, against a plain dict."""
    import random

    rng = random.Random(5)
    q, model, now = DeadlineQueue(), {}, 1000.0
    for step in range(20_000):
        op = rng.random()
        key = rng.randrange(300)
        if op < 0.5:
            at = now + rng.choice([rng.uniform(-1, 0.5), rng.uniform(0, 40), rng.uniform(60, 400)])
            q.set(key, at)
            model[key] = at
        elif op < 0.7:
            q.cancel(key)
            model.pop(key, None)
        else:
            now += rng.choice([0.003, 0.01, 0.5, 5.0, 90.0])
            due = sorted((at, k) for k, at in model.items() if at <= now)
            got = q.pop_due(now)
            assert sorted(got, key=lambda k: (model[k], k)) == [k for _, k in due], step
            assert [model[k] for k in got] == sorted(model[k] for k in got)
            for k in got:
                del model[k]
        assert len(q) == len(model)
        expected = min(model.values()) if model else None
        assert q.next_deadline() == expected, step


def test_timer_task_wake_ups_report_how_late_they_ran() -> None:
    """The watch's own tick is slow (100 ms); the timer task's wake-ups report their lateness, and a
    deadline already past when it was set is no stall."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        watch = LoopStallWatch()
        task = TimerTask(lambda key: None, on_late=watch.observe)
        task.start()
        task.set("past", loop.time() - 5.0)  # due long ago: runs at once, 0 late
        await asyncio.sleep(0.01)
        first = watch.take()
        task.set("blocked", loop.time() + 0.005)
        time.sleep(0.06)  # the loop is stuck past the deadline
        await asyncio.sleep(0.01)
        second = watch.take()
        await task.stop()
        return first, second

    first, second = asyncio.run(main())
    assert first < 0.03 and 0.04 <= second < 1.0
