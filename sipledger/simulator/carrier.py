"""Simulated carriers (UAS): the gateways the B2BUA routes calls to.

A ``Carrier`` is one UDP endpoint (one gateway). Every INVITE it receives gets a
``CarrierBehaviour`` -- answer, answer then hang up, busy, fail, ring forever, or stay silent --
chosen, in this order, by a behaviour planned for that callee (``expect``), the
``behaviour_picker``, the two-digit code at the end of the callee number, or ``default``. The
demo plans its mix through ``expect`` (seeded), while SIPp or a human can still steer a call
through the number alone.

Carriers understand RFC 4028 when the B2BUA offers it: they echo the negotiated Session-Expires,
refresh when they are made the refresher, and hang up when a session they do not refresh expires,
like real gateways do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from b2bua.sip.dialog import Dialog
from b2bua.sip.message import Request
from b2bua.sip.serializer import build_response
from b2bua.sip.session_timer import negotiate_uas
from b2bua.sip.transaction import TimerConfig
from b2bua.sip.transaction_layer import TransactionKey
from sipledger.simulator.behaviours import (
    CarrierBehaviour,
    as_carrier_behaviour,
    carrier_kind_from_callee,
)
from sipledger.simulator.dialog_call import PEER_TIMER_POLICY, DialogCall
from sipledger.simulator.endpoint import ALLOW, SIM_TIMERS, Addr, EndpointRole, SipEndpoint
from sipledger.simulator.outcome import CarrierCallRecord
from sipledger.simulator.sdp import CONTENT_TYPE

log = logging.getLogger(__name__)

BehaviourPicker = Callable[[Request], "CarrierBehaviour | str | None"]


class Carrier(EndpointRole):
    """A gateway endpoint. ``behaviour_picker`` may be a behaviour (or its name) applied to every
    call, or a callable ``(invite) -> CarrierBehaviour | str | None`` (None: fall through to the
    callee-number code, then ``default``)."""

    def __init__(
        self,
        name: str,
        behaviour_picker: BehaviourPicker | CarrierBehaviour | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timers: TimerConfig = SIM_TIMERS,
        rng: random.Random | None = None,
        default: CarrierBehaviour | str = "answer",
        session_timers: bool = True,
        max_call_time: float = 300.0,
    ) -> None:
        self.name = name
        if behaviour_picker is None or callable(behaviour_picker):
            self._picker: BehaviourPicker | None = behaviour_picker
        else:
            fixed = as_carrier_behaviour(behaviour_picker)
            self._picker = lambda _invite: fixed
        self.default = as_carrier_behaviour(default)
        self.session_timers = session_timers
        self.max_call_time = max_call_time
        self.endpoint = SipEndpoint(name, host=host, port=port, timers=timers, rng=rng)
        self.endpoint.on_new_request = self._on_invite
        self.planned: dict[str, CarrierBehaviour] = {}
        self.active: dict[str, CarrierCall] = {}
        self.records: list[CarrierCallRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Carrier:
        await self.endpoint.start()
        return self

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        await self.endpoint.close()

    def expect(self, callee: str, behaviour: CarrierBehaviour | str) -> None:
        """Plan the behaviour for INVITEs to ``callee`` (takes precedence over everything else)."""
        self.planned[callee] = as_carrier_behaviour(behaviour)

    def expect_many(self, plan: Iterable[tuple[str, CarrierBehaviour | str]]) -> None:
        for callee, behaviour in plan:
            self.expect(callee, behaviour)

    def pick(self, invite: Request) -> CarrierBehaviour:
        callee = _callee(invite)
        planned = self.planned.get(callee)
        if planned is not None:
            return planned
        if self._picker is not None:
            try:
                chosen = self._picker(invite)
            except Exception:
                log.exception("%s: behaviour picker failed; using the default", self.name)
                chosen = None
            if chosen is not None:
                return as_carrier_behaviour(chosen)
        kind = carrier_kind_from_callee(callee)
        return CarrierBehaviour(kind) if kind is not None else self.default

    def _on_invite(self, invite: Request, key: TransactionKey | None, source: Addr) -> None:
        call = CarrierCall(self, invite, key, source, self.pick(invite))
        self.active[call.call_id] = call
        # Records are listed from the first INVITE on and completed as the call goes, so a live
        # view (and a test) sees calls whose BYE is still being retransmitted to a dead peer.
        self.records.append(call.record)
        self.endpoint.register(call.call_id, call)
        task = asyncio.get_running_loop().create_task(call.run(), name=f"{self.name}-{call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self, call: CarrierCall) -> None:
        if self.active.get(call.call_id) is call:
            del self.active[call.call_id]


class CarrierCall(DialogCall):
    """One INVITE received by a carrier."""

    def __init__(
        self,
        carrier: Carrier,
        invite: Request,
        key: TransactionKey | None,
        source: Addr,
        behaviour: CarrierBehaviour,
    ) -> None:
        callee = _callee(invite) or "carrier"
        super().__init__(carrier.endpoint, invite.call_id or "", user=callee, local_label="carrier")
        self.carrier = carrier
        self.invite = invite
        self.key = key
        self.source = source
        self.behaviour = behaviour
        self.local_tag = carrier.endpoint.new_tag()
        self.final_sent = False
        self.cancelled = asyncio.Event()
        self.record = CarrierCallRecord(
            call_id=self.call_id, carrier=carrier.name, callee=callee, behaviour=behaviour.kind
        )
        self._t0 = self.now()

    async def run(self) -> None:
        self.record.started_at = time.time()
        try:
            await self._script()
        except asyncio.CancelledError:
            if self.record.ended_by == "none":
                self.record.ended_by, self.record.end_reason = "abandoned", "carrier shut down"
            raise
        except Exception as exc:
            log.exception("%s: call %s failed", self.carrier.name, self.call_id)
            self.record.ended_by, self.record.end_reason = "abandoned", f"simulator error: {exc!r}"
        finally:
            self._wrap_up()

    async def _script(self) -> None:
        b = self.behaviour
        if b.kind == "no_answer":
            # Not even 100 Trying: the B2BUA's INVITE client transaction has to time out.
            self.record.end_reason = "never answered"
            if not await self._wait_cancel(self.carrier.max_call_time):
                self.record.ended_by = "abandoned"
            return
        self.endpoint.reply(self.invite, self.key, 100)
        if b.kind in ("busy", "fail"):
            self._final(b.final_status)
            self.record.ended_by, self.record.end_reason = "rejected", f"{b.final_status}"
            return
        self.dialog = Dialog.uas_from_request(
            self.invite, self.local_tag, local_contact=self.contact, via_sent_by=self.endpoint.sent_by
        )
        self.endpoint.reply(
            self.invite, self.key, 180, to_tag=self.local_tag, headers=[("Contact", self.contact)]
        )
        wait = self.carrier.max_call_time if b.kind == "ring_forever" else b.ring_delay
        if await self._wait_cancel(wait):
            return
        if b.kind == "ring_forever":
            # Bounded: after max_call_time give up like a gateway's own ringing timer would.
            self._final(480)
            self.record.ended_by, self.record.end_reason = "abandoned", "rang for max_call_time"
            return
        await self._answer()

    async def _answer(self) -> None:
        assert self.dialog is not None
        b = self.behaviour
        headers = [("Contact", self.contact), ("Allow", ALLOW), ("Supported", "timer")]
        decision = None
        if self.carrier.session_timers and self.invite.headers.get("Session-Expires") is not None:
            try:
                decision = negotiate_uas(self.invite, PEER_TIMER_POLICY)
            except ValueError:
                decision = None
            if decision is not None and decision.mode == "timer":
                headers += list(decision.response_headers)
                self.record.session_expires = decision.interval
                self.record.refresher = decision.refresher
        headers.append(("Content-Type", CONTENT_TYPE))
        response = build_response(
            self.invite,
            200,
            to_tag=self.local_tag,
            headers=headers,
            body=self.local_sdp(),
            copy_record_route=True,
        )
        self.final_sent = True
        self.record.final_status = 200
        self.dialog.confirm()
        acked = await self.send_2xx(self.key, response, self.source)
        if self.ended.is_set():
            return  # BYE or CANCEL raced the ACK
        if not acked:
            # 13.3.1.4: a 2xx never ACKed means the session is not established: end it with BYE.
            self.record.answered = True
            await self.hangup("no ACK for 200")
            return
        self.record.answered = True
        self.answered_at = self.now()
        if decision is not None and decision.mode == "timer" and decision.interval is not None:
            self.arm_session(decision.interval, decision.we_refresh)
        if b.kind == "answer_then_bye":
            await self.hold(self.answered_at + b.talk_time)
            await self.hangup("talk time over")
        else:
            await self.hold(self.answered_at + self.carrier.max_call_time)
            if not self.ended.is_set():
                # Nobody hung up within max_call_time: forget the call (bounded simulator state).
                self.finish("abandoned", "max_call_time reached")

    def _final(self, status: int) -> None:
        self.final_sent = True
        self.record.final_status = status
        self.endpoint.reply(self.invite, self.key, status, to_tag=self.local_tag)

    async def _wait_cancel(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.cancelled.wait(), timeout)
        return self.cancelled.is_set()

    # -- requests outside the dialog: CANCEL of the INVITE ------------------------------------

    def on_other_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        if request.method != "CANCEL":
            super().on_other_request(request, key, source)
            return
        invite_key = self.endpoint.layer.cancel_target(request)
        if invite_key is None:
            self.endpoint.reply(request, key, 481)
            return
        self.endpoint.reply(request, key, 200)
        if self.final_sent:
            return  # 9.2: CANCEL after the final response has no effect
        self.final_sent = True
        self.record.cancelled = True
        self.record.final_status = 487
        self.endpoint.reply(self.invite, invite_key, 487, to_tag=self.local_tag)
        self.record.ended_by, self.record.end_reason = "cancel", "CANCEL received"
        if self.dialog is not None:
            self.dialog.terminate()
        self.cancelled.set()

    # -- bookkeeping --------------------------------------------------------------------------

    def finish(self, by: str, reason: str) -> None:
        first = not self.ended.is_set()
        super().finish(by, reason)
        if first and self.record.ended_by == "none":
            self.record.ended_by, self.record.end_reason = by, reason

    def _wrap_up(self) -> None:
        r = self.record
        if self.ended_by is not None and r.ended_by == "none":
            r.ended_by, r.end_reason = self.ended_by, self.end_reason
        r.duration = self.now() - self._t0
        if self.answered_at is not None:
            r.talk_time = (self.ended_at or self.now()) - self.answered_at
        r.refreshes_sent = self.refreshes_sent
        r.refreshes_answered = self.refreshes_answered
        r.refreshes_received = self.refreshes_received
        r.options_received = self.options_received
        r.bye_status = self.bye_status
        self.close()
        self.carrier._done(self)


def _callee(invite: Request) -> str:
    """The dialled number: the Request-URI user part (the To user as a fallback)."""
    with contextlib.suppress(ValueError):
        user = invite.parsed_uri.user
        if user:
            return user
    with contextlib.suppress(ValueError):
        return invite.to.uri.user or ""
    return ""
