"""The faust workers' call-state table record format (pipeline/call_table.py)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import orjson

from pipeline.call_table import (
    CURRENT_LAYOUT,
    LAYOUTS,
    LIVENESS_PREFIX,
    changelog_topic,
    encode,
    fold_changelog,
    liveness_key,
    state_of,
    state_value,
)
from pipeline.domain import CallState, Policy, apply
from pipeline.synthetic import SyntheticSpec, generate


def test_the_current_layout_is_every_call_state_field_in_order() -> None:
    # Fails when CallState gains, loses or reorders a field: add a new layout, never edit an old one.
    assert LAYOUTS[CURRENT_LAYOUT] == tuple(f.name for f in fields(CallState))


def _states() -> list[CallState]:
    states: dict[str, CallState] = {}
    policy = Policy(no_timer_max_duration=60)
    events = [e for e in generate(SyntheticSpec(calls=300, seed=3)) if e["type"] != "node.heartbeat"]
    # Every third call misses its 2nd event so some states hold early events; others end mid-way.
    for i, e in enumerate(events):
        if e["seq"] == 2 and sum(map(ord, e["call_id"])) % 3 == 0:
            continue
        if i > len(events) * 0.8 and e["type"] == "call.terminated":
            continue
        states[e["call_id"]], _ = apply(states.get(e["call_id"]), e, policy)
    return list(states.values())


def test_a_state_survives_the_changelog_round_trip_field_for_field() -> None:
    states = _states()
    assert any(s.held for s in states) and any(s.closed for s in states) and any(not s.closed for s in states)
    for st in states:
        key, raw = encode(st.call_id, state_value(2, st))
        assert orjson.loads(key) == st.call_id
        value = orjson.loads(raw)
        assert value["p"] == 2
        assert state_of(value) == st


def test_states_written_by_field_name_are_still_read() -> None:
    st = _states()[0]
    assert state_of({"p": 0, "s": st.to_dict()}) == st


def test_an_unknown_layout_is_refused_not_misread() -> None:
    st = _states()[0]
    value = state_value(0, st)
    try:
        state_of(dict(value, w=CURRENT_LAYOUT + 1))
    except ValueError as exc:
        assert "layout" in str(exc)
    else:
        raise AssertionError("a record of an unknown layout was read")


def test_fold_keeps_the_last_value_honours_tombstones_and_skips_liveness() -> None:
    assert changelog_topic("w") == "w-call-state-changelog"
    assert liveness_key(3).startswith(LIVENESS_PREFIX)

    def rec(key: str, value: Any) -> tuple[bytes, bytes | None]:
        return json.dumps(key).encode(), None if value is None else json.dumps(value).encode()

    v1, v2 = {"p": 0, "s": {"call_id": "a", "phase": "pending"}}, {"p": 0, "w": 1, "s": ["a"]}
    records = [rec("a", v1), rec("b", v1), rec(liveness_key(0), {"p": 0, "live": {}}),
               rec("a", v2), rec("b", None), rec("c", None), (b"not json", b"{}")]
    assert fold_changelog(iter(records)) == {"a": v2}
