"""`sipledger audit`: the CDR store reconciled against the event log, call by call.

A check that looks at one CDR at a time (the billing-accuracy suite) cannot see a CDR that is
missing, a second record of a call, or a real call stored as a false orphan: each of those looks
fine on its own. This audit reads the log, the truth, and says for every call what the store must
hold, then compares:

* every call the log ends (its node's call.terminated) has exactly one CDR, with that end reason,
  that end time, and the setup and answer times of its events;
* every call the log orphans (a node.lost verdict for its node read after its setup and before its
  own end, not contradicted by a newer heartbeat of the node) has one ``orphaned`` CDR, closed by
  the pipeline, ending at or before the verdict, with its exposure recorded when it was answered;
* a call the log leaves open has no CDR yet;
* no CDR exists for a call the log has never heard of.

Each discrepancy is named with its call id and what the log says. The rules mirror the pipeline's
contract (pipeline/domain: first close in log order wins; a verdict closes only calls set up before
it), but the code is separate and simple: it follows the events, not the Processor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.domain.timeutil import format_ts, parse_ts
from schemas.validation import GATEWAY_EVENT_TYPES, ContractError, decode_event
from sipledger.store import Store
from sipledger.store.cdr_export import fetch_cdrs

MISSING = "missing CDR"
UNEXPECTED = "CDR of a call the log leaves open"
FALSE_ORPHAN = "orphaned CDR of a call its node ended"
WRONG_REASON = "end reason differs from the log"
WRONG_TIME = "time differs from the log"
NO_EVENTS = "CDR without events in the log"
NO_EXPOSURE = "orphan without its exposure"
KINDS = (MISSING, UNEXPECTED, FALSE_ORPHAN, WRONG_REASON, WRONG_TIME, NO_EVENTS, NO_EXPOSURE)


@dataclass(slots=True)
class LoggedCall:
    call_id: str
    node: str = ""
    setup_pos: int | None = None
    setup_ts: str | None = None
    answer_ts: str | None = None
    end_pos: int | None = None
    end_ts: str | None = None
    end_reason: str | None = None
    proofs: list[tuple[int, int]] = field(default_factory=list)  # (log position, ts) of proofs of life

    def proof_before(self, pos: int) -> int | None:
        """The last proof of life (answer, refresh, probe) read before log position ``pos``."""
        return max((ts for p, ts in self.proofs if p < pos), default=None)


@dataclass(slots=True)
class Verdict:
    node: str
    pos: int
    ts: str
    last_heartbeat_ms: int | None


@dataclass(slots=True)
class Discrepancy:
    kind: str
    call_id: str
    detail: str


@dataclass(slots=True)
class AuditResult:
    events: int = 0
    invalid: int = 0
    calls: int = 0
    cdrs: int = 0
    ended: int = 0
    orphaned: int = 0
    open: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def counts(self) -> Counter[str]:
        return Counter(d.kind for d in self.discrepancies)


def read_log(raw_events: Iterable[bytes | str]) -> tuple[dict[str, LoggedCall], list[Verdict],
                                                          dict[str, list[tuple[int, int]]], int, int]:
    """Calls, verdicts and each node's heartbeats (log position, ts) as the log holds them."""
    calls: dict[str, LoggedCall] = {}
    verdicts: list[Verdict] = []
    beats: dict[str, list[tuple[int, int]]] = {}
    pos = invalid = 0
    for raw in raw_events:
        try:
            ev = decode_event(raw)
        except ContractError:
            invalid += 1
            continue
        pos += 1
        etype = ev["type"]
        if etype == "node.heartbeat":
            beats.setdefault(ev["node"], []).append((pos, parse_ts(ev["ts"])))
            continue
        if etype in GATEWAY_EVENT_TYPES:
            continue  # a node's reports on its gateways: no call's events
        if etype == "node.lost":
            last = ev["last_heartbeat"]
            verdicts.append(Verdict(ev["node"], pos, ev["ts"], None if last is None else parse_ts(last)))
            continue
        if etype == "account.topup":
            continue  # a prepaid account's credit, not a call: no CDR
        c = calls.get(ev["call_id"])
        if c is None:
            c = calls[ev["call_id"]] = LoggedCall(ev["call_id"])
        if etype == "call.setup":
            if c.setup_pos is None:
                c.setup_pos, c.setup_ts, c.node = pos, ev["ts"], ev["node"]
        elif etype == "call.answered":
            c.answer_ts = c.answer_ts or ev["ts"]
            c.proofs.append((pos, parse_ts(ev["ts"])))
        elif etype in ("session.refreshed", "liveness.probe_succeeded"):
            c.proofs.append((pos, parse_ts(ev["ts"])))
        elif etype == "call.terminated" and c.end_pos is None:
            c.end_pos, c.end_ts, c.end_reason = pos, ev["ts"], ev["reason"]
        if not c.node:
            c.node = ev["node"]
    return calls, verdicts, beats, pos, invalid


def _applies(v: Verdict, c: LoggedCall, beats: dict[str, list[tuple[int, int]]]) -> bool:
    """Does verdict ``v`` close call ``c``: read after its setup and before its own end, and no heartbeat
    of the node newer than the one the verdict was based on read before it."""
    if v.node != c.node or c.setup_pos is None or v.pos < c.setup_pos:
        return False
    if c.end_pos is not None and c.end_pos < v.pos:
        return False
    newest = max((ts for p, ts in beats.get(v.node, ()) if p < v.pos), default=None)
    return newest is None or v.last_heartbeat_ms is None or newest <= v.last_heartbeat_ms


def audit(raw_events: Iterable[bytes | str], cdrs: Iterable[dict[str, Any]]) -> AuditResult:
    """Reconcile ``cdrs`` (contract dicts, one per call as the store reads them) with the log."""
    calls, verdicts, beats, n, invalid = read_log(raw_events)
    res = AuditResult(events=n, invalid=invalid, calls=len(calls))
    by_call: dict[str, list[dict[str, Any]]] = {}
    for cdr in cdrs:
        by_call.setdefault(cdr["call_id"], []).append(cdr)
        res.cdrs += 1
    bad = res.discrepancies.append
    verdicts_of: dict[str, list[Verdict]] = {}
    for v in verdicts:
        verdicts_of.setdefault(v.node, []).append(v)
    for cid, c in sorted(calls.items()):
        got = by_call.pop(cid, [])
        if len(got) > 1:
            bad(Discrepancy(UNEXPECTED, cid, f"{len(got)} CDRs for one call"))
        cdr = got[0] if got else None
        verdict = next((v for v in verdicts_of.get(c.node, ()) if _applies(v, c, beats)), None)
        if verdict is not None:
            res.orphaned += 1
            if cdr is None:
                bad(Discrepancy(MISSING, cid, f"orphaned by node.lost of {c.node} at {verdict.ts}"))
                continue
            if cdr["end_reason"] != "orphaned":
                bad(Discrepancy(WRONG_REASON, cid, f"{cdr['end_reason']}, but node.lost of {c.node} at "
                                f"{verdict.ts} came first in the log"))
                continue
            if parse_ts(cdr["end_ts"]) > parse_ts(verdict.ts):
                bad(Discrepancy(WRONG_TIME, cid,
                                f"orphan ends {cdr['end_ts']}, after its detection {verdict.ts}"))
            proof = c.proof_before(verdict.pos)
            if c.answer_ts is not None and proof is not None:
                want = max(0, parse_ts(verdict.ts) - proof)
                got_ms, got_open = cdr.get("exposure_ms", 0), cdr.get("exposure_open", False)
                if got_ms != want or not got_open:
                    bad(Discrepancy(NO_EXPOSURE, cid,
                                    f"exposure {got_ms} ms (open {got_open}); the log says {want} ms from "
                                    f"the last proof {format_ts(proof)} to {verdict.ts}, still open"))
            continue
        if c.end_pos is None or c.setup_pos is None:
            res.open += 1
            if cdr is not None:
                missing = "no call.setup" if c.setup_pos is None else "no end and no node.lost"
                bad(Discrepancy(UNEXPECTED, cid,
                                f"{cdr['end_reason']} CDR, but the log has {missing} for it"))
            continue
        res.ended += 1
        if cdr is None:
            bad(Discrepancy(MISSING, cid, f"the log ends it: {c.end_reason} at {c.end_ts}"))
            continue
        if cdr["end_reason"] != c.end_reason:
            kind = FALSE_ORPHAN if cdr["end_reason"] == "orphaned" else WRONG_REASON
            bad(Discrepancy(kind, cid,
                            f"stored {cdr['end_reason']}, the log says {c.end_reason} at {c.end_ts}"))
            continue
        for name, want_ts in (("setup_ts", c.setup_ts), ("answer_ts", c.answer_ts), ("end_ts", c.end_ts)):
            if cdr.get(name) != want_ts:
                bad(Discrepancy(WRONG_TIME, cid, f"{name} {cdr.get(name)}, the log says {want_ts}"))
    for cid, got in sorted(by_call.items()):
        bad(Discrepancy(NO_EVENTS, cid, f"{got[0]['end_reason']} CDR, no event of this call in the log"))
    return res


def audit_store(raw_events: Iterable[bytes | str], store: Store) -> AuditResult:
    return audit(raw_events, fetch_cdrs(store))
