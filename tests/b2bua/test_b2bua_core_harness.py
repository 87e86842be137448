"""Test driver for the sans-I/O B2BUA core: a fake clock, a timer table and SIP peers built from the
sip package's own Dialog objects, so the caller and carrier sides speak correct SIP without sockets.

Every event the core asks for goes through a real ``CallEventFactory`` (schema-validated), so a
test fails loudly on an event that breaks its contract. No tests live here.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from typing import Any

from b2bua.actions import Action, Address, CancelTimer, Emit, Log, Send, SetTimer
from b2bua.admission import Admission
from b2bua.call_events import CallEventFactory
from b2bua.core import B2BUACore, CoreConfig
from b2bua.routing import RouteTable
from b2bua.sip.dialog import Dialog
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import parse_message
from b2bua.sip.serializer import build_response, serialize
from sipledger.config import Config, from_dict

CALLER = Address("10.0.0.1", 5061, "udp")
GW1 = Address("10.0.0.2", 5060, "udp")
GW2 = Address("10.0.0.3", 5060, "udp")
WALL = 1_780_000_000.0

SDP_A = b"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_B = b"v=0\r\no=b 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def make_config(raw: dict[str, Any] | None = None) -> Config:
    base: dict[str, Any] = {
        "node": {"id": "node-1"},
        "sip": {"resend_interval_ms": 500, "invite_timeout": 5.0, "call_progress_timeout": 30.0},
        "timers": {"session_ttl": 120, "min_se": 90, "no_timer_max_duration": 3600},
        "accounts": [{"name": "acme", "ips": ["10.0.0.1"]}],
        # Not probed: these tests script every message the gateways get (tests of the probes turn it on).
        "gateways": [
            {"name": "gw1", "vendor": "carrier-one", "host": "10.0.0.2", "port": 5060, "probe": False},
            {"name": "gw2", "host": "10.0.0.3", "port": 5060, "probe": False},
        ],
        "routes": [{"prefix": "1555", "gateways": ["gw1", "gw2"]}, {"prefix": "1666", "gateways": ["gw1"]}],
    }
    for key, value in (raw or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return from_dict(base)


class _ListPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: dict[str, Any], broadcast: bool = False) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, raw: dict[str, Any] | None = None) -> None:
        self.cfg = make_config(raw)
        self.core = B2BUACore(
            CoreConfig.from_config(self.cfg, local_port=5060),
            Admission(self.cfg.accounts, self.cfg.admission, b"test-secret"),
            RouteTable.from_config(self.cfg),
            rng=random.Random(7),
            wall_offset=WALL,
        )
        self.now = 0.0
        self.timers: dict[Hashable, float] = {}
        self.sent: list[tuple[Request | Response, Address]] = []
        self._taken = 0
        self.publisher = _ListPublisher()
        self.factory = CallEventFactory("node-1", self.publisher, clock=lambda: WALL + self.now)
        self.logs: list[Log] = []
        self.apply(self.core.start(self.now))

    # -- driving ----------------------------------------------------------------------------------
    def apply(self, actions: Iterable[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                msg = parse_message(a.data)
                assert msg is not None
                self.sent.append((msg, a.dest))
            elif isinstance(a, SetTimer):
                self.timers[a.key] = a.at
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.key, None)
            elif isinstance(a, Emit):
                self.factory.emit(a.call_id, a.type, **a.fields)
            elif isinstance(a, Log):
                self.logs.append(a)

    def feed(self, msg: Request | Response | bytes, source: Address = CALLER) -> list[tuple[Any, Address]]:
        data = msg if isinstance(msg, bytes) else serialize(msg)
        try:
            parsed: Any = parse_message(data)
        except Exception as exc:  # ParseError: the adapter hands it to the core as is
            parsed = exc
        self.apply(self.core.receive(parsed, source, self.now))
        return self.take()

    def advance(self, dt: float) -> list[tuple[Any, Address]]:
        target = self.now + dt
        while True:
            due = [(at, repr(k), k) for k, at in self.timers.items() if at <= target]
            if not due:
                break
            at, _, key = min(due)
            del self.timers[key]
            self.now = max(self.now, at)
            self.apply(self.core.timer_fired(key, self.now))
        self.now = target
        return self.take()

    def command(self, cmd: dict[str, Any]) -> list[tuple[Any, Address]]:
        self.apply(self.core.terminate_command(cmd, self.now))
        return self.take()

    def take(self) -> list[tuple[Any, Address]]:
        out = self.sent[self._taken :]
        self._taken = len(self.sent)
        return out

    # -- inspection -------------------------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        return self.publisher.events

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def event(self, etype: str) -> dict[str, Any]:
        found = [e for e in self.events if e["type"] == etype]
        assert len(found) == 1, (etype, self.types())
        return found[0]

    def call_timers(self) -> list[Hashable]:
        return [k for k in self.timers if isinstance(k, tuple) and k and k[0] == "call"]


def only(
    messages: list[tuple[Any, Address]],
    dest: Address | None = None,
    *,
    method: str | None = None,
    status: int | None = None,
) -> Any:
    found = select(messages, dest, method=method, status=status)
    assert len(found) == 1, [(_label(m), d) for m, d in messages]
    return found[0]


def select(
    messages: list[tuple[Any, Address]],
    dest: Address | None = None,
    *,
    method: str | None = None,
    status: int | None = None,
) -> list[Any]:
    out = []
    for m, d in messages:
        if dest is not None and (d.host, d.port) != (dest.host, dest.port):
            continue
        if method is not None and not (isinstance(m, Request) and m.method == method):
            continue
        if status is not None and not (isinstance(m, Response) and m.status == status):
            continue
        out.append(m)
    return out


def labels(messages: list[tuple[Any, Address]]) -> list[str]:
    return [f"{_label(m)} -> {d.host}" for m, d in messages]


def _label(m: Any) -> str:
    return m.method if isinstance(m, Request) else f"{m.status} {m.cseq.method}"


# -- the peers ------------------------------------------------------------------------------------


def caller_invite(
    *,
    call_id: str = "c1@10.0.0.1",
    branch: str = "z9hG4bKc1",
    cseq: int = 1,
    callee: str = "15551230000",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = SDP_A,
    max_forwards: int = 70,
) -> Request:
    h = [
        ("Via", f"SIP/2.0/UDP 10.0.0.1:5061;branch={branch};rport"),
        ("Max-Forwards", str(max_forwards)),
        ("From", '"Alice" <sip:1000@10.0.0.1:5061>;tag=caller-tag'),
        ("To", f"<sip:{callee}@10.0.0.9:5060>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Contact", "<sip:1000@10.0.0.1:5061;transport=UDP>"),
        ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"),
        *headers,
    ]
    if body:
        h.append(("Content-Type", "application/sdp"))
    return Request("INVITE", f"sip:{callee}@10.0.0.9:5060", h, body)


def answer(
    req: Request,
    status: int,
    *,
    tag: str = "gw-tag",
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    contact: str = "<sip:gw@10.0.0.2:5060>",
) -> Response:
    h = [("Contact", contact), *headers] if status > 100 else list(headers)
    if body:
        h.append(("Content-Type", "application/sdp"))
    return build_response(req, status, to_tag=tag if status > 100 else None, headers=h, body=body)


def caller_dialog(invite: Request, ok: Response) -> Dialog:
    return Dialog.uac_from_response(invite, ok, via_sent_by="10.0.0.1:5061")


def carrier_dialog(invite: Request, tag: str = "gw-tag") -> Dialog:
    d = Dialog.uas_from_request(
        invite, tag, local_contact="<sip:gw@10.0.0.2:5060>", via_sent_by="10.0.0.2:5060", confirmed=True
    )
    return d


class Call:
    """A call driven to the answered state: caller INVITE -> carrier 180/200 -> caller ACK."""

    def __init__(
        self,
        h: Harness,
        *,
        invite: Request | None = None,
        carrier_headers: Iterable[tuple[str, str]] = (),
        ack: bool = True,
    ) -> None:
        self.h = h
        self.invite = invite or caller_invite()
        out = h.feed(self.invite)
        self.out_invite: Request = only(out, GW1, method="INVITE")
        h.feed(answer(self.out_invite, 180), GW1)
        out = h.feed(answer(self.out_invite, 200, body=SDP_B, headers=carrier_headers), GW1)
        self.ok: Response = only(out, CALLER, status=200)
        self.caller = caller_dialog(self.invite, self.ok)
        self.carrier = carrier_dialog(self.out_invite)
        self.call_id = h.event("call.setup")["call_id"]
        if ack:
            h.feed(self.caller.create_ack(branch="z9hG4bKack1"))
