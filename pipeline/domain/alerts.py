"""Zombie-call alerts (schemas/alert.zombie.json), and the gateway alerts of gateways.py on the same path.

Two halves: :func:`raise_once` is used by the core to decide *that* an alert is due (at most one per call
and kind, recorded in the call state so redelivery and replays do not repeat it) and returns a
:class:`RaiseAlert` effect; :func:`build_alert` turns that effect into the wire dict, adding the money
(which needs the sell rate deck the core does not hold).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Final

from .effects import Effect, RaiseAlert
from .rating import NO_CURRENCY, RateDeck, money_str, quantize_money
from .state import CallState
from .timeutil import format_ts

ALERT_KINDS: Final = frozenset({
    "limit_reached", "refresh_failed", "probe_failed", "orphaned", "enforcement_missed", "unknown_call",
    "takeover_failed", "gateway_down", "gateway_up",
})

# Fixed namespace: alert ids must be identical across workers, restarts and replays.
_ALERT_NS: Final = uuid.UUID("5a1f3c2e-9d4b-5e8a-b7c6-0d1e2f3a4b5c")
_MS_PER_MINUTE: Final = Decimal(60_000)


def alert_id(call_id: str, kind: str, key: str = "") -> str:
    """Deterministic id (uuid5 of call_id and kind): one alert per call and kind, so consumers dedup on it.
    ``key`` tells apart alerts of one kind under one call_id (a gateway's reports: the event's id)."""
    name = f"{call_id}\x1f{kind}" + (f"\x1f{key}" if key else "")
    return str(uuid.uuid5(_ALERT_NS, name))


def raise_once(state: CallState, kind: str, ts_ms: int, message: str, effects: list[Effect]) -> None:
    """Append a RaiseAlert for ``kind`` unless this call already raised one of that kind."""
    if kind in state.alerts_raised:
        return
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    state.alerts_raised.add(kind)
    answer = state.answer_ms
    if answer is None:
        ran = unverified = 0
    else:
        ran = max(0, ts_ms - answer)
        proof = state.last_proof_ms if state.last_proof_ms is not None else answer
        unverified = max(0, min(ran, ts_ms - proof))
    effects.append(RaiseAlert(
        kind=kind, call_id=state.call_id, node=state.node, account=state.account, vendor=state.vendor,
        callee=state.callee, answer_ms=answer, ran_ms=ran, unverified_ms=unverified,
        message=message[:512], ts_ms=ts_ms,
    ))


def estimated_cost(effect: RaiseAlert, sell_deck: RateDeck | None) -> tuple[Decimal, str]:
    """Sell rate per minute x unverified time (no increments, no fee: it is an estimate of exposure)."""
    rate = None
    if sell_deck is not None and effect.account:
        rate = sell_deck.lookup(effect.account, effect.callee,
                                effect.answer_ms if effect.answer_ms is not None else effect.ts_ms)
    if rate is None:
        return quantize_money(Decimal(0)), (sell_deck.currency if sell_deck else NO_CURRENCY)
    cost = rate.rate_per_minute * Decimal(effect.unverified_ms) / _MS_PER_MINUTE
    return quantize_money(cost), rate.currency


def build_alert(effect: RaiseAlert, sell_deck: RateDeck | None = None) -> dict[str, Any]:
    """The alert dict for ``effect``; valid against schemas/alert.zombie.json."""
    cost, currency = estimated_cost(effect, sell_deck)
    alert: dict[str, Any] = {
        "alert_id": alert_id(effect.call_id, effect.kind, effect.alert_key),
        "kind": effect.kind,
        "call_id": effect.call_id,
        "node": effect.node[:64],
        "account": effect.account[:64],
        "vendor": effect.vendor[:64],
        "ran_ms": effect.ran_ms,
        "unverified_ms": effect.unverified_ms,
        "estimated_cost": money_str(cost),
        "currency": currency,
        "message": effect.message,
        "ts": format_ts(effect.ts_ms),
        "schema_version": 1,
    }
    if effect.gateway:
        alert["gateway"] = effect.gateway[:64]
    return alert


def alert_line(alert: dict[str, Any]) -> str:
    """The log line of an alert (what an operator greps for: "zombie alert" or "gateway alert")."""
    if alert["kind"] in ("gateway_down", "gateway_up"):
        return f"gateway alert {alert['kind']}: {alert['message']}"
    return (f"zombie alert {alert['kind']}: call {alert['call_id']} ({alert['account']} via "
            f"{alert['vendor']}) {alert['message']}")
