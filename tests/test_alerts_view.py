"""Alert text as a person reads it: a missing SIP status reads "no response", never Python's None."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.domain.alerts import build_alert
from pipeline.domain.effects import RaiseAlert
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.timeutil import format_ts
from schemas.validation import validate_alert, validate_event
from sipledger.alerts_view import describe

T0 = 1_795_600_800_000  # 2026-11-25T10:00:00.000Z


def _events(failure: dict[str, Any]) -> list[dict[str, Any]]:
    base = [
        {"type": "call.setup", "caller": "+15550001", "callee": "+441234567890", "account": "acme",
         "source_ip": "10.0.0.1", "timer_supported": True, "requested_session_expires": 1800,
         "requested_min_se": 90, "requested_refresher": "uac"},
        {"type": "call.routed", "vendor": "carrierA", "gateway": "192.0.2.1:5060", "prefix": "44",
         "attempt": 1},
        {"type": "call.answered", "timer_mode": "session_timer", "session_expires": 1800,
         "refresher": {"caller": "peer", "carrier": "b2bua"}, "effective_limit_s": None,
         "limit_source": "none"},
        failure,
    ]
    out = []
    for seq, body in enumerate(base, start=1):
        ev = {"event_id": f"c1-{seq}", "call_id": "c1", "seq": seq, "ts": format_ts(T0 + seq * 1000),
              "node": "b2b-1", "schema_version": 1, **body}
        validate_event(ev)
        out.append(ev)
    return out


def _alert(failure: dict[str, Any]) -> dict[str, Any]:
    state = None
    effects = []
    for ev in _events(failure):
        state, fx = apply(state, ev, Policy())
        effects += fx
    (raised,) = [e for e in effects if isinstance(e, RaiseAlert)]
    alert = build_alert(raised)
    validate_alert(alert)
    return alert


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ({"type": "session.refresh_failed", "leg": "caller", "method": None, "status": None,
          "cause": "expired"},
         "session refresh failed on the caller leg (expired, no response)"),
        ({"type": "session.refresh_failed", "leg": "carrier", "method": "UPDATE", "status": 481,
          "cause": "status"},
         "session refresh failed on the carrier leg (status, status 481)"),
        ({"type": "liveness.probe_failed", "leg": "carrier", "status": None, "cause": "timeout"},
         "liveness probe failed on the carrier leg (timeout, no response)"),
        ({"type": "liveness.probe_failed", "leg": "caller", "status": 408, "cause": "status"},
         "liveness probe failed on the caller leg (status, status 408)"),
    ],
)
def test_failure_alerts_word_a_missing_status(failure: dict[str, Any], expected: str) -> None:
    alert = _alert(failure)
    assert alert["message"] == expected
    assert "None" not in describe(alert)


def test_describe_rewords_alerts_written_before() -> None:
    """Alerts already in journals and topics keep the old wording; describe reads them as today's."""
    old = {"alert_id": "a-1", "kind": "refresh_failed", "call_id": "c1", "node": "b2b-1", "account": "",
           "vendor": "carrierA", "ran_ms": 61_000, "unverified_ms": 30_000, "estimated_cost": "0.012000",
           "currency": "USD", "ts": "2026-11-25T10:01:01.000Z", "schema_version": 1,
           "message": "session refresh failed on the caller leg (expired, status None)"}
    validate_alert(old)
    text = describe(old)
    assert text.endswith("session refresh failed on the caller leg (expired, no response)")
    assert "None" not in text and "account -" in text
    with_status = dict(old, message="liveness probe failed on the caller leg (status, status 404)")
    assert describe(with_status).endswith("(status, status 404)")
