"""Deterministic synthetic call-event streams, as the B2BUA would publish them.

For tests, benchmarks and replay checks of the pipeline without SIP: a seeded mix of
normal calls, failures, refreshed timer calls, calls the B2BUA cut at a limit, zombies
the B2BUA failed to cut (the pipeline must enforce them), and calls of a node that dies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.domain.liveness import Verdict, node_lost_event
from pipeline.domain.timeutil import format_ts

KINDS = ("caller_bye", "callee_bye", "busy", "cancel", "timer_refreshed", "timer_expired",
         "no_timer_capped", "zombie_missed", "orphan")
DEFAULT_MIX = {"caller_bye": 40, "callee_bye": 25, "busy": 8, "cancel": 7, "timer_refreshed": 8,
               "timer_expired": 4, "no_timer_capped": 4, "zombie_missed": 2, "orphan": 2}


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    calls: int = 1000
    seed: int = 7
    t0_ms: int = 1_795_600_800_000  # 2026-11-25T10:00:00.000Z
    spacing_ms: int = 50  # between call setups
    no_timer_cap_s: int = 60
    session_expires_s: int = 90
    nodes: tuple[str, ...] = ("node-1", "node-2")
    dead_node: str = "node-dead"  # orphaned calls live here; it stops heartbeating
    accounts: tuple[str, ...] = ("acme", "globex", "initech")
    vendors: tuple[str, ...] = ("carrier-a", "carrier-b")
    heartbeat_ms: int = 5000


class _Call:
    def __init__(self, call_id: str, node: str) -> None:
        self.call_id, self.node = call_id, node
        self.events: list[dict[str, Any]] = []

    def ev(self, etype: str, at_ms: int, **body: Any) -> None:
        seq = len(self.events) + 1
        self.events.append({"event_id": f"{self.call_id}-{seq}", "call_id": self.call_id, "seq": seq,
                            "type": etype, "ts": format_ts(at_ms), "node": self.node, "schema_version": 1,
                            **body})


def _call(spec: SyntheticSpec, rng: random.Random, i: int, kind: str) -> _Call:
    node = spec.dead_node if kind == "orphan" else spec.nodes[i % len(spec.nodes)]
    c = _Call(f"sim-{spec.seed}-{i:07d}", node)
    t = spec.t0_ms + i * spec.spacing_ms
    timer = kind in ("timer_refreshed", "timer_expired")
    callee = rng.choice(("4420", "4475", "1212", "3312", "4930")) + f"{rng.randrange(10**6):06d}"
    c.ev("call.setup", t, caller=f"+1555{rng.randrange(10**6):06d}", callee=callee,
         account=spec.accounts[i % len(spec.accounts)], source_ip="127.0.0.1", timer_supported=timer,
         requested_session_expires=spec.session_expires_s if timer else None,
         requested_min_se=90 if timer else None, requested_refresher="uac" if timer else None)
    c.ev("call.routed", t + 5, vendor=spec.vendors[i % len(spec.vendors)], gateway="127.0.0.1:5070",
         prefix=callee[:2], attempt=1)
    ring = t + rng.randrange(200, 3000)
    c.ev("call.progress", ring, status=180)
    if kind == "busy":
        c.ev("call.terminated", ring + 100, reason="busy", initiator="callee", sip_status=486)
        return c
    if kind == "cancel":
        c.ev("call.terminated", ring + rng.randrange(1000, 9000), reason="caller_cancel", initiator="caller",
             sip_status=487)
        return c
    answer = ring + rng.randrange(500, 6000)
    se = spec.session_expires_s
    if timer:
        c.ev("call.answered", answer, timer_mode="session_timer", session_expires=se,
             refresher={"caller": "peer", "carrier": "b2bua"}, effective_limit_s=None, limit_source="none")
    else:
        c.ev("call.answered", answer, timer_mode="no_timer", session_expires=None,
             refresher={"caller": None, "carrier": None}, effective_limit_s=spec.no_timer_cap_s,
             limit_source="no_timer_max_duration")
    if kind in ("caller_bye", "callee_bye"):
        talk = rng.randrange(1_000, spec.no_timer_cap_s * 1000 - 1_000)
        who = "caller" if kind == "caller_bye" else "callee"
        c.ev("call.terminated", answer + talk, reason=f"normal_{who}_bye", initiator=who, sip_status=None)
    elif kind == "timer_refreshed":
        at = answer
        for _ in range(rng.randrange(1, 4)):
            at += se * 1000 // 2
            c.ev("session.refreshed", at, leg="caller", method="UPDATE", session_expires=se,
                 expires_at=format_ts(at + se * 1000))
        c.ev("call.terminated", at + rng.randrange(1_000, 20_000), reason="normal_caller_bye",
             initiator="caller", sip_status=None)
    elif kind == "timer_expired":
        at = answer + se * 1000 // 2
        c.ev("session.refreshed", at, leg="caller", method="UPDATE", session_expires=se,
             expires_at=format_ts(at + se * 1000))
        c.ev("call.terminated", at + se * 1000 - min(32_000, se * 1000 // 3), reason="session_expired",
             initiator="system", sip_status=None)
    elif kind == "no_timer_capped":
        c.ev("call.terminated", answer + spec.no_timer_cap_s * 1000, reason="no_timer_limit",
             initiator="system", sip_status=None)
    # zombie_missed: the B2BUA's own timer never fired; nothing more is published for it.
    # orphan: its node dies; nothing more is published for it.
    return c


def generate(spec: SyntheticSpec, mix: dict[str, int] | None = None,
             verdict_after_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """All events in timestamp order, node heartbeats included (the dead node's stop early).

    ``verdict_after_ms``: also the node.lost verdict a live pipeline writes for the dead node that long
    after its last heartbeat (what its orphaned calls are closed by); None = the nodes' events only.
    """
    rng = random.Random(spec.seed)
    weights = mix or DEFAULT_MIX
    kinds = list(weights)
    events: list[dict[str, Any]] = []
    for i in range(spec.calls):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        events += _call(spec, rng, i, kind).events
    last = max(e["ts"] for e in events) if events else format_ts(spec.t0_ms)
    end_ms = int(_ms(last)) + spec.heartbeat_ms
    dead_until = spec.t0_ms + spec.calls * spec.spacing_ms + 2_000
    last_beat = spec.t0_ms
    for node in (*spec.nodes, spec.dead_node):
        stop = dead_until if node == spec.dead_node else end_ms
        for k, at in enumerate(range(spec.t0_ms, stop + 1, spec.heartbeat_ms), start=1):
            events.append({"event_id": f"hb-{spec.seed}-{node}-{k}", "call_id": f"node:{node}", "seq": k,
                           "type": "node.heartbeat", "ts": format_ts(at), "node": node,
                           "schema_version": 1, "active_calls": 0})
            if node == spec.dead_node:
                last_beat = at
    if verdict_after_ms is not None:
        events.append(node_lost_event(Verdict(spec.dead_node, last_beat, "synthetic: the node died"),
                                      last_beat + verdict_after_ms, "synthetic"))
    events.sort(key=lambda e: (e["ts"], e["call_id"], e["seq"]))
    return iter(events)


def _ms(ts: str) -> int:
    from pipeline.domain.timeutil import parse_ts

    return parse_ts(ts)


def expected_kinds(spec: SyntheticSpec, mix: dict[str, int] | None = None) -> dict[str, str]:
    """call_id -> kind, recomputed with the same seed (what the tests check CDRs against)."""
    rng = random.Random(spec.seed)
    weights = mix or DEFAULT_MIX
    kinds = list(weights)
    out = {}
    for i in range(spec.calls):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        out[_call(spec, rng, i, kind).call_id] = kind
    return out
