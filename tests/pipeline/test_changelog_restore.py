"""Folding one changelog partition into what a worker restores (pipeline/changelog_restore.py)."""

from __future__ import annotations

import hashlib

import orjson

from pipeline.call_table import closed_key, closed_value, encode, liveness_key, state_value
from pipeline.changelog_restore import fold_partition, latest_digest
from pipeline.domain import CallState, ClosedCalls, Policy, apply
from pipeline.synthetic import SyntheticSpec, generate


def _states(calls: int = 60) -> list[CallState]:
    states: dict[str, CallState] = {}
    policy = Policy(no_timer_max_duration=60)
    events = [e for e in generate(SyntheticSpec(calls=calls, seed=5)) if e["type"] != "node.heartbeat"]
    for i, e in enumerate(events):
        if i > len(events) * 0.7 and e["type"] == "call.terminated":
            continue  # some calls stay open
        states[e["call_id"]], _ = apply(states.get(e["call_id"]), e, policy)
    return list(states.values())


def test_the_last_record_of_each_key_wins_and_tombstones_delete() -> None:
    states = _states()
    older = states[:10]
    records = [encode(s.call_id, state_value(1, s)) for s in states]  # first versions
    # Later versions of the first ten (a field changed), then tombstones for five others.
    for s in older:
        value = state_value(1, s)
        value["s"][1] = "closed" if value["s"][1] != "closed" else value["s"][1]
        records.append(encode(s.call_id, value))
    gone = [s.call_id for s in states[20:25]]
    records += [encode(cid, None) for cid in gone]
    records.append(encode(liveness_key(1), {"p": 1, "live": {"node-a": 123, "node-b": 456}}))  # older
    records.append(encode(liveness_key(1), {"p": 1, "clocks": {"node-a": [124, None, 0]},
                                            "beats": {"node-a": 124}, "addresses": {}, "taken_over": {}}))
    closed = ClosedCalls(10**9)
    closed.add("long-gone-call", 5)
    records.append(encode(closed_key(1, "7-ab"), closed_value(1, closed.take_new())))
    records.append((None, b"{}"))  # not a worker's record: no key

    log = fold_partition(1, 999, records)
    assert log.records == len(records) and log.end_offset == 999
    assert set(log.states) == {s.call_id for s in states} - set(gone)
    assert log.live == {"clocks": {"node-a": [124, None, 0]}, "beats": {"node-a": 124}, "addresses": {},
                        "taken_over": {}}
    remembered = ClosedCalls(10**9)
    for rec in log.closed:
        remembered.load(rec)
    assert "long-gone-call" in remembered and log.summary()["closed_remembered"] == 1
    for s in older:
        assert log.states[s.call_id].phase == "closed"
    for s in states[10:20]:
        assert log.states[s.call_id] == s
    summary = log.summary()
    assert summary["calls"] == len(log.states)
    assert summary["open_calls"] == sum(1 for s in log.states.values() if not s.closed)


def test_the_digest_is_of_the_last_value_of_every_live_key_whatever_came_before() -> None:
    states = _states(20)
    first = [encode(s.call_id, state_value(0, s)) for s in states]
    tomb = encode(states[0].call_id, None)
    # The same final content reached two ways: with a call written, dropped and written again.
    a = fold_partition(0, 1, [*first])
    b = fold_partition(0, 1, [first[0], tomb, *first])
    assert a.digest == b.digest
    c = fold_partition(0, 1, [*first, tomb])
    assert c.digest != a.digest
    # Recomputed independently: sha256 over length-prefixed key and value, keys in byte order.
    latest = {k: v for k, v in first if v is not None}
    h = hashlib.sha256()
    for k in sorted(latest):
        h.update(len(k).to_bytes(4, "big") + k + len(latest[k]).to_bytes(4, "big") + latest[k])
    assert a.digest == h.hexdigest() == latest_digest(latest)


def test_an_empty_partition_restores_nothing() -> None:
    log = fold_partition(3, 0, [])
    assert (log.records, log.states, log.live) == (0, {}, {})
    assert log.digest == hashlib.sha256().hexdigest()
    assert orjson.loads(orjson.dumps(log.summary()))["calls"] == 0
