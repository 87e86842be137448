"""How the B2BUA process uses Python's cyclic garbage collector, so that the event loop never stops
for a full collection over every call it holds.

A full (generation 2) collection walks every tracked object: with thousands of calls up (their
dialogs, transactions and messages) that took tens to hundreds of milliseconds, during which no
datagram was read: the 99th percentile of call set-up was 160 ms at 150 calls/s with half a core
idle. The call state makes no reference cycles (tests/b2bua/test_gc_policy.py holds the core to
that), so it is freed by reference counting alone and never needs the collector. Hence:

* start-up objects and, every ``interval`` seconds, everything that survived until then are frozen
  (``gc.freeze``): moved out of the generations the collector walks;
* just before each freeze, one collection of the objects made since the previous freeze (the
  frozen ones are not walked), so cycles made meanwhile (asyncio's, exceptions') are freed and
  never frozen; the pause is proportional to one interval's survivors, not to the whole heap;
* automatic collections are off altogether (``gc.disable``): the tick is the only collector. Young
  collections every 700 (or 2000) allocations walked the live young objects of every call in
  flight over and over, to find cycles the call state does not make: 90 us of CPU a call in
  bench/b2bua_core_cpu.py (676 against 586 us). Cycles made meanwhile by others (asyncio's,
  exceptions', the Kafka client threads') wait at most one interval for the tick.

What a frozen object still references is freed as usual when its count drops to zero; only a cycle
among frozen objects would outlive its use, which is why the call state must stay acyclic.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

# A generation-2 threshold that is never reached: full collections only come from ``tick``.
_NEVER = 1_000_000_000


@dataclass(slots=True)
class CollectorPolicy:
    interval: float = 0.25  # seconds between freezes (each pause is one interval's survivors)
    # Allocations between automatic young collections; 0 (the default): none, only the ticks collect.
    young_threshold: int = 0
    longest_pause: float = 0.0  # the longest tick since ``take_longest_pause``
    ticks: int = 0

    def install(self) -> None:
        """Collect and freeze what start-up made, then take the collections over."""
        gc.collect()
        gc.freeze()
        if self.young_threshold <= 0:
            gc.disable()
            return
        _, middle, _ = gc.get_threshold()
        gc.set_threshold(self.young_threshold, middle, _NEVER)

    def tick(self) -> float:
        """Collect what was promoted since the last tick, freeze the survivors; the pause, in s."""
        started = time.perf_counter()
        gc.collect(2)  # the frozen generation is not walked: only what survived since the last tick
        gc.freeze()
        pause = time.perf_counter() - started
        self.ticks += 1
        self.longest_pause = max(self.longest_pause, pause)
        return pause

    def take_longest_pause(self) -> float:
        pause, self.longest_pause = self.longest_pause, 0.0
        return pause

    @staticmethod
    def uninstall() -> None:
        """Back to CPython's defaults (tests; a process that stops serving calls)."""
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        gc.enable()
