"""The JSON Schemas in schemas/ and the fast validator built on them."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import validation
from schemas.validation import ContractError, decode_event, validate_event

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
TS = "2026-11-25T10:00:00.123Z"


def env(etype: str, **fields: object) -> dict:
    return {"event_id": "e-1", "call_id": "c-1", "seq": 1, "type": etype, "ts": TS, "node": "n1",
            "schema_version": 1, **fields}


GOOD = [
    env("call.setup", caller="100", callee="4420", account="acme", source_ip="127.0.0.1",
        timer_supported=True, requested_session_expires=1800, requested_min_se=90, requested_refresher="uac"),
    env("call.routed", vendor="carrier-a", gateway="127.0.0.1:5070", prefix="44", attempt=1),
    env("call.progress", status=180),
    env("call.answered", timer_mode="no_timer", session_expires=None,
        refresher={"caller": None, "carrier": "b2bua"}, effective_limit_s=7200,
        limit_source="no_timer_max_duration"),
    env("session.refreshed", leg="caller", method="UPDATE", session_expires=600, expires_at=TS),
    env("session.refresh_failed", leg="carrier", method="INVITE", status=408, cause="status"),
    env("liveness.probe_succeeded", leg="caller", status=200),
    env("liveness.probe_failed", leg="caller", status=None, cause="timeout"),
    env("call.terminated", reason="normal_caller_bye", initiator="caller", sip_status=None),
    env("node.heartbeat", call_id="node:n1", active_calls=3),
]


@pytest.mark.parametrize("event", GOOD, ids=[e["type"] for e in GOOD])
def test_valid_events_pass(event: dict) -> None:
    validate_event(event)
    assert decode_event(json.dumps(event)) == event


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda e: e.pop("callee"), "callee"),
    (lambda e: e.update(seq=0), "seq"),
    (lambda e: e.update(ts="2026-11-25 10:00:00"), "ts"),
    (lambda e: e.update(timer_supported="yes"), "timer_supported"),
    (lambda e: e.update(surprise=1), "surprise"),
    (lambda e: e.update(schema_version=3), "schema_version"),
    (lambda e: e.update(type="call.exploded"), "type"),
])
def test_invalid_event_is_rejected_with_the_field_named(mutate, field: str) -> None:
    event = dict(GOOD[0])
    mutate(event)
    with pytest.raises(ContractError) as err:
        validate_event(event)
    assert err.value.field == field


def test_garbage_is_rejected_not_crashing() -> None:
    for raw in [b"", b"{", b"\xff\xfe", b"[1,2]", b"null", b'"x"']:
        with pytest.raises(ContractError):
            decode_event(raw)


def test_every_schema_file_is_a_valid_draft_2020_12_schema() -> None:
    files = sorted(SCHEMAS.glob("*.json")) + sorted((SCHEMAS / "events").glob("*.json"))
    assert len(files) >= 15
    for f in files:
        schema = json.loads(f.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
    event_files = {f.stem for f in (SCHEMAS / "events").glob("*.json")}
    assert event_files == set(validation.EVENT_TYPES)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(GOOD), key=st.sampled_from(
    ["seq", "ts", "call_id", "status", "leg", "reason", "active_calls", "attempt", "caller"]),
       value=st.one_of(st.none(), st.integers(-5, 900), st.text(max_size=30), st.booleans()))
def test_fast_and_reference_validators_agree(base: dict, key: str, value: object) -> None:
    event = dict(base, **{key: value})
    reference = Draft202012Validator(
        json.loads((SCHEMAS / "events" / f"{event['type']}.json").read_text()),
        registry=validation._registry())
    ref_ok = reference.is_valid(event)
    try:
        validate_event(event)
        fast_ok = True
    except ContractError:
        fast_ok = False
    assert fast_ok == ref_ok


def test_command_alert_and_dead_letter_contracts() -> None:
    validation.validate_command({
        "command_id": "k1", "type": "call.terminate", "call_id": "c-1", "node": "n1",
        "reason": "no_timer_limit", "issued_by": "pipeline", "deadline": TS, "ts": TS, "schema_version": 1})
    validation.validate_alert({
        "alert_id": "a1", "kind": "enforcement_missed", "call_id": "c-1", "node": "n1", "account": "acme",
        "vendor": "carrier-a", "ran_ms": 7205000, "unverified_ms": 7200000, "estimated_cost": "2.400000",
        "currency": "USD", "message": "no BYE after the no-timer cap", "ts": TS, "schema_version": 1})
    with pytest.raises(ContractError) as err:
        validation.validate_alert({"kind": "meh"})
    assert err.value.field
    validation.validate_dead_letter({"source": "call-events", "reason": "seq: 0 is less than 1",
                                     "field": "seq", "raw": "{}", "ts": TS, "schema_version": 1})
