"""RFC 3261 §12 dialog state: identifiers, CSeq bookkeeping, route set, in-dialog requests.

A terminated dialog refuses to build requests and stops any session timer attached to it, so a
refresh deadline that was already scheduled can no longer produce a re-INVITE/UPDATE for a call
that has ended.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from b2bua.sip.message import Headers, NameAddr, Request, Response, format_params, parse_name_addr

TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogTerminatedError(Exception):
    pass


class DialogId(NamedTuple):
    """A dialog's key (12): hashed on every in-dialog request, so a NamedTuple (hashing in C)."""

    call_id: str
    local_tag: str
    remote_tag: str


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class Dialog:
    # Slots: every held call keeps two dialogs for its whole life.
    __slots__ = ("_timers", "call_id", "invite_cseq", "is_uac", "local_contact", "local_seq", "local_tag",
                 "local_uri", "remote_seq", "remote_tag", "remote_target", "remote_uri", "route_set",
                 "secure", "state", "transport", "via_sent_by")

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: str,
        remote_uri: str,
        remote_target: str,
        route_set: list[str],
        local_seq: int,
        remote_seq: int | None,
        is_uac: bool,
        state: DialogState,
        local_contact: str = "",
        via_sent_by: str = "",
        transport: str = "UDP",
        secure: bool = False,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        # Full From/To header values without tags, so in-dialog requests keep display names.
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.is_uac = is_uac
        self.state = state
        self.local_contact = local_contact
        self.via_sent_by = via_sent_by
        self.transport = transport
        self.secure = secure
        self.invite_cseq: int | None = None  # CSeq number of the INVITE the next 2xx ACK answers
        self._timers: list[_Stoppable] = []

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def uac_from_response(
        cls,
        invite: Request,
        response: Response,
        *,
        local_contact: str = "",
        via_sent_by: str = "",
        transport: str = "UDP",
    ) -> Dialog:
        """12.1.2: dialog created by a 1xx (with To tag, not 100) or 2xx to our INVITE."""
        if not (101 <= response.status < 300):
            raise ValueError(f"status {response.status} does not create a dialog")
        remote_tag = response.to.tag
        if not remote_tag:
            raise ValueError("response has no To tag")
        local_tag = invite.from_.tag or ""
        # Our view of the route set is the Record-Route of the response, reversed.
        route_set = list(reversed(response.headers.get_all("Record-Route")))
        contacts = response.contacts
        remote_target = str(contacts[0].uri) if contacts else invite.uri
        dialog = cls(
            call_id=invite.call_id or "",
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(invite.from_),
            remote_uri=_without_tag(invite.to),
            remote_target=remote_target,
            route_set=route_set,
            local_seq=invite.cseq.num,
            remote_seq=None,
            is_uac=True,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            local_contact=local_contact or (invite.headers.get("Contact") or ""),
            via_sent_by=via_sent_by,
            transport=transport,
            secure=invite.uri.lower().startswith("sips:"),
        )
        dialog.invite_cseq = invite.cseq.num
        return dialog

    @classmethod
    def uas_from_request(
        cls,
        invite: Request,
        local_tag: str,
        *,
        local_contact: str = "",
        via_sent_by: str = "",
        transport: str = "UDP",
        confirmed: bool = False,
    ) -> Dialog:
        """12.1.1: dialog created when we answer an INVITE with a tagged 1xx/2xx."""
        contacts = invite.contacts
        remote_target = str(contacts[0].uri) if contacts else ""
        dialog = cls(
            call_id=invite.call_id or "",
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_uri=_without_tag(invite.to),
            remote_uri=_without_tag(invite.from_),
            remote_target=remote_target,
            route_set=list(invite.headers.get_all("Record-Route")),
            # 12.1.1: the UAS local sequence number starts empty; we start at 0 so the first
            # request we send uses 1 (any value < 2**31 is allowed).
            local_seq=0,
            remote_seq=invite.cseq.num,
            is_uac=False,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_contact=local_contact,
            via_sent_by=via_sent_by,
            transport=transport,
            secure=invite.uri.lower().startswith("sips:"),
        )
        dialog.invite_cseq = invite.cseq.num
        return dialog

    # -- identity and state -------------------------------------------------------------------

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @property
    def is_terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def matches(self, message: Request | Response) -> bool:
        """Whether an incoming request (or a response to our request) belongs to this dialog."""
        if message.call_id != self.call_id:
            return False
        if isinstance(message, Request):
            local, remote = message.to.tag, message.from_.tag
        else:
            local, remote = message.from_.tag, message.to.tag
        return local == self.local_tag and remote == self.remote_tag

    def confirm(self) -> None:
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED
        for timer in self._timers:
            timer.stop()
        self._timers.clear()

    def attach_timer(self, timer: _Stoppable) -> None:
        """Tie a timer's lifetime to the dialog: terminating the dialog stops it."""
        if self.is_terminated:
            timer.stop()
            return
        self._timers.append(timer)

    def on_response(self, request: Request, response: Response) -> None:
        """Update state from a response to a request we sent inside this dialog."""
        if self.is_terminated:
            return
        if request.method == "INVITE":
            if 200 <= response.status < 300:
                self.confirm()
            elif response.status >= 300 and self.state is DialogState.EARLY:
                self.terminate()
        if response.status in (408, 481):
            # 12.2.1.2: the dialog is gone at the far end.
            self.terminate()
            return
        if request.method in TARGET_REFRESH_METHODS and 200 <= response.status < 300:
            self._refresh_target(response)

    # -- incoming requests --------------------------------------------------------------------

    def validate_request(self, request: Request) -> int | None:
        """Check an in-dialog request; return the status to reject it with, or None to accept.

        12.2.2: a CSeq lower than the last one seen is out of order and gets a 500. ACK and CANCEL
        reuse the INVITE's number, so they are exempt. Requests to a terminated dialog get 481.
        """
        if self.is_terminated:
            return 481
        if request.method in ("ACK", "CANCEL"):
            return None
        num = request.cseq.num
        if self.remote_seq is not None and num < self.remote_seq:
            return 500
        self.remote_seq = num
        if request.method == "INVITE":
            self.invite_cseq = num
        if request.method in TARGET_REFRESH_METHODS:
            self._refresh_target(request)
        return None

    def _refresh_target(self, message: Request | Response) -> None:
        contacts = message.contacts
        if contacts and not contacts[0].wildcard:
            self.remote_target = str(contacts[0].uri)

    # -- outgoing requests --------------------------------------------------------------------

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """12.2.1.1: loose routing keeps the target in the R-URI; strict routing swaps it in."""
        if not self.route_set:
            return self.remote_target, []
        first = parse_name_addr(self.route_set[0])
        if first.uri.lr:
            return self.remote_target, list(self.route_set)
        # Parameters not allowed in a Request-URI are stripped (19.1.1 table); a copy, since parsed
        # URIs are shared (message.parse_uri caches them).
        uri = dataclasses.replace(first.uri, params={k: v for k, v in first.uri.params.items()
                                                      if k not in ("method",)}, headers="")
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]

    def create_request(
        self,
        method: str,
        *,
        branch: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        cseq: int | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """Build an in-dialog request. CSeq increments for everything but ACK/CANCEL."""
        if self.is_terminated:
            raise DialogTerminatedError(f"dialog {self.id} is terminated; refusing to send {method}")
        if cseq is None:
            if method in ("ACK", "CANCEL"):
                if self.invite_cseq is None:
                    raise ValueError(f"{method} needs the INVITE CSeq")
                cseq = self.invite_cseq
            else:
                self.local_seq += 1
                cseq = self.local_seq
        if method == "INVITE":
            self.invite_cseq = cseq
        uri, routes = self._request_uri_and_routes()
        h = Headers()
        h.add("Via", f"SIP/2.0/{self.transport.upper()} {self.via_sent_by};branch={branch}")
        for route in routes:
            h.add("Route", route)
        h.add("Max-Forwards", str(max_forwards))
        h.add("From", self.local_uri + format_params({"tag": self.local_tag}))
        h.add("To", self.remote_uri + format_params({"tag": self.remote_tag}))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in TARGET_REFRESH_METHODS and self.local_contact:
            h.add("Contact", self.local_contact)
        for name, value in headers:
            h.add(name, value)
        if body and content_type:
            h.add("Content-Type", content_type)
        return Request(method, uri, h, body)

    def create_ack(
        self,
        *,
        branch: str,
        invite_cseq: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """ACK for a 2xx: same CSeq number as the INVITE, new branch (13.2.2.4)."""
        return self.create_request(
            "ACK", branch=branch, body=body, content_type=content_type, cseq=invite_cseq or self.invite_cseq
        )

    def create_bye(self, *, branch: str, headers: Iterable[tuple[str, str]] = ()) -> Request:
        return self.create_request("BYE", branch=branch, headers=headers)

    def create_reinvite(
        self,
        *,
        branch: str,
        body: bytes = b"",
        content_type: str | None = "application/sdp",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        return self.create_request(
            "INVITE", branch=branch, body=body, content_type=content_type, headers=headers
        )

    def create_update(
        self,
        *,
        branch: str,
        body: bytes = b"",
        content_type: str | None = "application/sdp",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        return self.create_request(
            "UPDATE", branch=branch, body=body, content_type=content_type, headers=headers
        )

    def create_options(self, *, branch: str, headers: Iterable[tuple[str, str]] = ()) -> Request:
        return self.create_request("OPTIONS", branch=branch, headers=headers)

    def create_info(
        self,
        *,
        branch: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        return self.create_request(
            "INFO", branch=branch, body=body, content_type=content_type, headers=headers
        )


def _without_tag(na: NameAddr) -> str:
    """A parsed From/To as a header value without its tag (the message's parsed value is shared, so
    it is copied, not changed)."""
    if "tag" not in na.params:
        return str(na)
    params = {k: v for k, v in na.params.items() if k != "tag"}
    return str(NameAddr(uri=na.uri, display=na.display, params=params, wildcard=na.wildcard))


def dialog_id_for_request(request: Request) -> DialogId:
    """The id of the dialog an incoming request would belong to, from our (UAS) perspective."""
    return DialogId(request.call_id or "", request.to.tag or "", request.from_.tag or "")


__all__ = [
    "Dialog",
    "DialogId",
    "DialogState",
    "DialogTerminatedError",
    "dialog_id_for_request",
]
