"""Gateway health in the core: OPTIONS probes of every routing gateway, routing around down ones.

Each gateway with ``probe = true`` gets an OPTIONS every ``probe_interval`` seconds, sent like any
request of the B2BUA (its transaction layer, its socket and source address, the gateway's transport:
the path calls take), with its own deadline of ``probe_timeout``. The answers, the silences and the
INVITE outcomes go into the gateway's ``GatewayHealth`` (b2bua/gateway_health.py, pure), whose
transitions come out here as a ``gateway.down`` / ``gateway.up`` event (keyed ``gateway:<node>:<name>``,
not tied to a call), a log line and, when a gateway goes down, the immediate failover of the calls
still waiting for its first answer.

Routing asks ``_route_gateways`` for the next usable gateway: a down gateway is skipped at once (no
INVITE timeout per call while it is known down). When every gateway of the route is down the caller
gets ``503 All Gateways Down`` at once: waiting ``sip.invite_timeout`` per gateway for gateways the
B2BUA knows to be silent would only hold the caller's line and its retries; the call ends as
``no_route`` with ``sip_status`` 503 (VOS3000's "no available gateway") and its detail names the
gateways and since when they are down. A gateway is never judged on no evidence: a new node routes to
every gateway until the probes have spoken.
"""

from __future__ import annotations

from b2bua.actions import Address, CancelTimer, SetTimer
from b2bua.call import Call
from b2bua.commands import Commands
from b2bua.gateway_health import GatewayHealth, ProbeInFlight, Transition
from b2bua.sip.message import Headers, Request, Response
from b2bua.sip.transaction_layer import TransactionKey
from sipledger.config import Gateway

GW_TIMER: str = "gw"


def gateway_key(node: str, name: str) -> str:
    """The events' key (call_id) of one node's reports on one gateway."""
    return f"gateway:{node}:{name}"[:128]


class GatewayProbes(Commands):
    """Probing the routing gateways and routing around the ones that are down."""

    def _start_gateway_probes(self) -> None:
        """First probes at start (spread over 100 ms: a burst of a few hundred OPTIONS is no use)."""
        names = sorted(self.gateway_table.health)
        for i, name in enumerate(names):
            self._out.append(SetTimer((GW_TIMER, name, "probe"), self._now + 0.1 * i / max(1, len(names))))

    def _on_gateway_timer(self, name: str, what: str) -> None:
        health = self.gateway_table.health.get(name)
        if health is None:
            return
        if what == "probe":
            self._out.append(SetTimer((GW_TIMER, name, "probe"), self._now + health.policy.interval))
            self._send_gateway_probe(name)
        elif what == "timeout":
            key = self.gateway_table.probe_keys.get(name)
            if key is not None:
                self._abandon_transaction(key)  # type: ignore[arg-type]
                self._gateway_probe_lost(key, "probe_timeout")

    def _send_gateway_probe(self, name: str) -> None:
        table = self.gateway_table
        if name in table.probe_keys:
            return  # the last one is still out (its timeout is at most the interval): never two at once
        gw = table.gateways[name]
        dest = Address(gw.host, gw.port, gw.transport)
        req = self._gateway_options(gw)
        key, actions = self.layer.send_request(req, self._now, reliable=gw.transport == "tcp")
        if key is None:  # pragma: no cover - OPTIONS always starts a transaction
            return
        self.tx_dest[key] = dest
        table.in_flight[key] = ProbeInFlight(name, self._now)
        table.probe_keys[name] = key
        self._out.append(SetTimer((GW_TIMER, name, "timeout"), self._now + table.health[name].policy.timeout))
        self._apply(actions)

    def _gateway_options(self, gw: Gateway) -> Request:
        tparam = ";transport=tcp" if gw.transport == "tcp" else ""
        h = Headers()
        h.add("Via", f"SIP/2.0/{gw.transport.upper()} {self.sent_by};branch={self.layer.new_branch()};rport")
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:b2bua@{self.cfg.local_host}>;tag={self.layer.new_tag()}")
        h.add("To", f"<sip:{gw.host}:{gw.port}{tparam}>")
        h.add("Call-ID", f"{self.layer.rng.getrandbits(96):024x}@{self.cfg.local_host}")
        h.add("CSeq", "1 OPTIONS")
        h.add("Contact", self._contact(gw.transport))
        h.add("Accept", "application/sdp")
        return Request("OPTIONS", f"sip:{gw.host}:{gw.port}{tparam}", h, b"")

    def _on_gateway_probe_response(self, key: TransactionKey, resp: Response) -> None:
        if resp.is_provisional:
            return
        probe = self._end_probe(key)
        if probe is None:
            return
        health = self.gateway_table.health[probe.gateway]
        if health.policy.accepts(resp.status):
            rtt_ms = round((self._now - probe.sent_at) * 1000, 3)
            health.probes_answered += 1
            self._gateway_transition(health, health.answered(self._now, resp.status, rtt_ms, "probe_answer"))
        else:
            health.probes_lost += 1
            self._gateway_transition(health, health.lost(self._now, "probe_status", resp.status))

    def _gateway_probe_lost(self, key: object, cause: str) -> None:
        probe = self._end_probe(key)
        if probe is None:
            return
        health = self.gateway_table.health[probe.gateway]
        health.probes_lost += 1
        self._gateway_transition(health, health.lost(self._now, cause))

    def _end_probe(self, key: object) -> ProbeInFlight | None:
        table = self.gateway_table
        probe = table.in_flight.pop(key, None)
        if probe is not None and table.probe_keys.get(probe.gateway) == key:
            del table.probe_keys[probe.gateway]
            self._out.append(CancelTimer((GW_TIMER, probe.gateway, "timeout")))
        return probe

    # -- evidence from calls ------------------------------------------------------------------------
    def _gateway_invite_answered(self, gw: Gateway, status: int) -> None:
        """Any response of a gateway to an INVITE: its SIP stack is alive."""
        health = self.gateway_table.health.get(gw.name)
        if health is not None:
            self._gateway_transition(health, health.answered(self._now, status, None, "invite_answer"))

    def _gateway_invite_timeout(self, gw: Gateway) -> None:
        """An INVITE got no answer at all within sip.invite_timeout: as telling as a lost probe."""
        health = self.gateway_table.health.get(gw.name)
        if health is not None:
            self._gateway_transition(health, health.lost(self._now, "invite_timeout"))

    # -- routing ------------------------------------------------------------------------------------
    def _route_gateways(self, call: Call, after: int) -> int | None:
        """Index of the next gateway of ``call``'s route after ``after`` that is not down, or None."""
        table = self.gateway_table
        for i in range(after + 1, len(call.gateways)):
            gw = call.gateways[i]
            if table.usable(gw.name):
                return i
            health = table.health[gw.name]
            health.skipped += 1
            self._log_limited(f"gw-skip:{gw.name}", "info",
                              f"call {call.id}: gateway {gw.name} skipped, down since "
                              f"{self._ts(health.since or self._now)}")
        return None

    def _all_gateways_down(self, call: Call) -> None:
        """The caller gets 503 at once: every gateway of its route is down."""
        table = self.gateway_table
        parts = []
        for gw in call.gateways:
            h = table.health.get(gw.name)
            if h is not None and h.since is not None:
                parts.append(f"{gw.name} since {self._ts(h.since)} ({_evidence(h)})")
        detail = (f"all {len(call.gateways)} gateways of prefix {call.prefix!r} are down: "
                  + ", ".join(parts))
        self._terminate(call, "no_route", "system", status_to_caller=503, reason_phrase="All Gateways Down",
                        sip_status=503, detail=detail[:512])

    # -- transitions --------------------------------------------------------------------------------
    def _gateway_transition(self, health: GatewayHealth, t: Transition | None) -> None:
        if t is None:
            return
        table = self.gateway_table
        gw = table.gateways[t.gateway]
        where = f"{gw.transport} {gw.host}:{gw.port}"
        base = {"gateway": gw.name[:64], "vendor": (gw.vendor or gw.name)[:64],
                "address": f"{gw.host}:{gw.port}"[:300], "transport": gw.transport, "cause": t.cause}
        key = gateway_key(self.cfg.node_id, gw.name)
        if t.state == "down":
            last = (f"last answer {t.last_status} at {self._ts(t.last_answer_at)}"
                    if t.last_answer_at is not None else "never answered")
            self._log("warning", f"gateway {gw.name} ({where}) DOWN: {_evidence(health)}; {last}; "
                      "calls route around it")
            self._emit(key, "gateway.down", seq=table.next_seq(gw.name), **base, losses=t.losses,
                       status=t.status,
                       last_answer=self._ts(t.last_answer_at) if t.last_answer_at is not None else None,
                       last_status=t.last_status, last_rtt_ms=t.last_rtt_ms,
                       probe_interval_s=health.policy.interval, down_after=health.policy.down_after)
            self._fail_over_from(gw.name)
            return
        how = f"answered {t.status}" + (f" in {t.rtt_ms:.1f} ms" if t.rtt_ms is not None else " to an INVITE")
        after = f" after {t.at - t.down_since:.1f} s down" if t.down_since is not None else ""
        self._log("warning" if t.previous == "down" else "info",
                  f"gateway {gw.name} ({where}) UP: {how}{after}")
        self._emit(key, "gateway.up", seq=table.next_seq(gw.name), **base, answers=t.answers, status=t.status,
                   rtt_ms=t.rtt_ms, previous=t.previous,
                   down_since=self._ts(t.down_since) if t.down_since is not None else None)

    def _fail_over_from(self, name: str) -> None:
        """Calls waiting for the first answer of a gateway that just went down move on at once."""
        current = self._current
        for call in list(self.calls.values()):
            attempt = call.attempt
            if attempt is None or call.ended or call.answered or call.cancelled or attempt.final \
                    or attempt.abandoned or attempt.provisional or attempt.gateway.name != name:
                continue
            self._current = call
            attempt.abandoned = True
            self._abandon_transaction(attempt.key)
            self._disarm(call, "invite_timeout")
            nxt = self._route_gateways(call, call.gateway_index)
            if nxt is not None:
                call.gateway_index = nxt
                self._start_attempt(call)
            else:
                self._terminate(call, "response_timeout", "system", status_to_caller=408, sip_status=408,
                                detail=f"gateway {name} went down while the call waited for its answer")
        self._current = current


def _evidence(h: GatewayHealth) -> str:
    p = h.policy
    return (f"{h.losses} probes or INVITEs in a row without an accepted answer (down after {p.down_after}; "
            f"a probe every {p.interval:g} s, timeout {p.timeout:g} s)")
