"""Call analysis: the signalling of both legs of a call, and the B2BUA's own memos, as one record.

VOS3000's "Call Analysis" shows, per call, every message exchanged with the caller and with the callee,
the time of each, and a memo line for each decision of the softswitch. ``SignallingRecorder`` keeps that
for the calls chosen (an account with ``trace = true``, a ``[trace] sample_rate``, or every call when
``[trace] failed_calls``, published only if it failed) and hands a finished call's record to the adapter
as a ``PublishTrace`` action (``b2bua/actions.py``), which writes it to the ``call-signalling`` topic or
journal. It is pure: the core passes the time of every message (its ``now``) and the recorder never reads
a clock, a socket or a file.

Which call a message belongs to is read from its Call-ID: each leg has its own (topology hiding), and the
core tells the recorder which Call-IDs are a traced call's caller and carrier legs. So the hooks in the
core are one line each (``b2bua/core_state.py`` ``_send``, ``b2bua/core.py`` ``receive``), and a call
that is not traced costs a dictionary look-up per message; with recording off the core holds no recorder
at all and the hooks cost one attribute test.

Bounds, so recording never grows without limit nor delays a call:

* per call ``max_messages`` entries and ``max_call_bytes`` bytes: the first half is kept as it came, the
  rest in a window of the latest ones (the set-up and the end are what explain a call); the entries in
  between are counted (``dropped_entries``) and their serial numbers leave a visible gap;
* per node ``max_buffered_bytes`` for all calls still being recorded: beyond, the oldest calls' records
  are dropped whole and counted (``stats["evicted"]``), never a message of a call held back.

Messages are kept as the bytes on the wire (ours) or as the parser read them (theirs, rendered back with
the serializer: header names come out in their long form); nothing is decoded until a record is built.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final

from b2bua.actions import Address
from b2bua.call_events import format_ts
from b2bua.sip.message import Headers, Request, Response
from b2bua.sip.serializer import serialize

# Ends that are no failure of anyone: a party hung up, or the caller gave up before the answer.
NORMAL_ENDS: Final = frozenset({"normal_caller_bye", "normal_callee_bye", "caller_cancel"})
SCHEMA_VERSION: Final = 1
# What an entry costs besides its text: the tuple, its floats and strings (a round figure).
ENTRY_OVERHEAD: Final = 120
_CRLF2: Final = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """The core's view of ``[trace]`` and of the accounts with ``trace = true``."""

    sample_rate: float = 0.0
    failed_calls: bool = False
    accounts: frozenset[str] = frozenset()
    bodies: bool = False
    max_messages: int = 200
    max_call_bytes: int = 262_144
    max_buffered_bytes: int = 67_108_864
    linger: float = 2.0

    @property
    def enabled(self) -> bool:
        """Whether any call can be recorded at all (if not, the core holds no recorder)."""
        return self.sample_rate > 0 or self.failed_calls or bool(self.accounts)

    @classmethod
    def from_config(cls, cfg: Any) -> TraceSettings:
        t = cfg.trace
        return cls(sample_rate=t.sample_rate, failed_calls=t.failed_calls,
                   accounts=frozenset(a.name for a in cfg.accounts if a.trace), bodies=t.bodies,
                   max_messages=t.max_messages, max_call_bytes=t.max_call_bytes,
                   max_buffered_bytes=t.max_buffered_bytes, linger=t.linger)


# An entry: (n, now, size, kind, leg, then for "sip": direction, address, sip_call_id, head, body, body_len;
# for "memo": text). Tuples, because a busy node records thousands a second.
Entry = tuple[Any, ...]


class CallTrace:
    """What is recorded of one call so far."""

    __slots__ = ("account", "bytes", "call_id", "count", "dropped", "end_reason", "ended", "failed_over",
                 "head", "head_bytes", "initiator", "leg_ids", "selected_by", "started", "tail")

    def __init__(self, call_id: str, account: str, selected_by: str, started: float) -> None:
        self.call_id = call_id
        self.account = account
        self.selected_by = selected_by
        self.started = started
        self.ended: float | None = None
        self.end_reason: str | None = None
        self.initiator: str | None = None
        self.failed_over = False
        self.head: list[Entry] = []
        self.tail: deque[Entry] = deque()
        self.head_bytes = 0
        self.bytes = 0  # head and tail
        self.count = 0  # entries ever added: the next one's serial number minus one
        self.dropped = 0
        self.leg_ids: list[str] = []  # the SIP Call-IDs bound to this call

    @property
    def failed(self) -> bool:
        return self.failed_over or (self.end_reason is not None and self.end_reason not in NORMAL_ENDS)

    def add(self, entry: Entry, size: int, max_messages: int, max_bytes: int) -> int:
        """Keep ``entry`` within the call's bounds; returns the change of the bytes kept."""
        if not self.tail and len(self.head) < max_messages // 2 and self.head_bytes + size <= max_bytes // 2:
            self.head.append(entry)
            self.head_bytes += size
            self.bytes += size
            return size
        tail = self.tail
        tail.append(entry)
        before = self.bytes
        self.bytes += size
        limit_n = max_messages - len(self.head)
        while tail and (len(tail) > limit_n or self.bytes > max_bytes):
            self.bytes -= tail.popleft()[2]
            self.dropped += 1
        return self.bytes - before

    def entries(self) -> list[Entry]:
        return [*self.head, *self.tail]


class SignallingRecorder:
    """The calls being recorded on one node (see the module docstring)."""

    def __init__(self, settings: TraceSettings, node: str, local: Address, wall_offset: float,
                 rng: Any) -> None:
        self.settings = settings
        self.node = node
        self.local = f"{_host(local.host)}:{local.port}"
        self.wall_offset = wall_offset  # now + wall_offset = Unix time, as for the events
        self.rng = rng  # getrandbits(32), as the transaction layer's
        self._threshold = int(settings.sample_rate * (1 << 32))
        # SIP Call-ID -> (trace, leg): what the hooks look up; empty when nothing is being recorded.
        self.by_sip: dict[str, tuple[CallTrace, str]] = {}
        self.traces: OrderedDict[str, CallTrace] = OrderedDict()  # call id -> trace, oldest first
        self.buffered = 0
        self.stats: dict[str, int] = {"recorded": 0, "published": 0, "discarded": 0, "evicted": 0,
                                      "evicted_bytes": 0, "dropped_entries": 0}
        # An initial INVITE being handled and what was sent in the same step (its 100 Trying goes out
        # before the core decides whether to record the call it may start).
        self._pending_in: tuple[Request, Headers, Address, float] | None = None
        self._pending_out: list[tuple[Request | Response, bytes, Address, float]] = []

    # -- selection ----------------------------------------------------------------------------------
    def select(self, account: str) -> str | None:
        """Whether a new call of ``account`` is recorded, and why (None: it is not)."""
        s = self.settings
        if account in s.accounts:
            return "account"
        if self._threshold and self.rng.getrandbits(32) < self._threshold:
            return "sample"
        if s.failed_calls:
            return "failed_calls"
        return None

    def start(self, call_id: str, account: str, selected_by: str, now: float,
              caller_call_id: str | None = None, invite: Request | None = None) -> CallTrace:
        """Record ``call_id`` from now on; with the caller leg's Call-ID, the INVITE being handled (and
        what this step already sent on that leg) is its first entry."""
        trace = CallTrace(call_id, account, selected_by, now)
        old = self.traces.pop(call_id, None)
        if old is not None:
            self._forget(old)
        self.traces[call_id] = trace
        self.stats["recorded"] += 1
        if caller_call_id is not None:
            self.bind(trace, caller_call_id, "caller")
            pending = self._pending_in
            if pending is not None and invite is not None and pending[0] is invite:
                msg, headers, source, at = pending
                self._add_sip(trace, "caller", "in", source, caller_call_id,
                              serialize(Request(msg.method, msg.uri, headers, msg.body)), at)
            for out, data, dest, at in self._pending_out:
                if out.call_id == caller_call_id:
                    self._add_sip(trace, "caller", "out", dest, caller_call_id, data, at)
            self._pending_out = []
        return trace

    def bind(self, trace: CallTrace, sip_call_id: str, leg: str) -> None:
        """Messages with this Call-ID are the call's ``leg`` (a carrier attempt, a taken-over dialog)."""
        if sip_call_id:
            self.by_sip[sip_call_id] = (trace, leg)
            trace.leg_ids.append(sip_call_id)

    # -- the hooks ----------------------------------------------------------------------------------
    def seen_in(self, msg: Request | Response, source: Address, now: float) -> None:
        """A parsed message arrived (before the core handles it)."""
        if isinstance(msg, Request) and msg.method == "INVITE":
            # A copy of the fields as received: the core stamps the top Via in place right after.
            self._pending_in = (msg, msg.headers.copy(), source, now)
            self._pending_out = []
        if self.by_sip:
            cid = msg.call_id
            hit = self.by_sip.get(cid) if cid is not None else None
            if hit is not None:
                self._add_sip(hit[0], hit[1], "in", source, cid or "", serialize(msg), now)

    def seen_out(self, msg: Request | Response, data: bytes, dest: Address, now: float) -> None:
        """The core sends ``data`` (``msg`` serialized) to ``dest``."""
        if self.by_sip:
            cid = msg.call_id
            hit = self.by_sip.get(cid) if cid is not None else None
            if hit is not None:
                self._add_sip(hit[0], hit[1], "out", dest, cid or "", data, now)
                return
        if self._pending_in is not None:
            self._pending_out.append((msg, data, dest, now))

    def step_done(self) -> None:
        """The input that may have started a call is handled: nothing of it is pending any more."""
        self._pending_in = None
        if self._pending_out:
            self._pending_out = []

    def memo(self, call_id: str, now: float, text: str, leg: str | None = None) -> None:
        trace = self.traces.get(call_id)
        if trace is not None:
            self._add(trace, (trace.count + 1, now, len(text) + ENTRY_OVERHEAD, "memo", leg, text))

    def failed_over(self, call_id: str) -> None:
        """A carrier attempt of the call failed: under ``failed_calls`` the call is published."""
        trace = self.traces.get(call_id)
        if trace is not None:
            trace.failed_over = True

    # -- the end ------------------------------------------------------------------------------------
    def end(self, call_id: str, now: float, reason: str | None, initiator: str | None = None) -> bool:
        """The call ended; its record waits ``linger`` for the last answers (the core arms a timer and
        calls ``flush``). False when the call is not recorded or already ended."""
        trace = self.traces.get(call_id)
        if trace is None or trace.ended is not None:
            return False
        trace.ended = now
        trace.end_reason = reason
        trace.initiator = initiator
        return True

    def flush(self, call_id: str) -> dict[str, Any] | None:
        """The finished record of an ended call (None: not recorded, evicted, or not failed under
        ``failed_calls``); the call is forgotten either way."""
        trace = self.traces.get(call_id)
        if trace is None or trace.ended is None:
            return None
        del self.traces[call_id]
        self._forget(trace)
        if trace.selected_by == "failed_calls" and not trace.failed:
            self.stats["discarded"] += 1
            return None
        self.stats["published"] += 1
        self.stats["dropped_entries"] += trace.dropped
        return self.record(trace)

    def record(self, trace: CallTrace) -> dict[str, Any]:
        """The contract form (schemas/call_signalling.json) of what is recorded of ``trace``."""
        off = self.wall_offset
        entries: list[dict[str, Any]] = []
        for e in trace.entries():
            if e[3] == "memo":
                entries.append({"n": e[0], "ts": format_ts(e[1] + off), "kind": "memo", "leg": e[4],
                                "text": e[5]})
                continue
            _, _, _, _, leg, direction, addr, sip_call_id, head, body, body_len = e
            first, _, rest = head.partition(b"\r\n")
            entries.append({
                "n": e[0], "ts": format_ts(e[1] + off), "kind": "sip", "leg": leg, "direction": direction,
                "transport": addr.transport, "remote": f"{_host(addr.host)}:{addr.port}",
                "sip_call_id": sip_call_id, "first_line": _text(first), "headers": _text(rest),
                "body": None if body is None else _text(body), "body_bytes": body_len,
            })
        return {
            "schema_version": SCHEMA_VERSION, "call_id": trace.call_id, "node": self.node,
            "account": trace.account, "selected_by": trace.selected_by, "local": self.local,
            "start": format_ts(trace.started + off),
            "end": None if trace.ended is None else format_ts(trace.ended + off),
            "end_reason": trace.end_reason, "failed": trace.failed, "dropped_entries": trace.dropped,
            "entries": entries,
        }

    # -- internals ----------------------------------------------------------------------------------
    def _add_sip(self, trace: CallTrace, leg: str, direction: str, addr: Address, sip_call_id: str,
                 data: bytes, now: float) -> None:
        cut = data.find(_CRLF2)
        head, body = (data, b"") if cut < 0 else (data[:cut], data[cut + 4:])
        kept = body if self.settings.bodies else None
        size = len(head) + (len(kept) if kept else 0) + ENTRY_OVERHEAD
        self._add(trace, (trace.count + 1, now, size, "sip", leg, direction, addr, sip_call_id, head, kept,
                          len(body)))

    def _add(self, trace: CallTrace, entry: Entry) -> None:
        trace.count += 1
        s = self.settings
        self.buffered += trace.add(entry, entry[2], s.max_messages, s.max_call_bytes)
        if self.buffered > s.max_buffered_bytes:
            self._evict(trace)

    def _evict(self, keep: CallTrace) -> None:
        """Drop the oldest calls' records until the node's bound holds (never the one being added to)."""
        limit = self.settings.max_buffered_bytes
        for call_id in list(self.traces):
            if self.buffered <= limit:
                return
            trace = self.traces[call_id]
            if trace is keep:
                continue
            del self.traces[call_id]
            self._forget(trace)
            self.stats["evicted"] += 1
            self.stats["evicted_bytes"] += trace.bytes

    def _forget(self, trace: CallTrace) -> None:
        self.buffered -= trace.bytes
        for cid in trace.leg_ids:
            hit = self.by_sip.get(cid)
            if hit is not None and hit[0] is trace:
                del self.by_sip[cid]


def _text(raw: bytes) -> str:
    # The serializer kept undecodable input bytes (surrogateescape); a record is JSON, so they show as U+FFFD.
    return raw.decode("utf-8", errors="replace")


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
