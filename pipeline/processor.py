"""The one pipeline loop, shared by every driver (faust worker, embedded runner, replay).

It validates raw events (refusals become dead letters), folds them into per-call state with the pure
domain core and turns the core's effects into contract messages: rated CDRs, alerts, terminate
commands. Prepaid accounts' top-ups, holds and debits go into the ledger (``pipeline/domain/ledger.py``),
whose changed accounts come out as account.balance records for the nodes and as ledger rows.
Time is the log's: every event moves its node's clock (``NodeClocks``) and the deadlines of
that node's calls are judged on it right after the event is folded, so a Processor decides the same
whatever wall clock its driver runs on and however long it stopped reading. It never judges a node
lost from silence: it closes a node's calls only when it reads a node.lost verdict in the log (the live
drivers' ``LivenessWatch`` writes those). Closed calls are dropped by ``evict_closed`` into a compact
memory (``ClosedCalls``) so that a late event of one is counted and changes nothing.
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
    ClosedCalls,
    DeadlineQueue,
    EmitCdr,
    IssueRelease,
    IssueTakeover,
    IssueTerminate,
    NodeCalls,
    NodeClocks,
    Policy,
    RaiseAlert,
    RateDeck,
    apply,
    build_alert,
    build_command,
    build_release,
    build_takeover,
    on_deadline,
    on_node_lost,
    rerate,
)
from pipeline.domain.effects import Effect
from pipeline.domain.gateways import GATEWAY_EVENT_TYPES, GatewayReports
from pipeline.domain.ledger import Ledger, money
from pipeline.domain.rules import close_orphan
from pipeline.domain.timeutil import format_ts, parse_ts
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
    # What the operator should know but nothing downstream consumes (clamped clocks, stale verdicts).
    notices: list[str] = field(default_factory=list)
    # account.balance records for the nodes, and the ledger's rows for the store (account_ledger).
    balances: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cdrs or self.alerts or self.commands or self.dead_letters or self.notices
                    or self.balances or self.ledger)


def policy_from_config(cfg: Config) -> Policy:
    t, p = cfg.timers, cfg.pipeline
    return Policy(max_call_duration=t.max_call_duration, no_timer_max_duration=t.no_timer_max_duration,
                  session_timeout_early_hangup=t.session_timeout_early_hangup,
                  grace_period_s=round(p.grace_period), node_timeout_s=round(p.node_timeout),
                  unknown_call_timeout_s=round(p.unknown_call_timeout),
                  max_event_lead_s=round(p.max_event_lead),
                  closed_call_retention_s=round(p.closed_call_retention),
                  takeover=p.takeover, takeover_timeout_s=round(p.takeover_timeout))


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
        self.clocks = NodeClocks(policy.max_event_lead_s * 1000)
        # Newest node.heartbeat ts per node, and the address each node answers probes at.
        self.heartbeats: dict[str, int] = {}
        self.addresses: dict[str, str] = {}
        self.node_calls = NodeCalls()
        self.closed = ClosedCalls(policy.closed_call_retention_s * 1000)
        self.out = Outputs()
        self.events_seen = 0
        # Events of calls already closed and dropped (late redeliveries); they change nothing.
        self.late_events = 0
        # Events held back from moving their node's clock (dated too far ahead), and node.lost
        # verdicts ignored because a newer heartbeat of the node had been read.
        self.clamped_events = 0
        self.stale_verdicts = 0
        # Calls taken over from a lost node, by that node: (taker, the heartbeat the verdict was based
        # on, detection ms). If the node heart-beats again after that, it was cut off, not dead, and is
        # told to forget them (call.release) instead of running calls another node has ended.
        self.taken_over: dict[str, dict[str, tuple[str, int | None, int]]] = {}
        # Prepaid balances. ``partition``: the events partition this processor folds (faust), None for
        # the whole log; it names the ledger's share in the account.balance records.
        self.ledger = Ledger()
        self.partition: int | None = None
        self._ledger_ts: str | None = None
        # The nodes' last reports on their routing gateways (gateway.down / gateway.up): alerts once.
        self.gateways = GatewayReports()

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
        etype = event["type"]
        node = event["node"]
        ts = parse_ts(event["ts"])
        if etype == "node.heartbeat":
            # A heartbeat clamped as dated too far ahead is no news of the node: it neither moves the
            # clock nor makes a node.lost verdict look stale.
            if self._advance(node, ts) and ts > self.heartbeats.get(node, -1):
                self.heartbeats[node] = ts
                if node in self.taken_over:
                    self._release(node, ts)
            address = event.get("address")
            if address:
                self.addresses[node] = address
            self._enforce(node, 0)
            return
        if etype == "node.lost":
            self._node_lost(event)
            return
        if etype == "account.topup":
            self._topup(event)
            return
        if etype in GATEWAY_EVENT_TYPES:
            # Not a call event, and no news of the node's clock (it reaches one partition only).
            self._carry_out(self.gateways.observe(event, ts))
            return
        call_id = event["call_id"]
        state = self.states.get(call_id)
        if state is None and call_id in self.closed:
            self.late_events += 1
            return
        # A node that heart-beats moves its clock with its heartbeats only: they reach every partition
        # alike, so a worker that sees a quarter of the calls judges them on the same clock as replay
        # reading all of them (a call event of another partition would otherwise move one and not the
        # other). A node without heartbeats (another switch's stream) moves it with every event.
        # The clock moves first: a deadline passed strictly before the event is enforced before the
        # event is folded; one due at the event's very instant only if the event did not end the call.
        if node not in self.heartbeats:
            self._advance(node, ts)
        self._enforce(node, -1)
        if state is not None and (due := self.deadlines.at(call_id)) is not None and due < ts:
            # The event is its call's own evidence even when it is dated too far ahead to move the
            # node's clock (a sparse stream without heartbeats): a BYE after the deadline is late.
            state, effects = on_deadline(state, ts, self.policy)
            self._carry_out(effects)
        state, effects = apply(state, event, self.policy)
        self.states[call_id] = state
        self.node_calls.track(state)
        if state.credit_hold is not None and state.credit_debit is None:
            self._credit(state, event["ts"])
        if effects:
            self._carry_out(effects)
        self._enforce(node, 0)

    def _advance(self, node: str, ts: int) -> bool:
        """Move ``node``'s clock with one of its events; False when it was clamped as too far ahead."""
        clocks = self.clocks
        if clocks.advance(node, ts) is None and clocks.is_clamped(node, ts):
            self.clamped_events += 1
            self.out.notices.append(
                f"event of {node} dated {format_ts(ts)} is more than {self.policy.max_event_lead_s} s "
                f"ahead of the node's clock {format_ts(clocks.now(node) or ts)}: clamped until confirmed")
            return False
        return True

    def _enforce(self, node: str, slack: int) -> None:
        """Enforce ``node``'s deadlines due at or before its clock + ``slack`` ms (-1: strictly before)."""
        now = self.clocks.now(node)
        if now is None:
            return
        for call_id in self.deadlines.pop_due(now + slack, node):
            state = self.states.get(call_id)
            if state is None:
                continue
            state, effects = on_deadline(state, now, self.policy)
            self.node_calls.track(state)
            self._carry_out(effects)

    def _node_lost(self, event: dict[str, Any]) -> None:
        node = event["node"]
        last = event["last_heartbeat"]
        last_ms = parse_ts(last) if last is not None else None
        seen = self.heartbeats.get(node)
        if seen is not None and (last_ms is None or seen > last_ms):
            # The verdict was based on older news than this log holds: the node heart-beat since.
            self.stale_verdicts += 1
            self.out.notices.append(f"node.lost of {node} by {event['detected_by']} ignored: a heartbeat "
                                    f"of {format_ts(seen)} is newer than its {last}")
            return
        detected = parse_ts(event["ts"])
        takers = event.get("takeover_by") or () if self.policy.takeover else ()
        for call_id in self.node_calls.calls_of(node):
            state = self.states.get(call_id)
            if state is None or state.closed:
                continue
            state, effects = on_node_lost(state, detected, event["probe"], takers, self.policy)
            self.node_calls.track(state)
            if state.takeover_node is not None and not state.closed:
                self.taken_over.setdefault(node, {})[call_id] = (state.takeover_node, last_ms, detected)
            self._carry_out(effects)
        # Takeovers this node was doing die with it: those calls stay with their exposure open.
        for state in [s for s in self.states.values() if s.takeover_node == node and not s.closed]:
            effects = []
            close_orphan(state, detected, effects)
            self.node_calls.track(state)
            self._carry_out(effects)

    def _release(self, node: str, ts: int) -> None:
        """``node`` heart-beat after a verdict: release the calls taken over from it since."""
        calls = self.taken_over[node]
        for call_id, (taker, verdict_hb, _) in sorted(calls.items()):
            if verdict_hb is None or ts > verdict_hb:
                self._carry_out([IssueRelease(call_id, node, taker, ts)])
                del calls[call_id]
        if not calls:
            del self.taken_over[node]

    # -- prepaid ledger ----------------------------------------------------------------------------
    def _topup(self, event: dict[str, Any]) -> None:
        account, topup_id = event["account"], event["topup_id"]
        try:
            amount = money(event["amount"])
        except ValueError as exc:  # the schema's pattern admits only plain decimals: not reached
            self.out.notices.append(f"top-up {topup_id!r}: {exc}")
            return
        before = len(self.ledger.book(account).topups)
        notice = self.ledger.topup(topup_id, account, amount)
        if notice is not None:
            self.out.notices.append(notice)
        if len(self.ledger.book(account).topups) != before:
            self._ledger_ts = event["ts"]
            self.out.ledger.append(self._ledger_row(account, f"topup:{topup_id}", "topup", event["amount"],
                                                    event["node"], event["ts"], 0, event.get("note", "")))

    def _credit(self, state: CallState, ts: str, rank: int = 0) -> None:
        """Take a prepaid call's hold (or, once rated, its debit) into the ledger, and its row."""
        kind = self.ledger.track(state)
        if kind is None:
            return
        self._ledger_ts = ts
        amount = state.credit_debit if kind == "debit" else state.credit_hold
        assert amount is not None
        self.out.ledger.append(self._ledger_row(state.account, f"call:{state.call_id}", kind, amount,
                                                state.node, ts, rank, ""))

    def _ledger_row(self, account: str, entry_id: str, kind: str, amount: str, node: str, ts: str, rank: int,
                    note: str) -> dict[str, Any]:
        currency = self.sell_deck.currency_of(account) if self.sell_deck is not None else "XXX"
        return {"account": account, "entry_id": entry_id, "kind": kind, "amount": amount,
                "currency": currency, "node": node, "ts": ts, "note": note, "rank": rank}

    def _balances(self) -> None:
        """One account.balance record per account whose ledger changed (see schemas/account.balance.json)."""
        changes = self.ledger.take_changes()
        for account, ch in sorted(changes.items()):
            self.out.balances.append(self.balance_record(account, ch.held, ch.debited))

    def balance_record(self, account: str, held: list[str] | None = None,
                       debited: list[str] | None = None) -> dict[str, Any]:
        log_time = self.clocks.log_time()
        ts = self._ledger_ts or (format_ts(log_time) if log_time is not None else format_ts(0))
        return {"type": "account.balance", "account": account, "partition": self.partition,
                **self.ledger.view(account), "held": list(held or ()), "debited": list(debited or ()),
                "currency": self.sell_deck.currency_of(account) if self.sell_deck is not None else "XXX",
                "ts": ts, "issued_by": self.issued_by, "schema_version": 1}

    # -- output ------------------------------------------------------------------------------------
    def _carry_out(self, effects: Iterable[Effect]) -> None:
        self.deadlines.apply_effects(effects)
        for e in effects:
            if isinstance(e, EmitCdr):
                cdr = rerate(e.cdr_fields, self.sell_deck, self.buy_deck, self.bill_modes)
                self.out.cdrs.append(cdr)
                state = self.states.get(cdr["call_id"])
                if state is not None and state.credit_hold is not None:
                    # The debit is the CDR's own sell cost: one key per call, so a CDR emitted again
                    # replaces it (ledger.py).
                    state.credit_debit = cdr["sell_cost"]
                    self._credit(state, cdr["end_ts"], 2 if cdr["closed_by"] == "node" else 1)
            elif isinstance(e, RaiseAlert):
                self.out.alerts.append(build_alert(e, self.sell_deck))
            elif isinstance(e, IssueTerminate):
                self.out.commands.append(build_command(e, self.issued_by))
            elif isinstance(e, IssueTakeover):
                self.out.commands.append(build_takeover(e, self.issued_by))
            elif isinstance(e, IssueRelease):
                self.out.commands.append(build_release(e, self.issued_by))

    def take(self) -> Outputs:
        if self.ledger.changed:  # drivers may take after every event: no work when no prepaid call moved
            self._balances()
        out, self.out = self.out, Outputs()
        return out

    def next_due(self, node: str) -> int | None:
        return self.deadlines.peek(node)

    # -- state -------------------------------------------------------------------------------------
    def active_calls(self) -> Iterator[CallState]:
        return (s for s in self.states.values() if not s.closed)

    def evict_closed(self, ended_before_ms: int | None = None) -> int:
        """Drop the full state of closed calls (their CDRs are out), or only of those that ended before
        a time, into the closed-call memory; expire that memory by the log's time. Returns how many.

        Call once no redelivery of the input that closed them can reach them (its position is
        committed): from then on a late event of one is recognised by ``closed`` alone.
        """
        closed = [(cid, s.end_ms or 0) for cid, s in self.states.items()
                  if s.closed and (ended_before_ms is None or (s.end_ms or 0) < ended_before_ms)]
        for cid, end in closed:
            del self.states[cid]
            self.closed.add(cid, end)
        # Their debits can no longer change: they move into the accounts' settled sums.
        self.ledger.settle(cid for cid, _ in closed)
        log_time = self.clocks.log_time()
        if log_time is not None and closed:
            self.closed.expire(log_time)
            horizon = log_time - self.closed.retention_ms
            for node in list(self.taken_over):  # nodes that never came back
                calls = {c: v for c, v in self.taken_over[node].items() if v[2] >= horizon}
                if calls:
                    self.taken_over[node] = calls
                else:
                    del self.taken_over[node]
        return len(closed)

    def snapshot_nodes(self) -> dict[str, Any]:
        """What the processor knows of the nodes, JSON-ready: clocks, heartbeats, addresses, takeovers."""
        return {"clocks": self.clocks.to_dict(), "heartbeats": dict(self.heartbeats),
                "addresses": dict(self.addresses),
                "taken_over": {n: {c: list(v) for c, v in calls.items()}
                               for n, calls in self.taken_over.items()},
                "gateways": self.gateways.to_dict()}

    def snapshot(self) -> dict[str, Any]:
        """Call states and node knowledge as JSON-ready data (the closed-call memory is the driver's to
        persist: see ``ClosedCalls.take_new``)."""
        return {"states": {cid: s.to_dict() for cid, s in self.states.items()}, **self.snapshot_nodes(),
                "events_seen": self.events_seen, "late_events": self.late_events,
                "ledger": self.ledger.to_dict()}

    def restore(self, snap: Mapping[str, Any]) -> None:
        # States as dicts (checkpoints) or already decoded (the faust worker's table).
        self.states = {cid: d if isinstance(d, CallState) else CallState.from_dict(d)
                       for cid, d in snap.get("states", {}).items()}
        clocks = snap.get("clocks")
        if clocks is None and "liveness" in snap:  # checkpoints written before per-node clocks
            clocks = snap["liveness"].get("last_seen", {})
        self.clocks = NodeClocks.from_dict(clocks or {}, self.policy.max_event_lead_s * 1000)
        self.heartbeats = {n: int(v) for n, v in snap.get("heartbeats", {}).items()}
        self.addresses = dict(snap.get("addresses", {}))
        self.events_seen = int(snap.get("events_seen", 0))
        self.late_events = int(snap.get("late_events", 0))
        self.taken_over = {n: {c: (v[0], v[1], v[2]) for c, v in calls.items()}
                           for n, calls in snap.get("taken_over", {}).items()}
        self.gateways = GatewayReports.from_dict(snap.get("gateways", {}))
        # Derived state: rebuilt, never persisted.
        self.deadlines = DeadlineQueue.rebuild(self.states, self.policy)
        self.node_calls = NodeCalls.of(self.states.values())
        self.ledger = Ledger.restore(snap.get("ledger"), self.states.values())


def save_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)
