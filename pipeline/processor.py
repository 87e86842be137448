"""The one pipeline loop, shared by every driver (faust worker, embedded runner, replay).

It validates raw events (refusals become dead letters), folds them into per-call state
with the pure domain core, keeps deadlines in a heap and node liveness, and turns the
core's effects into contract messages: rated CDRs, alerts, terminate commands. Drivers
only move bytes in and messages out and decide what "now" is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.domain import (
    CallState,
    DeadlineQueue,
    EmitCdr,
    IssueTerminate,
    NodeLiveness,
    Policy,
    RaiseAlert,
    RateDeck,
    apply,
    build_alert,
    build_command,
    on_deadline,
    on_node_lost,
    rerate,
)
from pipeline.domain.effects import Effect
from schemas.validation import ContractError, decode_event, validate_event
from sipledger.config import Config

ISSUER = "sipledger-pipeline"


@dataclass(slots=True)
class Outputs:
    """Messages produced since the last ``take``."""

    cdrs: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[str, bytes | str, ContractError]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cdrs or self.alerts or self.commands or self.dead_letters)


def policy_from_config(cfg: Config) -> Policy:
    t, p = cfg.timers, cfg.pipeline
    return Policy(max_call_duration=t.max_call_duration, no_timer_max_duration=t.no_timer_max_duration,
                  session_timeout_early_hangup=t.session_timeout_early_hangup,
                  grace_period_s=round(p.grace_period), node_timeout_s=round(p.node_timeout),
                  unknown_call_timeout_s=round(p.unknown_call_timeout))


def load_decks(cfg: Config) -> tuple[RateDeck | None, RateDeck | None]:
    def deck(path: str) -> RateDeck | None:
        if not path:
            return None
        p = cfg.path(path)
        return RateDeck.from_csv(p, version=p.stem)

    return deck(cfg.pipeline.sell_rates), deck(cfg.pipeline.buy_rates)


class Processor:
    def __init__(self, policy: Policy, sell_deck: RateDeck | None = None, buy_deck: RateDeck | None = None,
                 bill_modes: Mapping[str, str] | None = None, issued_by: str = ISSUER) -> None:
        self.policy = policy
        self.sell_deck = sell_deck
        self.buy_deck = buy_deck
        self.bill_modes = dict(bill_modes or {})
        self.issued_by = issued_by
        self.states: dict[str, CallState] = {}
        self.deadlines = DeadlineQueue()
        self.liveness = NodeLiveness()
        self.out = Outputs()
        self.events_seen = 0

    @classmethod
    def from_config(cls, cfg: Config) -> Processor:
        sell, buy = load_decks(cfg)
        return cls(policy_from_config(cfg), sell, buy, {a.name: a.bill_mode for a in cfg.accounts})

    # -- input -------------------------------------------------------------------------------------
    def feed_raw(self, raw: bytes | str, source: str = "call-events") -> dict[str, Any] | None:
        """Validate and apply one wire event; an invalid one becomes a dead letter. Returns the event."""
        try:
            event = decode_event(raw)
        except ContractError as exc:
            self.out.dead_letters.append((source, raw, exc))
            return None
        self._apply(event)
        return event

    def feed(self, event: dict[str, Any], validated: bool = False, source: str = "call-events") -> bool:
        if not validated:
            try:
                validate_event(event)
            except ContractError as exc:
                self.out.dead_letters.append((source, json.dumps(event, default=str), exc))
                return False
        self._apply(event)
        return True

    def _apply(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        if event["type"] == "node.heartbeat":
            self.liveness.observe(event)
            return
        state, effects = apply(self.states.get(event["call_id"]), event, self.policy)
        self.states[state.call_id] = state
        self.liveness.track(state)
        self._carry_out(effects)

    # -- time --------------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> None:
        """Enforce what is due at ``now_ms``: missed deadlines, lost nodes."""
        for call_id in self.deadlines.pop_due(now_ms):
            state = self.states.get(call_id)
            if state is None:
                continue
            state, effects = on_deadline(state, now_ms, self.policy)
            self._carry_out(effects)
        for node in self.liveness.lost_nodes(now_ms, self.policy.node_timeout_s * 1000):
            for call_id in list(self.liveness.calls_of(node)):
                state = self.states.get(call_id)
                if state is None or state.closed:
                    continue
                state, effects = on_node_lost(state, now_ms)
                self.liveness.track(state)
                self._carry_out(effects)

    def next_due(self) -> int | None:
        return self.deadlines.peek()

    # -- output ------------------------------------------------------------------------------------
    def _carry_out(self, effects: Iterable[Effect]) -> None:
        self.deadlines.apply_effects(effects)
        for e in effects:
            if isinstance(e, EmitCdr):
                self.out.cdrs.append(rerate(e.cdr_fields, self.sell_deck, self.buy_deck, self.bill_modes))
            elif isinstance(e, RaiseAlert):
                self.out.alerts.append(build_alert(e, self.sell_deck))
            elif isinstance(e, IssueTerminate):
                self.out.commands.append(build_command(e, self.issued_by))

    def take(self) -> Outputs:
        out, self.out = self.out, Outputs()
        return out

    # -- state -------------------------------------------------------------------------------------
    def active_calls(self) -> Iterator[CallState]:
        return (s for s in self.states.values() if not s.closed)

    def evict_closed(self, ended_before_ms: int | None = None) -> int:
        """Forget closed calls (their CDRs are out), or only those that ended before a time.

        Keeping recently closed calls a while lets a redelivered duplicate be recognised as one
        instead of opening a new, unknown call. Returns how many were dropped.
        """
        closed = [cid for cid, s in self.states.items()
                  if s.closed and (ended_before_ms is None or (s.end_ms or 0) < ended_before_ms)]
        for cid in closed:
            del self.states[cid]
        return len(closed)

    def snapshot(self) -> dict[str, Any]:
        return {"states": {cid: s.to_dict() for cid, s in self.states.items()},
                "liveness": self.liveness.to_dict(), "events_seen": self.events_seen}

    def restore(self, snap: Mapping[str, Any]) -> None:
        # States as dicts (checkpoints) or already decoded (the faust worker's table).
        self.states = {cid: d if isinstance(d, CallState) else CallState.from_dict(d)
                       for cid, d in snap.get("states", {}).items()}
        self.liveness = NodeLiveness.from_dict(snap["liveness"]) if "liveness" in snap else NodeLiveness()
        self.events_seen = int(snap.get("events_seen", 0))
        # The heap is derived state: rebuilt, never persisted.
        self.deadlines = DeadlineQueue.rebuild(self.states, self.policy)


def save_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)
