"""A seeded traffic mix driven through the B2BUA: the plan, the run, and carrier start-up.

``TrafficPlan`` turns a seed and a weighted mix of (caller behaviour x carrier behaviour) into an
exact, reproducible list of calls with start times, numbers and timings; ``run_traffic`` plays it
against a B2BUA with bounded concurrency and a global deadline, and returns one ``CallOutcome`` per
planned call, in plan order. The same seed always yields the same calls, so two demo runs (or a
demo and its test) can be compared call by call.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sipledger.simulator.behaviours import (
    CallerBehaviour,
    CallerKind,
    CarrierBehaviour,
    CarrierKind,
    callee_number,
)
from sipledger.simulator.caller import Caller, CallerCall
from sipledger.simulator.carrier import BehaviourPicker, Carrier
from sipledger.simulator.endpoint import Addr
from sipledger.simulator.outcome import CallOutcome

log = logging.getLogger(__name__)

ProgressCallback = Callable[[CallOutcome, int, int], None]


@dataclass(frozen=True)
class MixEntry:
    """``weight`` parts of the traffic are ``caller`` behaviour calls to a ``carrier`` behaviour."""

    caller: CallerKind
    carrier: CarrierKind
    weight: float = 1.0


# Mostly healthy calls, plus every kind of trouble the B2BUA is there to handle.
DEFAULT_MIX: tuple[MixEntry, ...] = (
    MixEntry("no_timer_bye", "answer", 4),
    MixEntry("timer_refresh", "answer", 4),
    MixEntry("timer_uas_refresher", "answer", 3),
    MixEntry("no_timer_bye", "answer_then_bye", 2),
    MixEntry("timer_refresh", "answer_then_bye", 1),
    MixEntry("timer_silent", "answer", 2),
    MixEntry("no_timer_vanish", "answer", 2),
    MixEntry("no_timer_bye", "busy", 1),
    MixEntry("no_timer_bye", "fail", 1),
    MixEntry("cancel", "ring_forever", 1),
    MixEntry("no_timer_bye", "no_answer", 0.5),
)


@dataclass(frozen=True)
class PlannedCall:
    index: int
    at: float  # seconds after the run starts
    callee: str
    caller: CallerBehaviour
    carrier: CarrierBehaviour


@dataclass(frozen=True)
class TrafficPlan:
    """A reproducible traffic mix. Ranges are (low, high) seconds drawn uniformly per call."""

    calls: int = 40
    window: float = 30.0  # call starts are spread over this many seconds
    seed: int = 1
    mix: tuple[MixEntry, ...] = DEFAULT_MIX
    max_concurrent: int = 50
    callee_prefix: str = "44"
    talk_time: tuple[float, float] = (4.0, 10.0)
    carrier_ring: tuple[float, float] = (0.2, 1.5)  # carrier: 180 -> 200
    cancel_after: tuple[float, float] = (0.5, 2.0)  # "cancel" callers: ringing -> CANCEL
    session_expires: int = 10
    min_se: int = 2
    reinvite_share: float = 0.25  # refreshing callers that use re-INVITE instead of UPDATE
    open_refresher_share: float = 0.3  # timer_uas_refresher calls that leave the refresher to the B2BUA
    watch_time: float = 60.0  # vanished callers watch this long for the B2BUA's BYE
    answer_timeout: float = 60.0  # ringing longer than this: the caller cancels
    timeout: float = 150.0  # global: calls still running are aborted
    drain: float = 5.0  # after the global timeout, time allowed for aborts (BYE/CANCEL) to go out

    def __post_init__(self) -> None:
        if self.calls < 0 or self.window < 0 or self.max_concurrent < 1:
            raise ValueError("calls and window must be >= 0, max_concurrent >= 1")
        if not self.mix or sum(e.weight for e in self.mix) <= 0:
            raise ValueError("the mix needs at least one entry with a positive weight")

    def allocation(self) -> list[MixEntry]:
        """Exactly ``calls`` entries in mix proportions (largest remainder), before shuffling."""
        total = sum(max(0.0, e.weight) for e in self.mix)
        quotas = [max(0.0, e.weight) / total * self.calls for e in self.mix]
        counts = [int(q) for q in quotas]
        by_remainder = sorted(range(len(self.mix)), key=lambda i: (-(quotas[i] - counts[i]), i))
        for i in by_remainder[: self.calls - sum(counts)]:
            counts[i] += 1
        return [e for e, n in zip(self.mix, counts, strict=True) for _ in range(n)]

    def planned_calls(self) -> list[PlannedCall]:
        rng = random.Random(self.seed)
        entries = self.allocation()
        rng.shuffle(entries)
        starts = sorted(rng.uniform(0.0, self.window) for _ in entries)
        out: list[PlannedCall] = []
        for index, (entry, at) in enumerate(zip(entries, starts, strict=True)):
            refresher = None
            if entry.caller == "timer_uas_refresher" and rng.random() < self.open_refresher_share:
                refresher = "none"
            caller_talk = round(rng.uniform(*self.talk_time), 2)
            carrier_talk = round(rng.uniform(*self.talk_time), 2)
            if entry.carrier == "answer_then_bye":
                # The point of that carrier behaviour is that the carrier hangs up: outlast it.
                caller_talk = round(carrier_talk + self.talk_time[1], 2)
            caller = CallerBehaviour(
                entry.caller,
                talk_time=caller_talk,
                ring_delay=round(rng.uniform(*self.cancel_after), 2),
                session_expires=self.session_expires,
                min_se=self.min_se,
                refresher=refresher,
                refresh_method="invite" if rng.random() < self.reinvite_share else "update",
                watch_time=self.watch_time,
                answer_timeout=self.answer_timeout,
            )
            carrier = CarrierBehaviour(
                entry.carrier,
                ring_delay=round(rng.uniform(*self.carrier_ring), 2),
                talk_time=carrier_talk,
            )
            callee = callee_number(self.callee_prefix, index, entry.carrier)
            out.append(PlannedCall(index, round(at, 3), callee, caller, carrier))
        return out

    def mix_counts(self) -> Counter[tuple[str, str]]:
        return Counter((p.caller.kind, p.carrier.kind) for p in self.planned_calls())


def parse_addr(value: Addr | str) -> Addr:
    if isinstance(value, tuple):
        return value
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def run_traffic(
    b2bua_addr: Addr | str,
    plan: TrafficPlan,
    carriers: Sequence[Carrier] | Mapping[str, Carrier],
    callers: Sequence[Caller],
    *,
    progress: ProgressCallback | None = None,
) -> list[CallOutcome]:
    """Play ``plan`` through the B2BUA at ``b2bua_addr`` and return one outcome per planned call.

    The carriers (already started) are told each callee's planned behaviour; calls are spread
    round-robin over ``callers`` (already started). ``progress(outcome, finished, total)`` is called
    as each call finishes. Calls still running at ``plan.timeout`` are aborted (outcome
    ``aborted``); calls that never started get an ``aborted`` outcome too.
    """
    if not callers:
        raise ValueError("run_traffic needs at least one caller")
    target = parse_addr(b2bua_addr)
    planned = plan.planned_calls()
    carrier_list = list(carriers.values()) if isinstance(carriers, Mapping) else list(carriers)
    for carrier in carrier_list:
        carrier.expect_many((p.callee, p.carrier) for p in planned)

    loop = asyncio.get_running_loop()
    started = loop.time()
    gate = asyncio.Semaphore(plan.max_concurrent)
    calls: list[CallerCall | None] = [None] * len(planned)
    finished = 0

    def report(outcome: CallOutcome) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            try:
                progress(outcome, finished, len(planned))
            except Exception:
                log.exception("traffic progress callback failed")

    async def one(p: PlannedCall) -> None:
        await asyncio.sleep(max(0.0, started + p.at - loop.time()))
        async with gate:
            caller = callers[p.index % len(callers)]
            call = caller.prepare_call(target, p.callee, p.caller)
            call.outcome.carrier_behaviour = p.carrier.kind
            calls[p.index] = call
            try:
                await call.start()
            finally:
                report(call.outcome)

    tasks = [loop.create_task(one(p), name=f"traffic-call-{p.index}") for p in planned]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=plan.timeout)
        if pending:
            log.warning("traffic: global timeout, aborting %d calls", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=plan.drain)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("traffic call task failed", exc_info=task.exception())

    outcomes: list[CallOutcome] = []
    for p, call in zip(planned, calls, strict=True):
        if call is not None:
            outcomes.append(call.outcome)
            continue
        never = CallOutcome(
            call_id="",
            caller=callers[p.index % len(callers)].name,
            callee=p.callee,
            behaviour=p.caller.kind,
            carrier_behaviour=p.carrier.kind,
            ended_by="aborted",
            end_reason="never started before the global timeout",
        )
        outcomes.append(never)
        report(never)
    # Let the BYEs/CANCELs of aborted calls leave before the caller sockets get closed.
    for caller in callers:
        await caller.drain(plan.drain)
    return outcomes


def summarize(outcomes: Iterable[CallOutcome]) -> dict[str, Any]:
    """Counts for a summary table: by caller behaviour x carrier behaviour x ended_by."""
    items = list(outcomes)
    by_pair: Counter[tuple[str, str, str]] = Counter(
        (o.behaviour, o.carrier_behaviour or "?", o.ended_by) for o in items
    )
    return {
        "calls": len(items),
        "answered": sum(o.answered for o in items),
        "ended_by": dict(Counter(o.ended_by for o in items)),
        "by_behaviour": {f"{a} -> {b}: {c}": n for (a, b, c), n in sorted(by_pair.items())},
        "refreshes_sent": sum(o.refreshes_sent for o in items),
        "refreshes_received": sum(o.refreshes_received for o in items),
    }


async def start_carriers(
    carriers: Iterable[str] | Mapping[str, BehaviourPicker | CarrierBehaviour | str | None],
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    **carrier_kwargs: Any,
) -> dict[str, Carrier]:
    """Start one ``Carrier`` per name (optionally with its behaviour picker) on free ports unless
    ``ports`` says otherwise. Returns name -> started carrier; ``carrier.port`` is the bound port
    (see ``gateway_entries`` for the B2BUA's ``[[gateways]]`` config)."""
    spec: Mapping[str, Any] = carriers if isinstance(carriers, Mapping) else dict.fromkeys(carriers)
    started: dict[str, Carrier] = {}
    try:
        for name, picker in spec.items():
            port = (ports or {}).get(name, 0)
            started[name] = await Carrier(name, picker, host=host, port=port, **carrier_kwargs).start()
    except BaseException:
        for carrier in started.values():
            await carrier.close()
        raise
    return started


def gateway_entries(carriers: Mapping[str, Carrier]) -> list[dict[str, Any]]:
    """``[[gateways]]`` entries (sipledger.config.Gateway fields) for started carriers."""
    return [
        {"name": name, "vendor": name, "host": c.endpoint.host, "port": c.port, "transport": "udp"}
        for name, c in carriers.items()
    ]


async def close_all(carriers: Iterable[Carrier] = (), callers: Iterable[Caller] = ()) -> None:
    """Close callers first (their aborts still reach carriers), then carriers."""
    for caller in callers:
        await caller.close()
    for carrier in carriers:
        await carrier.close()
