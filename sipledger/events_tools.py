"""Checking and sending a file of call events: ``sipledger events validate`` and ``events send``.

For operators who stream their own switch's events into sipledger (docs/events.md). A schema judges
one event; the contract also binds lines to each other, and the pipeline relies on that:

* ``seq`` runs per call from 1 without gaps: the fold applies a call's events in seq order and
  *holds* everything after a missing seq, so a call with a gap never closes (no CDR), and one without
  seq 1 (call.setup) is an ``unknown_call``;
* one call, one node: deadlines are judged on the clock of the call's node;
* nothing follows call.terminated: the first close wins, later events change nothing;
* an event_id names one event: a second event with the same id is dropped as a redelivery, so two
  different events sharing an id lose one silently. An identical repeat is harmless (counted).

:func:`check_lines` finds all of that in one pass (memory grows with the calls and ids of the file).
Sending publishes exactly as the B2BUA's publisher does: key = call id, so each call stays in order on
one partition; node.heartbeat and node.lost go to every partition, so every worker reads every node's
clock and verdicts; acks=all with one request in flight per connection so order survives retries.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

from schemas.validation import GATEWAY_EVENT_TYPES, ContractError, decode_event

# Sent to every partition, like the B2BUA's publisher does (sipledger/eventlog/kafka_publisher.py).
BROADCAST_TYPES = frozenset({"node.heartbeat", "node.lost"})
# A node's reports on its gateways: keyed gateway:<node>:<gateway>, no call's events (no seq rules).
GATEWAY_TYPES = frozenset(GATEWAY_EVENT_TYPES)
NODE_TYPES = BROADCAST_TYPES | GATEWAY_TYPES
# Facts of an account, not of a call: keyed account:<name>, no seq chain (each is counted once by its id).
ACCOUNT_TYPES = frozenset({"account.topup"})
# How long a topic may take to appear in the broker's metadata before it is called missing.
TOPIC_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    field: str | None
    reason: str
    call_id: str | None = None
    # Leaving this line out would leave its call with a gap (or without its setup): a sender that skips
    # bad lines must leave out the whole call.
    whole_call: bool = True

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}field {self.field}: {self.reason}" if self.field else f"{where}{self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason, "call_id": self.call_id}


@dataclass(slots=True)
class _CallSeen:
    node: str
    node_line: int
    seqs: dict[int, int] = field(default_factory=dict)  # seq -> line
    terminated: tuple[int, int] | None = None  # (seq, line) of its call.terminated


@dataclass(slots=True)
class CheckResult:
    lines: int = 0  # non-blank lines read
    events: int = 0  # valid events (identical repeats included)
    repeats: int = 0  # events repeated verbatim (same id, same content): dropped downstream
    heartbeats: int = 0
    verdicts: int = 0  # node.lost events
    gateway_reports: int = 0  # gateway.down / gateway.up events
    topups: int = 0  # account.topup events
    calls: int = 0
    ended: int = 0
    nodes: list[str] = field(default_factory=list)
    silent_nodes: list[str] = field(default_factory=list)  # nodes with calls and no heartbeat
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_lines(self) -> set[int]:
        return {p.line for p in self.problems if p.line is not None}

    def bad_calls(self) -> set[str]:
        return {p.call_id for p in self.problems if p.call_id is not None and p.whole_call}

    def summary(self) -> str:
        return (f"{self.events} events on {self.lines} lines: {self.calls} calls ({self.ended} ended, "
                f"{self.calls - self.ended} still open), {len(self.nodes)} nodes, {self.heartbeats} "
                f"heartbeats, {self.verdicts} node.lost, {self.repeats} repeated events"
                + (f", {self.gateway_reports} gateway reports" if self.gateway_reports else ""))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "events": self.events, "calls": self.calls,
                "ended": self.ended, "nodes": self.nodes, "heartbeats": self.heartbeats,
                "node_lost": self.verdicts, "gateway_reports": self.gateway_reports, "topups": self.topups,
                "repeated_events": self.repeats,
                "nodes_without_heartbeats": self.silent_nodes,
                "problems": [p.as_dict() for p in self.problems]}


def _call_id_of(raw: bytes) -> str | None:
    """The call id of a line that failed its schema, when it has one (to skip the whole call)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    cid = obj.get("call_id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) else None


def _span(first: int, last: int) -> str:
    """The seqs first..last, as a reader wants them: '3' or '3-7'."""
    return str(first) if first == last else f"{first}-{last}"


def check_lines(lines: Iterable[tuple[int, bytes]]) -> CheckResult:
    """Every contract problem of a file of events, each naming its line and field; see the module doc."""
    res = CheckResult()
    ids: dict[str, tuple[bytes, int]] = {}  # event_id -> (digest of the event, line)
    calls: dict[str, _CallSeen] = {}
    nodes: set[str] = set()
    beating: set[str] = set()
    problems = res.problems
    for line, raw in lines:
        res.lines += 1
        try:
            event = decode_event(raw)
        except ContractError as exc:
            problems.append(Problem(line, exc.field, exc.reason, _call_id_of(raw)))
            continue
        res.events += 1
        eid, cid, etype, node, seq = (event["event_id"], event["call_id"], event["type"], event["node"],
                                      event["seq"])
        digest = hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        first = ids.get(eid)
        if first is not None:
            if first[0] == digest:
                res.repeats += 1
                continue
            # Without this line its call still has the seq (a second version of one event) or not.
            other = etype in NODE_TYPES or etype in ACCOUNT_TYPES
            known = not other and cid in calls and seq in calls[cid].seqs
            problems.append(Problem(line, "event_id", f"event_id {eid!r} already names a different event "
                                    f"(line {first[1]}); the pipeline would drop this one as a duplicate",
                                    None if other else cid, not known))
            continue
        ids[eid] = (digest, line)
        if etype in ACCOUNT_TYPES:
            res.topups += 1
            if cid != f"account:{event['account']}":
                problems.append(Problem(line, "call_id", f"a top-up of account {event['account']!r} has "
                                        f"call_id {cid!r}, not 'account:{event['account']}'"))
            continue
        if etype in NODE_TYPES:
            nodes.add(node)
            if etype in GATEWAY_TYPES:
                res.gateway_reports += 1
                if cid != f"gateway:{node}:{event['gateway']}"[:128]:
                    problems.append(Problem(line, "call_id", f"a {etype} of node {node!r} on gateway "
                                            f"{event['gateway']!r} has call_id {cid!r}, not "
                                            f"'gateway:{node}:{event['gateway']}'"))
                continue
            if etype == "node.heartbeat":
                res.heartbeats += 1
                beating.add(node)
            else:
                res.verdicts += 1
            if cid != f"node:{node}":
                problems.append(Problem(line, "call_id", f"a {etype} of node {node!r} has call_id "
                                        f"{cid!r}, not 'node:{node}'"))
            continue
        c = calls.get(cid)
        if c is None:
            c = calls[cid] = _CallSeen(node, line)
            nodes.add(node)
        elif node != c.node:
            problems.append(Problem(line, "node", f"call {cid} belongs to node {c.node!r} (line "
                                    f"{c.node_line}), not {node!r}: one call, one node", cid))
            continue
        if seq in c.seqs:
            problems.append(Problem(line, "seq", f"call {cid} already has seq {seq} (line {c.seqs[seq]}); "
                                    "the pipeline would drop this event as a duplicate", cid, False))
            continue
        c.seqs[seq] = line
        if seq == 1 and etype != "call.setup":
            problems.append(Problem(line, "type", f"call {cid}: seq 1 is a {etype}; a call starts with its "
                                    "call.setup", cid))
        elif etype == "call.setup" and seq != 1:
            problems.append(Problem(line, "seq", f"call {cid}: its call.setup has seq {seq}; the call.setup "
                                    "is seq 1", cid))
        if etype == "call.terminated" and (c.terminated is None or seq < c.terminated[0]):
            c.terminated = (seq, line)
    for cid, c in calls.items():
        seqs = sorted(c.seqs)
        if seqs[0] != 1:
            problems.append(Problem(c.seqs[seqs[0]], "seq", f"call {cid} starts at seq {seqs[0]}: seq "
                                    f"{_span(1, seqs[0] - 1)} missing (seqs run from 1 without gaps)", cid))
        for prev, nxt in itertools.pairwise(seqs):
            if nxt != prev + 1:
                missing = _span(prev + 1, nxt - 1)
                problems.append(Problem(c.seqs[nxt], "seq", f"call {cid} has no seq {missing} (seqs run from "
                                        "1 without gaps; the pipeline holds every later event of the call)",
                                        cid))
        if c.terminated is not None:
            res.ended += 1
            tseq, tline = c.terminated
            for s in seqs:
                if s > tseq:
                    problems.append(Problem(c.seqs[s], "seq", f"call {cid} ended with call.terminated "
                                            f"seq {tseq} (line {tline}); nothing may follow it", cid, False))
    res.calls = len(calls)
    res.nodes = sorted(nodes)
    res.silent_nodes = sorted({c.node for c in calls.values()} - beating)
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return res


# --- reading ------------------------------------------------------------------------------------------

def iter_lines(fh: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its end) for each non-blank line; a last line without a
    newline counts too (a file written by hand, unlike a journal a writer may be appending to)."""
    for n, line in enumerate(fh, start=1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield n, line


class LineSource:
    """A file that can be read twice (checked, then sent); standard input is kept in memory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._data: bytes | None = None
        if path == "-":
            self._data = sys.stdin.buffer.read()
        elif not Path(path).is_file():
            raise FileNotFoundError(f"no file {path}")

    @property
    def name(self) -> str:
        return "standard input" if self.path == "-" else self.path

    def lines(self) -> Iterator[tuple[int, bytes]]:
        if self._data is not None:
            yield from iter_lines(self._data.splitlines(keepends=True))
            return
        with open(self.path, "rb") as fh:
            yield from iter_lines(fh)


# --- sending ------------------------------------------------------------------------------------------

class Sink(Protocol):
    target: str

    def send(self, event: dict[str, Any], raw: bytes) -> int:
        """Publish one event; returns how many records it became (partitions, for a broadcast)."""
        ...

    def flush(self) -> None: ...
    def close(self) -> None: ...


class SendError(RuntimeError):
    pass


class JournalSink:
    """Appends to a file journal (the embedded pipeline's events.log), one event per line."""

    def __init__(self, path: Path) -> None:
        from sipledger.eventlog.journal import FileJournal

        self.target = f"file://{path}"
        self.path = path
        self._journal = FileJournal(path)

    def send(self, event: dict[str, Any], raw: bytes) -> int:
        self._journal.publish(event)
        return 1

    def flush(self) -> None:
        self._journal.flush()

    def close(self) -> None:
        self._journal.close()


class KafkaSink:
    """Keyed by call id, heartbeats and verdicts to every partition, acks=all, order kept per call."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
        from kafka import KafkaProducer
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        self.target = f"kafka://{bootstrap}/{topic}"
        self.topic = topic
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sipledger-events-send",
                                     request_timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise SendError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
        try:
            # Checked here rather than left to the producer: it would wait max_block_ms, or have a
            # broker that auto-creates topics make one with the wrong partition count. Asked a few
            # times: a topic created a moment ago may not be in the broker's metadata yet.
            deadline = time.monotonic() + TOPIC_WAIT_S
            while topic not in set(admin.list_topics()):
                if time.monotonic() > deadline:
                    raise SendError(f"no topic {topic!r} on Kafka at {bootstrap} (create it with "
                                    "`sipledger stack init`, or name another with --topic)")
                time.sleep(0.25)
        except KafkaError as exc:
            raise SendError(f"listing the topics of Kafka at {bootstrap} failed: {exc}") from None
        finally:
            admin.close()
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id="sipledger-events-send", acks="all", linger_ms=5,
            # One request in flight: a retried batch cannot overtake the next one of the same call.
            max_in_flight_requests_per_connection=1, retries=5, request_timeout_ms=int(timeout_s * 1000),
            max_block_ms=int(timeout_s * 1000), api_version=(2, 8))
        parts = self._producer.partitions_for(topic)
        self.partitions = sorted(parts) if parts else [0]
        self._futures: list[Any] = []
        self.per_partition: dict[int, int] = dict.fromkeys(self.partitions, 0)

    def send(self, event: dict[str, Any], raw: bytes) -> int:
        key = event["call_id"].encode()
        if event["type"] in BROADCAST_TYPES:
            for p in self.partitions:
                self._futures.append(self._producer.send(self.topic, key=key, value=raw, partition=p))
            return len(self.partitions)
        self._futures.append(self._producer.send(self.topic, key=key, value=raw))
        return 1

    def flush(self) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=60)
            for fut in self._futures:
                meta = fut.get(timeout=0)
                self.per_partition[meta.partition] = self.per_partition.get(meta.partition, 0) + 1
        except KafkaError as exc:
            raise SendError(f"Kafka did not acknowledge every record: {exc}") from None
        finally:
            self._futures.clear()

    def close(self) -> None:
        from sipledger.eventlog.kafka_publisher import abandon_producer

        abandon_producer(self._producer)


def open_sink(url: str, topic: str, base_dir: Path | None = None) -> Sink:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from sipledger.eventlog.publisher import file_url_path

        return JournalSink(file_url_path(url, base_dir))
    if parsed.scheme == "kafka" and parsed.netloc:
        return KafkaSink(parsed.netloc, topic)
    raise ValueError(f"--to must be kafka://host:port or file:///path, not {url!r}")


@dataclass(slots=True)
class SendResult:
    events: int = 0  # events sent
    records: int = 0  # records written (a broadcast is one per partition)
    calls: int = 0
    broadcasts: int = 0
    skipped: list[Problem] = field(default_factory=list)


# Acknowledged in batches: a progress bar that moves with what the broker confirmed, not with what
# was buffered, and a failure that says how far the file got.
FLUSH_EVERY = 5_000


def send_lines(lines: Iterable[tuple[int, bytes]], sink: Sink, check: CheckResult, skip_invalid: bool,
               progress: Callable[[int], None] | None = None) -> SendResult:
    """Publish every line of a checked file. With ``skip_invalid``, the lines with a problem are
    skipped, and so are the other events of their calls: half a call would be held by the pipeline
    forever (a gap) or never set up."""
    res = SendResult()
    bad_lines = check.bad_lines()
    bad_calls = check.bad_calls()
    if check.problems and not skip_invalid:
        raise ValueError("the file breaks the contract; check it with `sipledger events validate`")
    why = {p.line: p for p in check.problems if p.line is not None}
    calls: set[str] = set()
    pending = 0
    n = 0
    for line, raw in lines:
        n += 1
        if line in bad_lines:
            res.skipped.append(why[line])
            continue
        event = orjson.loads(raw)
        cid = event["call_id"]
        if cid in bad_calls:
            res.skipped.append(Problem(line, None, f"skipped with its call {cid}, which has an invalid event",
                                       cid))
            continue
        raw = orjson.dumps(event)  # one compact line whatever the file's spacing
        res.records += sink.send(event, raw)
        res.events += 1
        if event["type"] in BROADCAST_TYPES:
            res.broadcasts += 1
        else:
            calls.add(cid)
        pending += 1
        if pending >= FLUSH_EVERY:
            sink.flush()
            pending = 0
            if progress:
                progress(n)
    sink.flush()
    if progress:
        progress(n)
    res.calls = len(calls)
    return res
