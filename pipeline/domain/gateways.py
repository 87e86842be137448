"""Gateway alerts: the B2BUA nodes' ``gateway.down`` / ``gateway.up`` reports, turned into alerts for people.

A node reports each change of one of its routing gateways under the key ``gateway:<node>:<gateway>``
(that node's view of that gateway; two nodes probing one carrier report it twice, each for itself).
What people need is the news, once: the gateway went down, the gateway is back. So the last reported
state of each key is kept here (``GatewayReports``), with the time of that report, and

* ``gateway.down`` raises a ``gateway_down`` alert unless the key was already known down (a node that
  restarts while its gateway is still dead reports it down again: no second alert);
* ``gateway.up`` raises a ``gateway_up`` alert only if the key was known down (a node's first "up" of
  a gateway it had not judged yet is no news; one that comes after a down, even across a restart of the
  node, is);
* a report not newer than the last one applied (a redelivery, an older duplicate) changes nothing.

Alert ids are derived from the report's event id, so a replay of the log or a second worker raising the
same alert writes the same id. The alert carries no money (no account, no call time).
"""

from __future__ import annotations

from typing import Any, Final

from .effects import Effect, RaiseAlert
from .timeutil import format_ts

GATEWAY_EVENT_TYPES: Final = frozenset({"gateway.down", "gateway.up"})


class GatewayReports:
    """Per key (gateway:<node>:<gateway>): the last reported state (``up`` or ``down``), the time of that
    report, and since when the state has been reported (a repeated "down" keeps the first one's time)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, int, int]] = {}

    def observe(self, event: dict[str, Any], ts_ms: int) -> list[Effect]:
        """Fold one gateway.down / gateway.up report; the alert it raises, if any."""
        key = event["call_id"]
        state = "down" if event["type"] == "gateway.down" else "up"
        known = self.last.get(key)
        if known is not None and ts_ms <= known[1]:
            return []  # a redelivery or an older report: the newer one stands
        since = known[2] if known is not None and known[0] == state else ts_ms
        self.last[key] = (state, ts_ms, since)
        # Known down here, or, with no record of the key (a log that begins later), by the node's word.
        was_down = known[0] == "down" if known is not None else event.get("previous") == "down"
        if state == "down" and was_down:
            return []
        if state == "up" and not was_down:
            return []
        kind = f"gateway_{state}"
        return [RaiseAlert(kind=kind, call_id=key, node=event["node"], account="", vendor=event["vendor"],
                           callee="", answer_ms=None, ran_ms=0, unverified_ms=0,
                           message=message(event, known[2] if was_down and known is not None else None)[:512],
                           ts_ms=ts_ms, gateway=event["gateway"], alert_key=event["event_id"])]

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.last.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GatewayReports:
        out = cls()
        out.last = {k: (str(v[0]), int(v[1]), int(v[2])) for k, v in d.items()}
        return out


def message(event: dict[str, Any], down_since_ms: int | None) -> str:
    """What the alert tells people: which gateway, on which node, and the evidence."""
    where = f"gateway {event['gateway']} (vendor {event['vendor']}, {event['transport']} {event['address']})"
    node = event["node"]
    if event["type"] == "gateway.down":
        cause = {"probe_timeout": "probes unanswered", "probe_status": "probes refused",
                 "invite_timeout": "INVITEs unanswered"}.get(event["cause"], event["cause"])
        last = (f"last answer {event['last_status']} at {event['last_answer']}"
                + (f" in {event['last_rtt_ms']:g} ms" if event.get("last_rtt_ms") is not None else "")
                if event.get("last_answer") else "no answer since the node started")
        refused = f" (status {event['status']})" if event.get("status") is not None else ""
        return (f"{where} down on node {node}: {event['losses']} {cause} in a row{refused}; {last}; "
                "calls are routed around it")
    rtt = f" in {event['rtt_ms']:g} ms" if event.get("rtt_ms") is not None else " to an INVITE"
    # Down since the first report of it read here (across the node's restarts), else by the node's word.
    since = format_ts(down_since_ms) if down_since_ms is not None else event.get("down_since")
    down = f", down since {since}" if since else ""
    return f"{where} up again on node {node}: answered {event['status']}{rtt}{down}; calls are routed to it"
