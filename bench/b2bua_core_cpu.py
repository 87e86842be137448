#!/usr/bin/env python3
"""CPU per call of the B2BUA's sans-I/O path, in process: no sockets, no SIPp, no event loop.

Each call is the bench ladder's call as bytes on the wire: the caller's INVITE (SDP), the carrier's
100/180/200, the caller's ACK, the caller's BYE and the carrier's 200 to our BYE, with the timers the
core arms fired on a simulated clock. Every message goes through ``parse_message``, the core, the
serializer (the core's Send actions are bytes) and every event through a real ``CallEventFactory``
(schema validation, JSON encoding into a journal buffer that is never written). What is left out
is what the adapter adds on top: the event loop, the socket calls and the journal's write.

    python3 bench/b2bua_core_cpu.py [--calls 20000] [--concurrent 1000] [--profile] [--trace MODE]

``--trace`` measures call analysis (b2bua/signalling_trace.py): ``off`` (the default, no recorder),
``all`` (every call recorded and its record encoded like the journal would), ``failed`` (every call
recorded, none published: these calls end normally, the cost of ``[trace] failed_calls = true``).

Prints microseconds of CPU per call (best of ``--repeat`` rounds), which SIP core ran (compiled by
mypyc or, with ``SIPLEDGER_NATIVE=0``, the pure Python sources: b2bua/native.py) and the target from
issue 16 (1.2 ms of CPU per call for the whole process at 300 calls/s).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import re
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua import native
from b2bua.actions import Action, Address, CancelTimer, Emit, PublishTrace, Send, SetTimer
from b2bua.admission import Admission
from b2bua.call_events import CallEventFactory
from b2bua.core import B2BUACore, CoreConfig
from b2bua.routing import RouteTable
from b2bua.sip.deadlines import DeadlineQueue
from b2bua.sip.parser import parse_message
from sipledger.config import from_dict

CALLER = Address("127.0.0.1", 5070, "udp")
CARRIER = Address("127.0.0.1", 5080, "udp")
SDP = (b"v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


class _Buffer:
    """A journal that encodes like FileJournal and keeps only the byte count."""

    def __init__(self) -> None:
        import orjson

        self._dumps = orjson.dumps
        self.bytes = 0

    def publish(self, event: dict[str, Any], broadcast: bool = False) -> None:
        self.bytes += len(self._dumps(event)) + 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _invite(n: int) -> bytes:
    tag = f"{n}SIPpTag00{n}"
    return (f"INVITE sip:15551230000@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-1-0\r\n"
            f"From: \"1000\" <sip:1000@127.0.0.1:5070>;tag={tag}\r\n"
            f"To: <sip:15551230000@127.0.0.1:5060>\r\n"
            f"Call-ID: {n}-bench@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:1000@127.0.0.1:5070;transport=udp>\r\nMax-Forwards: 70\r\n"
            f"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def _in_dialog(method: str, n: int, to_tag: str, cseq: int) -> bytes:
    return (f"{method} sip:15551230000@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-{cseq}-{method}\r\n"
            f"From: \"1000\" <sip:1000@127.0.0.1:5070>;tag={n}SIPpTag00{n}\r\n"
            f"To: <sip:15551230000@127.0.0.1:5060>;tag={to_tag}\r\n"
            f"Call-ID: {n}-bench@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:1000@127.0.0.1:5070;transport=udp>\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


_HEADER = re.compile(rb"^(Via|From|To|Call-ID|CSeq|Record-Route): .*$", re.M)


def _answer(request: bytes, status: int, reason: str, tag: str | None, body: bytes = b"") -> bytes:
    """The carrier's response to one of our requests (SIPp's [last_*] headers, echoed)."""
    lines = [m.group(0).decode().rstrip("\r") for m in _HEADER.finditer(request)]
    out = [f"SIP/2.0 {status} {reason}"]
    for line in lines:
        if line.startswith("To: ") and tag:
            line += f";tag={tag}"
        out.append(line)
    if status > 100:
        out.append("Contact: <sip:15551230000@127.0.0.1:5080;transport=udp>")
    if body:
        out.append("Content-Type: application/sdp")
    out.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(out) + "\r\n\r\n").encode() + body


class Driver:
    def __init__(self, trace: str = "off") -> None:
        cfg = from_dict({
            "node": {"id": "bench-node"},
            "sip": {"listen_host": "127.0.0.1", "listen_port": 5060},
            "accounts": [{"name": "bench", "ips": ["127.0.0.1"]}],
            "gateways": [{"name": "carrier", "host": "127.0.0.1", "port": 5080, "probe": False}],
            "routes": [{"prefix": "", "gateways": ["carrier"]}],
            "trace": {"sample_rate": 1.0 if trace == "all" else 0.0, "failed_calls": trace == "failed"},
        })
        self.traces = 0  # records published
        self.trace_bytes = 0
        self.now = 1000.0
        self.core = B2BUACore(CoreConfig.from_config(cfg), Admission(cfg.accounts, cfg.admission, b"k" * 32),
                              RouteTable.from_config(cfg), rng=random.Random(7), wall_offset=1.78e9 - 1000.0)
        self.journal = _Buffer()
        self.events = CallEventFactory("bench-node", self.journal, clock=lambda: 1.78e9)  # type: ignore[arg-type]
        self.timers = DeadlineQueue()
        self.to_caller: list[bytes] = []
        self.to_carrier: list[bytes] = []
        self.next_call = 0  # call numbers (Call-IDs, tags, branches) are never reused
        self.core.start(self.now)

    def perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                (self.to_carrier if a.dest.port == CARRIER.port else self.to_caller).append(a.data)
            elif isinstance(a, SetTimer):
                self.timers.set(a.key, a.at)
            elif isinstance(a, CancelTimer):
                self.timers.cancel(a.key)
            elif isinstance(a, Emit):
                self.events.emit(a.call_id, a.type, **a.fields)
            elif isinstance(a, PublishTrace):
                # What the journal publisher does with a record: one JSON line.
                self.traces += 1
                self.trace_bytes += len(self.journal._dumps(a.record)) + 1

    def receive(self, data: bytes, source: Address) -> None:
        msg = parse_message(data)
        assert msg is not None
        self.perform(self.core.receive(msg, source, self.now))

    def advance(self, dt: float) -> None:
        self.now += dt
        due: list[Hashable] = self.timers.pop_due(self.now)
        for key in due:
            self.perform(self.core.timer_fired(key, self.now))


def run_calls(calls: int, concurrent: int, driver: Driver) -> None:
    """Set up ``concurrent`` calls, then hang them up; repeat until ``calls`` calls were made."""
    n = 0
    while n < calls:
        first = driver.next_call
        batch = range(first, first + min(concurrent, calls - n))
        driver.next_call = batch.stop
        tags: dict[int, str] = {}
        for i in batch:
            driver.to_carrier.clear()
            driver.to_caller.clear()
            driver.receive(_invite(i), CALLER)
            out = driver.to_carrier[-1]
            driver.receive(_answer(out, 100, "Trying", None), CARRIER)
            driver.receive(_answer(out, 180, "Ringing", f"c{i}"), CARRIER)
            driver.receive(_answer(out, 200, "OK", f"c{i}", SDP), CARRIER)
            ok = driver.to_caller[-1]
            tags[i] = re.search(rb"To: [^\r]*;tag=([^;\r]+)", ok).group(1).decode()  # type: ignore[union-attr]
            driver.receive(_in_dialog("ACK", i, tags[i], 1), CALLER)
            driver.advance(0.001)
        driver.advance(1.0)
        for i in batch:
            driver.to_carrier.clear()
            driver.receive(_in_dialog("BYE", i, tags[i], 2), CALLER)
            bye = driver.to_carrier[-1]
            driver.receive(_answer(bye, 200, "OK", None), CARRIER)
            driver.advance(0.001)
        driver.advance(40.0)  # every transaction timer (32 s) and tombstone (37 s) expires
        n += len(batch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--concurrent", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top functions by own time")
    p.add_argument("--trace", choices=["off", "all", "failed"], default="off",
                   help="call analysis: no recorder, every call recorded and published, or every call "
                        "recorded for failed_calls (none published: these calls end normally)")
    args = p.parse_args()
    driver = Driver(args.trace)
    run_calls(200, 100, driver)  # warm-up: caches, schema compilation
    gc.collect()
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        run_calls(args.calls, args.concurrent, driver)
        best = min(best, (time.process_time() - t0) / args.calls)
    print(f"b2bua core path: {best * 1e6:.0f} us CPU per call (best of {args.repeat} x {args.calls} calls, "
          f"{args.concurrent} at a time; pid {os.getpid()}); active calls left {driver.core.active_calls}, "
          f"events {driver.events.published}; trace {args.trace}: {driver.traces} records "
          f"({driver.trace_bytes / max(driver.traces, 1):.0f} bytes each); core {native.STATUS}")
    print("target (issue 16): <= 1,200 us per call for the whole process at 300 calls/s")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_calls(args.calls, args.concurrent, driver)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
