"""A pjsua2 (PJSIP) user agent for tests, run as its own process.

PJSIP is an independent RFC 4028 implementation; it asserts (aborting the process) on a session
interval under 90 s, so it never runs inside the pytest process. It prints one JSON object per
line: what it saw (call states, the final status, received re-INVITE/UPDATE refreshes).

    python3 tests/pjsua_agent.py callee --port 0 [--answer-delay 0.2]
    python3 tests/pjsua_agent.py caller --port 0 --target sip:4420@127.0.0.1:5060 --talk 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import pjsua2 as pj


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


class Call(pj.Call):
    def __init__(self, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.done = False
        self.confirmed_at: float | None = None
        self.setup_tsx: set[int] = set()
        self.seen: set[int] = set()

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        say(event="state", state=ci.stateText, code=ci.lastStatusCode, reason=ci.lastReason)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            say(event="disconnected", code=ci.lastStatusCode, reason=ci.lastReason,
                connected_s=ci.connectDuration.sec)
            self.done = True

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = e.body.tsxState.tsx
        if tsx.method not in ("INVITE", "UPDATE"):
            return
        # The C pointer identifies a transaction across its callbacks; PJSIP reuses the memory of
        # ended transactions, so a key is forgotten once its transaction terminates.
        key = int(tsx.pjTransaction)
        ended = tsx.state == pj.PJSIP_TSX_STATE_TERMINATED
        if self.confirmed_at is None or key in self.setup_tsx:
            if ended:
                self.setup_tsx.discard(key)
            else:
                self.setup_tsx.add(key)  # the initial INVITE: not a refresh
            return
        if key not in self.seen and tsx.statusCode >= 200:
            self.seen.add(key)
            role = "received" if tsx.role == pj.PJSIP_ROLE_UAS else "sent"
            say(event=f"refresh_{role}", method=tsx.method, status=tsx.statusCode)
        if ended:
            self.seen.discard(key)


class Account(pj.Account):
    def __init__(self, answer_delay: float) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.answer_delay = answer_delay

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = Call(self, prm.callId)
        self.calls.append(call)
        say(event="incoming")
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        time.sleep(self.answer_delay)
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["caller", "callee"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--target", default="")
    ap.add_argument("--talk", type=float, default=5.0, help="caller: seconds connected before BYE")
    ap.add_argument("--se", type=int, default=90, help="Session-Expires (PJSIP floor: 90)")
    ap.add_argument("--min-se", type=int, default=90)
    ap.add_argument("--answer-delay", type=float, default=0.2)
    ap.add_argument("--max-wait", type=float, default=180.0)
    args = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.maxCalls = 4
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tc = pj.TransportConfig()
    tc.port = args.port
    tc.boundAddress = "127.0.0.1"
    tc.publicAddress = "127.0.0.1"
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    ep.libStart()
    say(event="listening", address=ep.transportGetInfo(tid).localName)

    acfg = pj.AccountConfig()
    acfg.idUri = "sip:pjsua@127.0.0.1"
    acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_ALWAYS
    acfg.callConfig.timerSessExpiresSec = args.se
    acfg.callConfig.timerMinSESec = args.min_se
    acc = Account(args.answer_delay)
    acc.create(acfg)

    deadline = time.monotonic() + args.max_wait
    code = 0
    call: Call | None = None
    try:
        if args.role == "caller":
            call = Call(acc)
            acc.calls.append(call)
            prm = pj.CallOpParam(True)
            call.makeCall(args.target, prm)
            while not call.done and time.monotonic() < deadline:
                ep.libHandleEvents(50)
                if call.confirmed_at and time.monotonic() - call.confirmed_at >= args.talk:
                    say(event="hangup")
                    call.hangup(pj.CallOpParam())
                    call.confirmed_at = float("inf")
            code = 0 if call.done else 2
        else:
            while time.monotonic() < deadline:
                ep.libHandleEvents(50)
                if acc.calls and all(c.done for c in acc.calls):
                    break
    finally:
        ep.hangupAllCalls()
        for _ in range(10):
            ep.libHandleEvents(20)
        # Call objects must go before the library, or their destructors assert and abort.
        acc.calls.clear()
        call = None
        gc.collect()
        acc.shutdown()
        ep.libDestroy()
    return code


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    os._exit(rc)  # skip interpreter teardown of SWIG objects
