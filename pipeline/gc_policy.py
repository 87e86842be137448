"""Garbage-collector settings for the pipeline's long-running loops (faust worker, embedded, replay).

The pipeline allocates many short-lived objects per event (decoded dicts, effects, CDR dicts) and keeps
a large, long-lived set (one CallState per open or recently closed call). With CPython's default
thresholds (700, 10, 10) the young generation is collected every 700 net allocations and the whole heap
- every call state plus everything imported at start-up - is rescanned after every 100 young
collections, which measured as about a fifth of the pure core's time (bench/pipeline_core.py). The
pipeline builds almost no reference cycles, so collecting less often frees the same memory later, not
less of it.
"""

from __future__ import annotations

import gc
from typing import Final

# Young generation every 50,000 net allocations (a few batches of events), full collections a tenth as
# often as by default.
THRESHOLDS: Final = (50_000, 20, 100)


def settle_after_startup() -> None:
    """Call once start-up (imports, config, rate decks) is done: those objects live for the whole run,
    so move them out of the collector's reach and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
