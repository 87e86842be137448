"""The confirmed-dialog half of a simulated call, identical for callers (UAC) and carriers (UAS).

Once a call is answered both sides behave the same way: they answer the peer's in-dialog requests
(BYE, OPTIONS, UPDATE, re-INVITE), run an RFC 4028 session timer (refresh as refresher, tear down on
expiry otherwise), re-send their ACK when a 2xx is retransmitted, retransmit their own 2xx to a
re-INVITE until it is ACKed, and hang up with BYE. Subclasses only add how the dialog starts.

Everything incoming arrives through synchronous ``on_request``/``on_response`` callbacks from the
endpoint; the call's own script is a coroutine that waits on ``ended``/``_wake`` with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

from b2bua.sip.dialog import Dialog, DialogTerminatedError
from b2bua.sip.digest import build_authorization
from b2bua.sip.message import Request, Response, SipSyntaxError, parse_session_expires
from b2bua.sip.serializer import build_response
from b2bua.sip.session_timer import SessionTimer, SessionTimerConfig, negotiate_uas
from b2bua.sip.transaction import Invite2xxRetransmitter
from b2bua.sip.transaction_layer import TransactionKey
from sipledger.simulator.endpoint import ALLOW, Addr, SipEndpoint, next_hop
from sipledger.simulator.sdp import CONTENT_TYPE, is_sdp, make_sdp

log = logging.getLogger(__name__)

# Our own floor for intervals the peer proposes: the simulator accepts whatever the B2BUA's (scaled)
# configuration asks for rather than answering 422, and never shortens it (huge session_ttl). When
# the peer leaves the refresher open we let it refresh ("uac" = the sender of the refresh request).
PEER_TIMER_POLICY = SessionTimerConfig(session_ttl=86_400, min_se=1, preferred_refresher="uac")

Builder = Callable[[list[tuple[str, str]]], Request]


class DialogCall:
    """Shared in-dialog behaviour. ``local_label`` is what ``ended_by`` says when we hang up."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        call_id: str,
        *,
        user: str,
        local_label: Literal["caller", "carrier"],
        credentials: tuple[str, str] | None = None,
        outbound: Addr | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.call_id = call_id
        self.user = user
        self.local_label = local_label
        self.credentials = credentials
        self.outbound = outbound  # fixed next hop for our in-dialog requests (None: RFC routing)
        self.dialog: Dialog | None = None
        self.session: SessionTimer | None = None
        self.session_interval: int | None = None
        self.session_refresher: str | None = None  # "uac"/"uas" from the initial INVITE's viewpoint
        self.refresh_method: Literal["update", "invite"] = "update"
        self.min_se = 1
        self.silent = False
        self.sdp_session_id = endpoint.rng.getrandbits(31)
        self.ended = asyncio.Event()
        self.ended_by: str | None = None
        self.end_reason = ""
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.refreshes_sent = 0
        self.refreshes_answered = 0
        self.refreshes_received = 0
        self.options_received = 0
        self.bye_status: int | None = None
        self._wake = asyncio.Event()
        self._reinvite_pending = False
        self._acks: dict[int, tuple[Request, Addr]] = {}  # our ACK per INVITE CSeq, for re-ACKing
        self._retx: dict[int, tuple[Invite2xxRetransmitter, TransactionKey, asyncio.Future[bool]]] = {}

    # -- small helpers ------------------------------------------------------------------------

    def now(self) -> float:
        return self.endpoint.now()

    @property
    def contact(self) -> str:
        return self.endpoint.contact(self.user)

    def local_sdp(self) -> bytes:
        return make_sdp(
            self.endpoint.host, 40_000 + self.sdp_session_id % 20_000, session_id=self.sdp_session_id
        )

    def in_dialog_hop(self, request: Request) -> Addr:
        return self.outbound or next_hop(request)

    # -- endpoint callbacks -------------------------------------------------------------------

    def on_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        if self.dialog is not None and self.dialog.matches(request):
            self._in_dialog_request(request, key, source)
        else:
            self.on_other_request(request, key, source)

    def on_response(self, response: Response, key: TransactionKey | None) -> None:
        """Responses no transaction is waiting for: a retransmitted 2xx means our ACK was lost."""
        try:
            cseq = response.cseq
        except SipSyntaxError:
            return
        if cseq.method == "INVITE" and 200 <= response.status < 300:
            entry = self._acks.get(cseq.num)
            if entry is not None:
                self.endpoint.send_stateless(*entry)

    def on_other_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        """A request that does not match our dialog (subclasses handle CANCEL and friends)."""
        if request.method != "ACK":
            self.endpoint.reply(request, key, 481)

    # -- in-dialog requests from the peer -----------------------------------------------------

    def _in_dialog_request(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        assert self.dialog is not None
        method = request.method
        if method == "ACK":
            self._ack_arrived(request)
            return
        if method == "CANCEL":
            # We answer re-INVITEs at once, so there is never anything left to cancel (9.2).
            self.endpoint.reply(request, key, 200)
            return
        reject = self.dialog.validate_request(request)
        if reject is not None:
            self.endpoint.reply(request, key, reject)
            return
        if method == "BYE":
            self.endpoint.reply(request, key, 200)
            self.dialog.terminate()
            self.finish("remote", "BYE received")
        elif method == "OPTIONS":
            self.options_received += 1
            self.endpoint.reply(
                request,
                key,
                200,
                headers=[("Allow", ALLOW), ("Accept", CONTENT_TYPE), ("Supported", "timer")],
            )
        elif method == "INVITE" and self._reinvite_pending:
            # 14.2 glare: our own re-INVITE is still open; the peer retries after a random wait.
            self.endpoint.reply(request, key, 491)
        elif method in ("UPDATE", "INVITE"):
            self._answer_refresh(request, key, source)
        elif method == "INFO":
            self.endpoint.reply(request, key, 200)
        else:
            self.endpoint.reply(request, key, 405, headers=[("Allow", ALLOW)])

    def _answer_refresh(self, request: Request, key: TransactionKey | None, source: Addr) -> None:
        """200 to the peer's UPDATE / re-INVITE, echoing its Session-Expires (RFC 4028 §9)."""
        headers: list[tuple[str, str]] = [("Contact", self.contact), ("Allow", ALLOW), ("Supported", "timer")]
        se_value = request.headers.get("Session-Expires")
        decision = None
        if se_value is not None:
            try:
                decision = negotiate_uas(request, PEER_TIMER_POLICY)
            except ValueError:
                self.endpoint.reply(request, key, 400)
                return
            if decision.mode == "reject_422":
                self.endpoint.reply(request, key, 422, headers=list(decision.response_headers))
                return
            headers += list(decision.response_headers)
        self.refreshes_received += 1
        body = b""
        if request.method == "INVITE" or is_sdp(request.headers.get("Content-Type"), request.body):
            body = self.local_sdp()
            headers.append(("Content-Type", CONTENT_TYPE))
        response = build_response(request, 200, headers=headers, body=body)
        if request.method == "INVITE":
            self.send_2xx(key, response, source)
        else:
            self.endpoint.respond(key, response)
        if decision is not None and decision.mode == "timer" and decision.interval is not None:
            self.arm_session(decision.interval, decision.we_refresh)
        elif self.session is not None:
            # A re-INVITE/UPDATE without Session-Expires still refreshes the session we have.
            self.arm_session(int(self.session.interval), self.session.we_refresh)

    # -- 2xx to INVITE: retransmit until ACK (13.3.1.4) ---------------------------------------

    def send_2xx(self, key: TransactionKey | None, response: Response, dest: Addr) -> asyncio.Future[bool]:
        """Send a 2xx to an INVITE and keep retransmitting it until the ACK. The future resolves
        True on ACK, False when the retransmitter gives up (64*T1)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        sent = self.endpoint.respond(key, response)
        cseq = response.cseq.num
        retx = Invite2xxRetransmitter(response, self.endpoint.timers)
        mkey = TransactionKey("2xx", f"{self.call_id}|{cseq}|{self.endpoint.new_branch()}", "", 0, "INVITE")

        def gave_up(reason: str) -> None:
            if not done.done():
                done.set_result(False)

        self._retx[cseq] = (retx, mkey, done)
        self.endpoint.start_machine(
            mkey, retx.timer_fired, retx.start(self.now()), dest, on_timeout=gave_up, skip_first_transmit=sent
        )
        return done

    def _ack_arrived(self, ack: Request) -> None:
        entry = self._retx.get(ack.cseq.num)
        if entry is None:
            return
        retx, mkey, done = entry
        self.endpoint.feed_machine(mkey, retx.ack_received(ack, self.now()))
        if retx.acked and not done.done():
            done.set_result(True)

    def _stop_retransmitters(self) -> None:
        for retx, mkey, done in self._retx.values():
            self.endpoint.feed_machine(mkey, retx.stop())
            if not done.done():
                done.set_result(False)

    # -- session timer ------------------------------------------------------------------------

    def arm_session(self, interval: int, we_refresh: bool) -> None:
        """Start or re-arm the session timer after a successful (initial or refresh) negotiation."""
        if self.dialog is None or self.dialog.is_terminated or self.silent:
            return
        now = self.now()
        if self.session is None or self.session.stopped:
            self.session = SessionTimer(interval, we_refresh)
            self.session.start(now)
            self.dialog.attach_timer(self.session)
        else:
            self.session.refreshed(now, interval, we_refresh)
        self.session_interval = interval
        self._wake.set()

    async def _refresh(self) -> None:
        """Send one session refresh as refresher (UPDATE by default, re-INVITE when asked or when
        the peer does not do UPDATE)."""
        assert self.dialog is not None and self.session is not None
        interval = int(self.session.interval)
        timer_headers = [
            ("Session-Expires", f"{interval};refresher=uac"),
            ("Min-SE", str(min(self.min_se, interval))),
            ("Supported", "timer"),
        ]
        method = self.refresh_method
        dialog = self.dialog

        def build(extra: list[tuple[str, str]]) -> Request:
            branch = self.endpoint.new_branch()
            if method == "invite":
                return dialog.create_reinvite(
                    branch=branch, body=self.local_sdp(), headers=timer_headers + extra
                )
            return dialog.create_update(branch=branch, content_type=None, headers=timer_headers + extra)

        self.refreshes_sent += 1
        response = await self.send_in_dialog(build)
        if self.ended.is_set() or self.session.stopped:
            return
        now = self.now()
        if response is None or not 200 <= response.status < 300:
            status = response.status if response is not None else "nothing"
            log.info("%s: %s refresh answered %s", self.call_id, method, status)
        if response is None:
            await self.hangup("session refresh timed out")
        elif 200 <= response.status < 300:
            self.refreshes_answered += 1
            new_interval, we_refresh = interval, True
            value = response.headers.get("Session-Expires")
            if value is not None:
                with contextlib.suppress(ValueError):
                    se = parse_session_expires(value)
                    new_interval, we_refresh = se.delta, se.refresher != "uas"
            self.arm_session(new_interval, we_refresh)
        elif response.status in (408, 481):
            self.finish("remote", f"session refresh answered {response.status}")
        elif response.status == 491 or (response.status in (405, 501) and method == "update"):
            if response.status != 491:
                self.refresh_method = "invite"
            # Glare (or no UPDATE support): try again shortly instead of waiting for expiry.
            self.session.refresh_at = now + self.endpoint.rng.uniform(0.1, 0.4)
        # Anything else leaves the session unrefreshed: the expiry guard hangs up if nothing succeeds.

    # -- holding the call ---------------------------------------------------------------------

    async def hold(self, until: float | None) -> None:
        """Keep the call up until ``until`` (loop time; None = until the peer ends it), refreshing
        the session or hanging up on expiry as the session timer requires."""
        while not self.ended.is_set():
            now = self.now()
            if until is not None and now >= until:
                return
            event = self.session.fire(now) if self.session is not None else None
            if event == "refresh":
                await self._refresh()
                continue
            if event == "expire":
                await self.hangup("session expired")
                return
            deadlines = [
                d for d in (until, self.session.next_deadline if self.session else None) if d is not None
            ]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # -- requests we send inside the dialog ---------------------------------------------------

    async def send_in_dialog(self, build: Builder) -> Response | None:
        """Send an in-dialog request, answer one digest challenge, ACK a 2xx to a re-INVITE."""
        if self.dialog is None:
            return None
        try:
            request = build([])
        except DialogTerminatedError:
            return None
        self._reinvite_pending = request.method == "INVITE"
        try:
            response = await self.endpoint.request(request, self.in_dialog_hop(request))
            if response is not None and response.status in (401, 407) and self.credentials:
                auth = self.authorization(request, response)
                if auth is not None:
                    try:
                        request = build([auth])
                    except DialogTerminatedError:
                        return None
                    response = await self.endpoint.request(request, self.in_dialog_hop(request))
        finally:
            self._reinvite_pending = False
        if response is None:
            return None
        self.dialog.on_response(request, response)
        if request.method == "INVITE" and 200 <= response.status < 300 and not self.dialog.is_terminated:
            self.send_ack(response)
        return response

    def send_ack(self, response: Response) -> None:
        """ACK a 2xx to our (re-)INVITE through the dialog, and remember it for retransmitted 2xx."""
        assert self.dialog is not None
        with contextlib.suppress(DialogTerminatedError):
            ack = self.dialog.create_ack(branch=self.endpoint.new_branch(), invite_cseq=response.cseq.num)
            dest = self.in_dialog_hop(ack)
            self._acks[response.cseq.num] = (ack, dest)
            self.endpoint.send_stateless(ack, dest)

    def authorization(self, request: Request, challenge: Response) -> tuple[str, str] | None:
        """The Authorization / Proxy-Authorization header answering a 401 / 407."""
        if self.credentials is None:
            return None
        if challenge.status == 407:
            name, value = "Proxy-Authorization", challenge.headers.get("Proxy-Authenticate")
        else:
            name, value = "Authorization", challenge.headers.get("WWW-Authenticate")
        if value is None:
            return None
        username, password = self.credentials
        try:
            return name, build_authorization(
                value,
                username=username,
                password=password,
                method=request.method,
                uri=request.uri,
                body=request.body,
                rng=self.endpoint.rng,
            )
        except ValueError as exc:
            log.warning("%s: cannot answer challenge: %s", self.call_id, exc)
            return None

    async def hangup(self, reason: str) -> None:
        """BYE. ``ended_by`` is settled before waiting for the 200, so a crossing BYE from the peer
        (which we still answer) does not rewrite who ended the call."""
        if self.dialog is None or self.dialog.is_terminated or self.ended.is_set():
            return
        self.finish(self.local_label, reason)
        dialog = self.dialog
        response = await self.send_in_dialog(
            lambda extra: dialog.create_bye(branch=self.endpoint.new_branch(), headers=extra)
        )
        self.bye_status = response.status if response is not None else None
        dialog.terminate()

    def finish(self, by: str, reason: str) -> None:
        """Record who ended the dialog (first writer wins) and wake the script."""
        if not self.ended.is_set():
            self.ended_by = by
            self.end_reason = reason
            self.ended_at = self.now()
            self.ended.set()
        if self.session is not None:
            self.session.stop()
        self._stop_retransmitters()
        self._wake.set()

    # -- vanishing ----------------------------------------------------------------------------

    def vanish(self, on_seen: Callable[[Request | Response], None] | None = None) -> None:
        """Become a device that is gone: nothing for this Call-ID is answered any more."""
        self.silent = True
        if self.session is not None:
            self.session.stop()
        self._stop_retransmitters()

        def observe(message: Request | Response, source: Addr) -> None:
            if on_seen is not None:
                on_seen(message)

        self.endpoint.silence(self.call_id, observe)

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Forget the call: stop timers and retransmitters and leave the endpoint's call table."""
        if self.session is not None:
            self.session.stop()
        self._stop_retransmitters()
        if not self.silent:
            # A vanished call stays silenced: the B2BUA's late BYE retransmissions must still find
            # a dead device, not a 481 that would tell it the device is alive.
            self.endpoint.unregister(self.call_id, self)
        self._wake.set()
