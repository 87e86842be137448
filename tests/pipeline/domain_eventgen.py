"""Synthetic call events for the domain tests (schema-valid; checked in test_domain_call_state.py)."""

from __future__ import annotations

from typing import Any

from pipeline.domain.timeutil import format_ts

T0 = 1_795_600_800_000  # 2026-11-25T10:00:00.000Z


class CallBuilder:
    """Builds one call's events with consecutive seqs; times are ms offsets from ``t0``."""

    def __init__(self, call_id: str = "c1", node: str = "b2b-1", t0: int = T0) -> None:
        self.call_id, self.node, self.t0 = call_id, node, t0
        self.events: list[dict[str, Any]] = []

    def _ev(self, etype: str, at: int, **body: Any) -> CallBuilder:
        seq = len(self.events) + 1
        self.events.append({
            "event_id": f"{self.call_id}-{seq}", "call_id": self.call_id, "seq": seq, "type": etype,
            "ts": format_ts(self.t0 + at), "node": self.node, "schema_version": 1, **body,
        })
        return self

    def setup(self, at: int = 0, account: str = "acme", callee: str = "+441234567890") -> CallBuilder:
        return self._ev("call.setup", at, caller="+15550001", callee=callee, account=account,
                        source_ip="10.0.0.1", timer_supported=True, requested_session_expires=1800,
                        requested_min_se=90, requested_refresher="uac")

    def routed(self, at: int = 10, vendor: str = "carrierA", attempt: int = 1) -> CallBuilder:
        return self._ev("call.routed", at, vendor=vendor, gateway="192.0.2.1:5060", prefix="44",
                        attempt=attempt)

    def progress(self, at: int = 500, status: int = 180) -> CallBuilder:
        return self._ev("call.progress", at, status=status)

    def answered(self, at: int = 2000, timer_mode: str = "session_timer", session_expires: int | None = 1800,
                 effective_limit_s: int | None = None, limit_source: str = "none",
                 dialogs: bool = False) -> CallBuilder:
        refresher = ({"caller": "peer", "carrier": "b2bua"} if timer_mode == "session_timer"
                     else {"caller": None, "carrier": None})
        extra: dict[str, Any] = {}
        if dialogs:
            extra = {"dialogs": {leg: dialog_leg(self.call_id, leg) for leg in ("caller", "carrier")},
                     "schema_version": 2}
        return self._ev("call.answered", at, timer_mode=timer_mode,
                        session_expires=session_expires if timer_mode == "session_timer" else None,
                        refresher=refresher, effective_limit_s=effective_limit_s, limit_source=limit_source,
                        **extra)

    def refreshed(self, at: int, session_expires: int = 1800, leg: str = "caller",
                  local_cseq: int | None = None) -> CallBuilder:
        extra: dict[str, Any] = {} if local_cseq is None else {"local_cseq": local_cseq}
        return self._ev("session.refreshed", at, leg=leg, method="UPDATE", session_expires=session_expires,
                        expires_at=format_ts(self.t0 + at + session_expires * 1000), **extra)

    def refresh_failed(self, at: int, leg: str = "caller") -> CallBuilder:
        return self._ev("session.refresh_failed", at, leg=leg, method="UPDATE", status=None, cause="timeout")

    def probe_ok(self, at: int, leg: str = "carrier") -> CallBuilder:
        return self._ev("liveness.probe_succeeded", at, leg=leg, status=200)

    def probe_failed(self, at: int, leg: str = "carrier") -> CallBuilder:
        return self._ev("liveness.probe_failed", at, leg=leg, status=None, cause="timeout")

    def terminated(self, at: int, reason: str = "normal_caller_bye", initiator: str = "caller",
                   sip_status: int | None = None) -> CallBuilder:
        return self._ev("call.terminated", at, reason=reason, initiator=initiator, sip_status=sip_status)


def normal_call(call_id: str = "c1", talk_ms: int = 65_400, **kw: Any) -> list[dict[str, Any]]:
    """setup, routed, ringing, answered at +2 s, caller BYE after ``talk_ms``."""
    b = CallBuilder(call_id, **kw).setup().routed().progress().answered()
    b.refreshed(2000 + talk_ms // 2)
    return b.terminated(2000 + talk_ms).events


def heartbeat(node: str, at: int, seq: int = 1, t0: int = T0) -> dict[str, Any]:
    return {"event_id": f"hb-{node}-{seq}", "call_id": f"node:{node}", "seq": seq, "type": "node.heartbeat",
            "ts": format_ts(t0 + at), "node": node, "schema_version": 1, "active_calls": 1}


def node_lost(node: str, at: int, last_heartbeat_at: int | None, t0: int = T0,
              by: str = "test") -> dict[str, Any]:
    """A node.lost verdict written at ``t0 + at`` from a last heartbeat at ``t0 + last_heartbeat_at``."""
    return {"event_id": f"lost-{node}-{last_heartbeat_at}", "call_id": f"node:{node}", "seq": 1,
            "type": "node.lost", "ts": format_ts(t0 + at), "node": node, "schema_version": 2,
            "last_heartbeat": None if last_heartbeat_at is None else format_ts(t0 + last_heartbeat_at),
            "detected_by": by, "probe": "3 OPTIONS to udp:192.0.2.9:5060 unanswered in 3.0 s"}


def dialog_leg(call_id: str, leg: str, cseq: int = 1) -> dict[str, Any]:
    """The dialog state of one leg as the B2BUA puts it into call.answered (schemas dialog_leg)."""
    peer = "10.0.0.1:5060" if leg == "caller" else "192.0.2.1:5060"
    return {"call_id": f"{call_id}-{leg}", "local_tag": f"lt-{leg}", "remote_tag": f"rt-{leg}",
            "local_uri": "<sip:b2bua@192.0.2.10>", "remote_uri": f"<sip:{leg}@{peer}>",
            "remote_target": f"sip:{leg}@{peer}", "route_set": [], "transport": "udp",
            "destination": peer, "local_cseq": cseq}


def taken_over(call_id: str, seq: int, node: str, dead_node: str, at: int, carrier: str = "ended",
               caller: str = "ended", t0: int = T0) -> dict[str, Any]:
    """The call.terminated a taking-over node reports after its BYEs."""
    status = {"ended": 200, "gone": 481, "timeout": None, "not_sent": None}
    return {"event_id": f"{call_id}-takeover", "call_id": call_id, "seq": seq, "type": "call.terminated",
            "ts": format_ts(t0 + at), "node": node, "schema_version": 2, "reason": "orphaned",
            "initiator": "system", "sip_status": None,
            "takeover": {"dead_node": dead_node, "command_id": "c",
                         "legs": {"caller": {"status": status[caller], "outcome": caller},
                                  "carrier": {"status": status[carrier], "outcome": carrier}}}}


# A prepaid account's sell deck: 1.00/min, 6/6 (a call that talked 35.8 s bills 36 s = 0.60).
PREPAID_RATES = """\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,currency,effective_from
pre,1555,1.00,6,6,0,0,USD,2026-01-01
"""


def prepaid_call(call_id: str, talk_ms: int, hold: str = "0.600000", account: str = "pre",
                 node: str = "n1", start: int = 1_000, reason: str = "credit_limit") -> list[dict[str, Any]]:
    """A call of ``account`` ended by its credit limit; the B2BUA's credit grant on its call.setup
    (``hold`` of 0.62 available at 1.00/min) when the account is the prepaid "pre"."""
    b = CallBuilder(call_id, node, t0=T0 + start).setup(account=account, callee="15551230000")
    if account == "pre":
        b.events[0]["credit"] = {"hold": hold, "limit_ms": 36_000, "available": "0.620000", "rate": "1.00",
                                 "currency": "USD"}
    b.routed().answered(2_000, "no_timer", effective_limit_s=36, limit_source="credit_limit")
    return b.terminated(2_000 + talk_ms, reason, "system").events
