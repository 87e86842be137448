"""Health of the routing gateways: one small state machine per gateway, fed with evidence and times.

No I/O and no clock: the B2BUA core (b2bua/gateway_probes.py) sends the OPTIONS probes and tells each
gateway's ``GatewayHealth`` what happened and when. A gateway is

* ``unknown`` until it has been judged (just started): routable, as Kamailio's dispatcher starts its
  destinations active;
* ``up``: routable;
* ``down``: skipped by routing until it answers again.

Evidence is *consecutive*: ``down_after`` losses in a row (a probe without a final answer within
``probe_timeout``, a probe answered with a status the policy does not accept, or an INVITE that got no
answer at all: its timeout is as telling as a lost probe) take a gateway down; ``up_after`` answers in
a row bring a down gateway back; an unknown gateway is up with its first answer. Any answer resets the
losses and any loss the answers, so a gateway that answers every other probe never goes down (and one
that is down needs ``up_after`` answers without a loss between them): flapping costs no alerts.

Which answers mean alive: Kamailio's dispatcher accepts only 200 by default (``ds_ping_reply_codes``
adds codes or classes, and warns that accepting 408 keeps a dead destination up, since its own
transaction layer makes a 408 when nothing answers). Carriers often refuse OPTIONS from a peer they do
not register (403, 404, 405) while their INVITEs work; for routing what matters is that the gateway's
SIP stack answers, so an INVITE would get a quick answer too. Hence the default here: any final answer
but 408; ``probe_reply_codes`` narrows it the Kamailio way ("200", "2xx").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from sipledger.config import Gateway

State = Literal["unknown", "up", "down"]
# What moved a gateway: the last piece of evidence.
LOSS_CAUSES: Final = ("probe_timeout", "probe_status", "invite_timeout")
ANSWER_CAUSES: Final = ("probe_answer", "invite_answer")


def reply_code_matches(spec: str, status: int) -> bool:
    """Does ``status`` match one ``probe_reply_codes`` entry: a code ("404") or a class ("4xx")?"""
    spec = spec.lower()
    if spec[1:] == "xx":
        return status // 100 == int(spec[0])
    return status == int(spec)


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """How one gateway is probed and judged (the ``[[gateways]]`` probe keys)."""

    enabled: bool = True
    interval: float = 10.0
    timeout: float = 2.0
    down_after: int = 3
    up_after: int = 2
    reply_codes: tuple[str, ...] = ()  # empty: any final answer but 408

    @classmethod
    def of(cls, gw: Gateway) -> ProbePolicy:
        return cls(gw.probe, gw.probe_interval, gw.probe_timeout, gw.down_after, gw.up_after,
                   tuple(gw.probe_reply_codes))

    def accepts(self, status: int) -> bool:
        """Does a final answer ``status`` to a probe mean the gateway is alive?"""
        if self.reply_codes:
            return any(reply_code_matches(spec, status) for spec in self.reply_codes)
        return status != 408


@dataclass(frozen=True, slots=True)
class Transition:
    """A gateway changed state: what the core reports (event, log line, metrics)."""

    gateway: str
    state: Literal["up", "down"]
    previous: State
    at: float  # core time (seconds)
    cause: str  # one of LOSS_CAUSES or ANSWER_CAUSES
    losses: int  # consecutive losses up to now (0 for an up transition)
    answers: int  # consecutive answers up to now (0 for a down transition)
    status: int | None  # the status of this evidence (an answer's, or a refused probe's)
    rtt_ms: float | None  # this answer's round trip (None for losses and INVITE answers)
    last_answer_at: float | None  # the latest answer before (down) or at (up) the transition
    last_status: int | None
    last_rtt_ms: float | None
    down_since: float | None  # for an up transition: when the gateway went down (None: it was unknown)


@dataclass(slots=True)
class GatewayHealth:
    """One gateway's state and the evidence so far."""

    name: str
    policy: ProbePolicy
    state: State = "unknown"
    since: float | None = None  # when the current state began (None while unknown)
    losses: int = 0
    answers: int = 0
    last_answer_at: float | None = None
    last_status: int | None = None  # the latest status the gateway answered with (probe or INVITE)
    last_rtt_ms: float | None = None  # the latest probe round trip
    # Counters for the metrics endpoint.
    probes_answered: int = 0
    probes_lost: int = 0
    skipped: int = 0  # call attempts routed around it while it was down

    @property
    def usable(self) -> bool:
        return self.state != "down"

    def answered(self, now: float, status: int, rtt_ms: float | None, cause: str) -> Transition | None:
        """The gateway answered (a probe with an accepted status, or anything to an INVITE)."""
        self.losses = 0
        self.answers += 1
        self.last_answer_at, self.last_status = now, status
        if rtt_ms is not None:
            self.last_rtt_ms = rtt_ms
        if self.state == "up" or (self.state == "down" and self.answers < self.policy.up_after):
            return None
        previous, down_since = self.state, self.since if self.state == "down" else None
        self.state, self.since = "up", now
        return Transition(self.name, "up", previous, now, cause, 0, self.answers, status, rtt_ms,
                          self.last_answer_at, self.last_status, self.last_rtt_ms, down_since)

    def lost(self, now: float, cause: str, status: int | None = None) -> Transition | None:
        """No answer in time (a probe or an INVITE), or a probe answered with a refused status."""
        self.answers = 0
        self.losses += 1
        if status is not None:
            self.last_status = status
        if self.state == "down" or self.losses < self.policy.down_after:
            return None
        previous = self.state
        self.state, self.since = "down", now
        return Transition(self.name, "down", previous, now, cause, self.losses, 0, status, None,
                          self.last_answer_at, self.last_status, self.last_rtt_ms, None)


@dataclass(slots=True)
class ProbeInFlight:
    gateway: str
    sent_at: float


@dataclass(slots=True)
class GatewayTable:
    """Every probed gateway's health, by name, and the probes in flight (by transaction key).

    A gateway with ``probe = false`` has no entry: it is never judged and always routed to (nothing
    would ever bring it back once down).
    """

    health: dict[str, GatewayHealth] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    in_flight: dict[object, ProbeInFlight] = field(default_factory=dict)  # transaction key -> probe
    probe_keys: dict[str, object] = field(default_factory=dict)  # gateway name -> its probe in flight
    seq: dict[str, int] = field(default_factory=dict)  # gateway name -> last event seq

    @classmethod
    def of(cls, gateways: tuple[Gateway, ...] | list[Gateway]) -> GatewayTable:
        table = cls()
        for gw in gateways:
            policy = ProbePolicy.of(gw)
            table.gateways[gw.name] = gw
            if policy.enabled:
                table.health[gw.name] = GatewayHealth(gw.name, policy)
        return table

    def usable(self, name: str) -> bool:
        h = self.health.get(name)
        return h is None or h.usable

    def next_seq(self, name: str) -> int:
        self.seq[name] = self.seq.get(name, 0) + 1
        return self.seq[name]
