"""Per-call behaviours of simulated callers and carriers, and the callee-number convention.

A behaviour is plain data (what to do and with which timings); ``caller.py`` and ``carrier.py``
execute them. The callee number can carry the carrier behaviour in its last two digits, so a
carrier knows what to do with an INVITE even when nobody told it in advance (SIPp or a human
placing calls through the B2BUA), and the demo's traffic mix stays visible in CDRs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

CallerKind = Literal[
    "timer_refresh",
    "timer_silent",
    "timer_uas_refresher",
    "no_timer_bye",
    "no_timer_vanish",
    "cancel",
]
CarrierKind = Literal["answer", "answer_then_bye", "busy", "fail", "ring_forever", "no_answer"]
Refresher = Literal["uac", "uas"]

CALLER_KINDS: tuple[CallerKind, ...] = get_args(CallerKind)
CARRIER_KINDS: tuple[CarrierKind, ...] = get_args(CarrierKind)
TIMER_KINDS: frozenset[CallerKind] = frozenset({"timer_refresh", "timer_silent", "timer_uas_refresher"})
VANISHING_KINDS: frozenset[CallerKind] = frozenset({"timer_silent", "no_timer_vanish"})


@dataclass(frozen=True)
class CallerBehaviour:
    """What one simulated call does on the calling side. Times are seconds."""

    kind: CallerKind
    talk_time: float = 5.0  # answer -> our BYE (bye-sending kinds)
    ring_delay: float = 1.0  # cancel: first provisional -> CANCEL
    session_expires: int = 10  # timer kinds: the Session-Expires we offer
    min_se: int = 2
    # timer kinds: the refresher we ask for. None = derived from the kind (timer_refresh/timer_silent:
    # "uac"; timer_uas_refresher: "uas"). Use "none" to send Session-Expires without refresher, which
    # leaves the choice to the B2BUA.
    refresher: Refresher | Literal["none"] | None = None
    refresh_method: Literal["update", "invite"] = "update"
    watch_time: float = 60.0  # vanishing kinds: how long we keep watching for the far end's BYE
    answer_timeout: float = 90.0  # no final response this long after a provisional: CANCEL

    def __post_init__(self) -> None:
        if self.kind not in CALLER_KINDS:
            raise ValueError(f"unknown caller behaviour {self.kind!r}; expected one of {CALLER_KINDS}")

    @property
    def uses_timer(self) -> bool:
        return self.kind in TIMER_KINDS

    @property
    def vanishes(self) -> bool:
        return self.kind in VANISHING_KINDS

    @property
    def requested_refresher(self) -> Refresher | None:
        if self.refresher == "none":
            return None
        if self.refresher is not None:
            return self.refresher
        return "uas" if self.kind == "timer_uas_refresher" else "uac"

    def with_(self, **changes: object) -> CallerBehaviour:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CarrierBehaviour:
    """What a simulated carrier does with one INVITE. Times are seconds."""

    kind: CarrierKind
    ring_delay: float = 1.0  # 180 -> 200 (answer kinds)
    talk_time: float = 5.0  # answer_then_bye: 200 -> our BYE
    status: int | None = None  # busy/fail: override 486/503

    def __post_init__(self) -> None:
        if self.kind not in CARRIER_KINDS:
            raise ValueError(f"unknown carrier behaviour {self.kind!r}; expected one of {CARRIER_KINDS}")

    @property
    def final_status(self) -> int:
        if self.status is not None:
            return self.status
        return 486 if self.kind == "busy" else 503

    def with_(self, **changes: object) -> CarrierBehaviour:
        return replace(self, **changes)  # type: ignore[arg-type]


def as_caller_behaviour(value: CallerBehaviour | str) -> CallerBehaviour:
    return value if isinstance(value, CallerBehaviour) else CallerBehaviour(value)  # type: ignore[arg-type]


def as_carrier_behaviour(value: CarrierBehaviour | str) -> CarrierBehaviour:
    return value if isinstance(value, CarrierBehaviour) else CarrierBehaviour(value)  # type: ignore[arg-type]


# -- callee number convention -----------------------------------------------------------------

CARRIER_CODES: dict[CarrierKind, str] = {
    "answer": "01",
    "answer_then_bye": "02",
    "busy": "03",
    "fail": "04",
    "ring_forever": "05",
    "no_answer": "06",
}
_KIND_BY_CODE: dict[str, CarrierKind] = {code: kind for kind, code in CARRIER_CODES.items()}


def callee_number(prefix: str, serial: int, carrier: CarrierKind | CarrierBehaviour) -> str:
    """``<prefix><serial, 5 digits><2-digit carrier code>``: routable by prefix, self-describing."""
    kind = carrier.kind if isinstance(carrier, CarrierBehaviour) else carrier
    return f"{prefix}{serial % 100_000:05d}{CARRIER_CODES[kind]}"


def carrier_kind_from_callee(callee: str) -> CarrierKind | None:
    """The carrier behaviour encoded in the last two digits of ``callee``, or None."""
    return _KIND_BY_CODE.get(callee[-2:]) if len(callee) >= 2 else None
