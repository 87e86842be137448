"""How far the faust worker has read a partition, in wall time: the node watch's measure of silence."""

from __future__ import annotations

from pipeline.domain.policy import Policy
from pipeline.faust_app import HW_SAMPLES, PartitionRuntime
from pipeline.processor import Processor


def _rt() -> PartitionRuntime:
    return PartitionRuntime(Processor(Policy(no_timer_max_duration=60, grace_period_s=5, node_timeout_s=30,
                                                   max_event_lead_s=10)))


def test_nothing_known_before_the_first_highwater() -> None:
    assert _rt().read_through(None, 1_000) is None


def test_at_the_highwater_reading_is_through_now() -> None:
    rt = _rt()
    rt.last_offset = 9
    assert rt.read_through(10, 5_000) == 5_000


def test_steady_traffic_reads_through_the_time_a_highwater_was_seen() -> None:
    rt = _rt()
    rt.last_offset = 9
    assert rt.read_through(10, 1_000) == 1_000
    # new records arrive faster than one turn: the highwater moves ahead each time
    assert rt.read_through(20, 1_100) == 1_000
    rt.last_offset = 15
    assert rt.read_through(30, 1_200) == 1_000  # 20 not reached yet
    rt.last_offset = 19
    assert rt.read_through(40, 1_300) == 1_100  # everything seen at 1_100 is read
    rt.last_offset = 35
    assert rt.read_through(50, 1_400) == 1_200


def test_a_reader_stuck_behind_keeps_its_old_time_and_bounded_samples() -> None:
    rt = _rt()
    rt.last_offset = 0
    rt.read_through(1, 0)
    for i in range(1, 10 * HW_SAMPLES):
        assert rt.read_through(1 + i, i) == 0
    assert len(rt.hw_seen) == HW_SAMPLES
    rt.last_offset = 10 * HW_SAMPLES
    assert rt.read_through(10 * HW_SAMPLES + 1, 99_999) == 99_999
    assert not rt.hw_seen
