"""Simulated callers (UAC): phones or customer switches placing calls to the B2BUA.

A ``Caller`` is one UDP endpoint (one phone/PBX) that can run many calls at once. Each call follows a
``CallerBehaviour``: ring, answer digest challenges, negotiate RFC 4028 timers, refresh or let the
B2BUA refresh, hang up -- or vanish without a word, which is exactly the zombie the B2BUA exists to
kill. Every call ends with a ``CallOutcome`` describing what happened from the caller's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

from b2bua.sip.dialog import Dialog
from b2bua.sip.message import Headers, Request, Response
from b2bua.sip.session_timer import SessionTimerConfig, UacNegotiation
from b2bua.sip.transaction import TimerConfig, build_cancel
from sipledger.simulator.behaviours import CallerBehaviour, as_caller_behaviour
from sipledger.simulator.dialog_call import DialogCall
from sipledger.simulator.endpoint import ALLOW, SIM_TIMERS, Addr, ClientTransaction, EndpointRole, SipEndpoint
from sipledger.simulator.outcome import CallOutcome
from sipledger.simulator.sdp import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_INVITE_ATTEMPTS = 4  # first INVITE + digest answer + 422 retries: never loop on challenges


class Caller(EndpointRole):
    """A calling endpoint. ``username``/``password`` answer 401/407 challenges (digest auth);
    without them the B2BUA must admit us by source IP."""

    def __init__(
        self,
        name: str = "caller",
        *,
        number: str = "1000",
        username: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timers: TimerConfig = SIM_TIMERS,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.number = number
        self.credentials = (username, password or "") if username else None
        self.endpoint = SipEndpoint(name, host=host, port=port, timers=timers, rng=rng)
        self.active: dict[str, CallerCall] = {}
        self.outcomes: list[CallOutcome] = []
        self._background: set[asyncio.Task[object]] = set()

    async def start(self) -> Caller:
        await self.endpoint.start()
        return self

    async def close(self, grace: float = 2.0) -> None:
        """Abort calls still running (best-effort BYE/CANCEL), then close the socket."""
        for call in list(self.active.values()):
            if call.task is not None and not call.task.done():
                call.task.cancel()
        tasks = [c.task for c in self.active.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self.drain(grace)
        for task in list(self._background):
            task.cancel()
        await self.endpoint.close()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for fire-and-forget work such as the BYE of an aborted call."""
        if self._background:
            await asyncio.wait(self._background, timeout=timeout)

    def prepare_call(self, b2bua: Addr, callee: str, behaviour: CallerBehaviour | str) -> CallerCall:
        """A call object whose ``run()`` places the call; its ``outcome`` is valid even if the run is
        cancelled half-way (it then says ``aborted``)."""
        call = CallerCall(self, b2bua, callee, as_caller_behaviour(behaviour))
        self.active[call.call_id] = call
        return call

    async def place_call(self, b2bua: Addr, callee: str, behaviour: CallerBehaviour | str) -> CallOutcome:
        """Place one call and wait for its outcome."""
        return await self.prepare_call(b2bua, callee, behaviour).start()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _done(self, call: CallerCall) -> None:
        self.active.pop(call.call_id, None)
        self.outcomes.append(call.outcome)


class CallerCall(DialogCall):
    """One outgoing call. Create it with ``Caller.prepare_call``."""

    def __init__(self, caller: Caller, b2bua: Addr, callee: str, behaviour: CallerBehaviour) -> None:
        endpoint = caller.endpoint
        super().__init__(
            endpoint,
            endpoint.new_call_id(),
            user=caller.number,
            local_label="caller",
            credentials=caller.credentials,
        )
        self.caller = caller
        self.b2bua = b2bua
        self.callee = callee
        self.behaviour = behaviour
        self.refresh_method = behaviour.refresh_method
        self.min_se = behaviour.min_se
        self.local_tag = endpoint.new_tag()
        self.task: asyncio.Task[CallOutcome] | None = None
        self.invite: Request | None = None
        self.cancelled = False
        self.outcome = CallOutcome(
            call_id=self.call_id, caller=caller.name, callee=callee, behaviour=behaviour.kind
        )
        self.finalized = False
        self._t0 = 0.0
        self._provisional: asyncio.Future[None] | None = None

    # -- script -------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[CallOutcome]:
        """Run the call in its own task (what ``Caller.close`` cancels)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name=f"call-{self.call_id}")
        return self.task

    async def run(self) -> CallOutcome:
        """The call script; prefer ``start()`` so that closing the Caller can abort it."""
        self.endpoint.register(self.call_id, self)
        self._t0 = self.now()
        self.outcome.started_at = time.time()
        try:
            await self._script()
        except asyncio.CancelledError:
            self._abort("aborted before the call finished")
            raise
        except Exception as exc:
            log.exception("%s: call %s failed", self.caller.name, self.call_id)
            self._record("error", f"simulator error: {exc!r}")
            self.outcome.error = repr(exc)
        finally:
            self._wrap_up()
        return self.outcome

    async def _script(self) -> None:
        b = self.behaviour
        negotiation: UacNegotiation | None = None
        if b.uses_timer:
            config = SessionTimerConfig(session_ttl=b.session_expires, min_se=b.min_se)
            negotiation = UacNegotiation(config, refresher=b.requested_refresher)
        cseq = 1
        extra: list[tuple[str, str]] = []
        final: Response | None = None
        for _ in range(MAX_INVITE_ATTEMPTS):
            self.invite = self._build_invite(cseq, negotiation, extra)
            final = await self._invite_transaction(self.invite)
            if final is None or self.cancelled:
                break
            if final.status in (401, 407) and self.credentials and self.outcome.auth_challenges < 2:
                self.outcome.auth_challenges += 1
                auth = self.authorization(self.invite, final)
                if auth is None:
                    break
                extra = [h for h in extra if h[0] not in ("Authorization", "Proxy-Authorization")] + [auth]
                cseq += 1
                continue
            if final.status == 422 and negotiation is not None and negotiation.on_422(final):
                cseq += 1
                continue
            break
        if final is None:
            self._record("timeout", "no final response to INVITE")
            return
        self.outcome.status, self.outcome.reason = final.status, final.reason
        self.outcome.setup_time = self.now() - self._t0
        if final.status >= 300:
            if self.cancelled:
                self._record("cancel", f"cancelled ({final.status})")
            else:
                self._record("rejected", f"{final.status} {final.reason}")
            return
        await self._answered(final, negotiation)

    async def _answered(self, final: Response, negotiation: UacNegotiation | None) -> None:
        assert self.invite is not None
        b = self.behaviour
        self.outcome.answered = True
        if self.dialog is None:  # normally created by _on_final already
            self._on_final(final)
        assert self.answered_at is not None
        if negotiation is not None:
            try:
                result = negotiation.on_2xx(final)
            except ValueError:
                result = None
            if result is not None and result.mode == "timer" and result.interval is not None:
                self.outcome.session_expires = result.interval
                self.outcome.refresher = result.refresher
                if not b.vanishes:
                    self.arm_session(result.interval, result.we_refresh)
        if self.cancelled:
            # Our CANCEL crossed the 2xx (9.1): the call is up, so it has to be ended with BYE.
            await self.hangup("answered after CANCEL")
        elif b.vanishes:
            await self._vanish_and_watch()
        else:
            await self.hold(self.answered_at + b.talk_time)
            await self.hangup("talk time over")
        self._record(self.ended_by or "none", self.end_reason)

    async def _vanish_and_watch(self) -> None:
        """Stop answering anything and watch, for a bounded time, whether the far end kills us."""

        def seen(message: Request | Response) -> None:
            if self.finalized:
                return  # the outcome is final; the endpoint stays a black hole for this call
            label = message.method if isinstance(message, Request) else f"{message.status}"
            self.outcome.ignored.append(label)
            if isinstance(message, Request) and message.method == "BYE":
                self.finish("remote", "BYE received while vanished")

        self.vanish(seen)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), self.behaviour.watch_time)
        if not self.ended.is_set():
            self.end_reason = f"nobody ended the call within {self.behaviour.watch_time:g}s"

    # -- the INVITE transaction ---------------------------------------------------------------

    def _build_invite(
        self, cseq: int, negotiation: UacNegotiation | None, extra: list[tuple[str, str]]
    ) -> Request:
        host, port = self.b2bua
        uri = f"sip:{self.callee}@{host}:{port}"
        h = Headers()
        h.add("Via", self.endpoint.via(self.endpoint.new_branch()))
        h.add("Max-Forwards", "70")
        h.add(
            "From",
            f'"{self.caller.number}" <sip:{self.caller.number}@{self.endpoint.sent_by}>;tag={self.local_tag}',
        )
        h.add("To", f"<sip:{self.callee}@{host}:{port}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} INVITE")
        h.add("Contact", self.contact)
        h.add("Allow", ALLOW)
        h.add("User-Agent", "sipledger-simulator")
        for name, value in extra:
            h.add(name, value)
        request = Request("INVITE", uri, h, self.local_sdp())
        if negotiation is not None:
            negotiation.apply_to(request)
        request.headers.add("Content-Type", CONTENT_TYPE)
        return request

    async def _invite_transaction(self, invite: Request) -> Response | None:
        """Send the INVITE and wait for its final response, cancelling when the behaviour says so
        or when it rings longer than ``answer_timeout``."""
        b = self.behaviour
        loop = asyncio.get_running_loop()
        self._provisional = loop.create_future()
        tx = self.endpoint.send_request(
            invite, self.b2bua, on_provisional=self._on_provisional, on_final=self._on_final
        )
        final = tx.final
        # Without any provisional, timer B (64*T1) resolves ``final`` with None by itself.
        await asyncio.wait({final, self._provisional}, return_when=asyncio.FIRST_COMPLETED)
        if not final.done():
            wait = b.ring_delay if b.kind == "cancel" else b.answer_timeout
            await asyncio.wait({final}, timeout=wait)
        if not final.done():
            self._send_cancel(tx, "cancel behaviour" if b.kind == "cancel" else "no answer")
            # 9.1: after CANCEL the INVITE should end with 487 quickly; give up after 64*T1.
            await asyncio.wait({final}, timeout=self.endpoint.timers.timeout + 1.0)
        return final.result() if final.done() else None

    def _on_provisional(self, response: Response) -> None:
        if response.status > 100 and self.outcome.ring_time is None:
            self.outcome.ring_time = self.now() - self._t0
        if self._provisional is not None and not self._provisional.done():
            self._provisional.set_result(None)

    def _on_final(self, response: Response) -> None:
        """A 2xx creates the dialog and is ACKed at once, before anything else is read."""
        if not (200 <= response.status < 300) or self.dialog is not None or self.invite is None:
            return
        self.answered_at = self.now()
        self.dialog = Dialog.uac_from_response(
            self.invite, response, local_contact=self.contact, via_sent_by=self.endpoint.sent_by
        )
        self.send_ack(response)

    def _send_cancel(self, tx: ClientTransaction, why: str) -> None:
        self.cancelled = True
        self.end_reason = why
        self.endpoint.send_request(build_cancel(tx.request), self.b2bua)

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, ended_by: str, reason: str) -> None:
        o = self.outcome
        o.ended_by = ended_by  # type: ignore[assignment]
        o.end_reason = reason
        if self.answered_at is not None:
            o.talk_time = (self.ended_at or self.now()) - self.answered_at

    def _abort(self, reason: str) -> None:
        """The run was cancelled: record it and leave the network tidy (BYE or CANCEL, unawaited)."""
        if self.ended.is_set():
            # The call had already ended (we were cancelled while waiting for the 200 to our BYE).
            self._record(self.ended_by or "none", self.end_reason)
            return
        self._record("aborted", reason)
        if self.silent:
            return
        if self.dialog is not None and not self.dialog.is_terminated and not self.ended.is_set():
            self.caller._spawn(self.hangup("aborted"))
        elif self.invite is not None and self.dialog is None and not self.cancelled:
            with contextlib.suppress(Exception):
                self.cancelled = True
                self.endpoint.send_request(build_cancel(self.invite), self.b2bua)

    def _wrap_up(self) -> None:
        self.finalized = True
        o = self.outcome
        o.duration = self.now() - self._t0
        o.refreshes_sent = self.refreshes_sent
        o.refreshes_answered = self.refreshes_answered
        o.refreshes_received = self.refreshes_received
        o.options_received = self.options_received
        o.bye_status = self.bye_status
        if o.talk_time is None and self.answered_at is not None:
            o.talk_time = (self.ended_at or self.now()) - self.answered_at
        self.close()
        self.caller._done(self)
