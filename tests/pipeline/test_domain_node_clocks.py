"""NodeClocks: each node's own event time; far-ahead events are clamped until confirmed."""

from __future__ import annotations

from pipeline.domain.node_clocks import NodeClocks

LEAD = 10_000


def test_clock_moves_with_its_own_events_only() -> None:
    c = NodeClocks(LEAD)
    assert c.advance("a", 1_000) == 1_000
    assert c.advance("b", 50_000) == 50_000  # another node far ahead: a's clock is untouched
    assert c.now("a") == 1_000 and c.advance("a", 5_000) == 5_000
    assert c.advance("a", 4_000) is None and c.now("a") == 5_000  # late events never rewind
    assert c.log_time() == 50_000 and c.nodes() == ["a", "b"]


def test_one_far_ahead_event_is_clamped_and_a_normal_one_clears_it() -> None:
    c = NodeClocks(LEAD)
    c.advance("a", 0)
    assert c.advance("a", 27_000) is None and c.is_clamped("a", 27_000) and c.clamped("a") == 1
    assert c.now("a") == 0
    assert c.advance("a", 5_000) == 5_000  # the stream goes on at its real time
    assert c.advance("a", 120_000) is None and c.now("a") == 5_000 and c.clamped("a") == 2
    assert c.advance("a", 9_000) == 9_000


def test_a_confirmed_jump_is_taken_at_the_earlier_of_the_two() -> None:
    c = NodeClocks(LEAD)
    c.advance("a", 0)
    assert c.advance("a", 60_000) is None  # a node back after a pause: its first heartbeat
    assert c.advance("a", 65_000) == 60_000  # the second confirms
    assert c.advance("a", 65_000) == 65_000


def test_round_trip_and_old_snapshots() -> None:
    c = NodeClocks(LEAD)
    c.advance("a", 0)
    c.advance("a", 99_000)
    c.advance("b", 7)
    back = NodeClocks.from_dict(c.to_dict(), LEAD)
    assert back.to_dict() == c.to_dict() and back.clamped("a") == 1
    old = NodeClocks.from_dict({"a": 1234}, LEAD)  # last-seen times of earlier checkpoints
    assert old.now("a") == 1234
