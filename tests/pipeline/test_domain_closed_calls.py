"""ClosedCalls: a compact memory of closed calls, exact, expiring by log time, persistable."""

from __future__ import annotations

from pipeline.domain.closed_calls import RECORD, ClosedCalls, call_key


def test_membership_is_exact_across_merges() -> None:
    c = ClosedCalls(retention_ms=1_000_000)
    ids = [f"call-{i}" for i in range(120_000)]  # more than one merge
    for i, cid in enumerate(ids):
        c.add(cid, i)
    assert len(c) == 120_000
    assert all(cid in c for cid in ids[::97])
    assert not any(f"other-{i}" in c for i in range(20_000))
    # Keys ending in NUL bytes read back shortened from numpy; they must still be found.
    nul = [cid for cid in ids if call_key(cid).endswith(b"\0")]
    assert nul and all(cid in c for cid in nul)


def test_expiry_by_log_time() -> None:
    c = ClosedCalls(retention_ms=1_000)
    c.add("old", 0)
    c.add("new", 5_000)
    assert c.expire(5_500) == 1
    assert "old" not in c and "new" in c


def test_persistence_round_trip_and_increments() -> None:
    c = ClosedCalls(retention_ms=10**9)
    for i in range(60_000):
        c.add(f"c{i}", i)
    first = c.take_new()
    c.add("late", 70_000)
    second = c.take_new()
    assert len(first) == 60_000 * RECORD and len(second) == RECORD and c.take_new() == b""
    back = ClosedCalls(retention_ms=10**9)
    back.load(first + second + b"\x01\x02")  # a torn last record is ignored
    assert len(back) == 60_001 and "late" in back and "c59999" in back
    whole = ClosedCalls(retention_ms=10**9)
    whole.load(c.entries())
    assert len(whole) == len(c)


def test_memory_per_remembered_call_is_compact() -> None:
    c = ClosedCalls(retention_ms=10**9)
    for i in range(200_000):
        c.add(f"{i:032x}", i)
    c.expire(0)  # merge everything
    assert c.nbytes() / len(c) <= 24
