"""Another switch's CDR CSV -> sipledger call events (``sipledger events from-cdr``).

A CDR row says when a call started, was answered and ended, and how it ended; that is enough for the
events the pipeline bills from: ``call.setup`` at the start, ``call.routed`` when the row names the
outgoing channel, ``call.answered`` at the answer, ``call.terminated`` at the end. Pure functions: rows
in, events out; the CLI only reads files and prints.

Formats (no header row, as the switches write them; a header row naming the columns is also read):

* Asterisk ``cdr_csv`` (``Master.csv``): accountcode, src, dst, dcontext, clid, channel, dstchannel,
  lastapp, lastdata, start, answer, end, duration, billsec, disposition, amaflags, then uniqueid and
  userfield when ``loguniqueid``/``loguserfield`` are on, then peeraccount, linkedid, sequence with
  ``newcdrcolumns``. Stamps are ``YYYY-MM-DD HH:MM:SS`` in the server's local time (UTC with
  ``usegmtime``); ``answer`` is empty when the call was never answered.
* FreeSWITCH ``mod_cdr_csv`` with its default ``example`` template: caller_id_name, caller_id_number,
  destination_number, context, start_stamp, answer_stamp, end_stamp, duration, billsec,
  hangup_cause, uuid, bleg_uuid, accountcode, read_codec, write_codec (local time, empty
  answer_stamp when unanswered). With a header row, ``sip_hangup_disposition`` (who sent the BYE) and
  ``sip_gateway_name`` (the carrier) are used when present.

What a CDR cannot say, and what the events say instead:

* Timers: nothing proves such a call alive after its answer (no session timer, no probe), so every
  call is ``timer_mode`` ``no_timer`` with no limit announced (``effective_limit_s`` null,
  ``limit_source`` ``none``); the pipeline applies its own ``timers.no_timer_max_duration`` and
  ``max_call_duration`` to it, as it does to a B2BUA's call, so calls longer than the cap show up
  against it (what-if report, enforcement alerts of a live pipeline).
* End reasons of answered calls: a normal end is a party's BYE (``normal_caller_bye``; FreeSWITCH's
  ``sip_hangup_disposition`` ``send_bye`` makes it ``normal_callee_bye``), which proves the call alive
  to its end. FreeSWITCH's ``MEDIA_TIMEOUT`` (RTP stopped) is ``liveness_probe_failed`` and
  ``ALLOTTED_TIMEOUT`` (a scheduled hang-up) ``max_duration_limit``: zombie ends, whose time after the
  answer is exposure (the CDR holds no later proof of life). Any other cause after an answer is
  still a party's hang-up, not a ``rejected`` call: a rejected end is a setup failure, and on an
  answered call it would count the whole call as exposure in the runaway report.
* End reasons of unanswered calls come from Asterisk's ``disposition`` or FreeSWITCH's
  ``hangup_cause`` (tables below); other causes are ``rejected`` with the SIP status FreeSWITCH
  itself maps the cause to (mod_sofia's hangup_cause_to_sip), when it maps to one.
* ``source_ip``: neither format records it; ``unknown`` unless a header row has ``network_addr``.

Identity: a call's id is ``<node>/<uniqueid>`` (Asterisk, ``.<sequence>`` added when logged) or
``<node>/<uuid>`` (FreeSWITCH); a row without one gets a digest of its own text. Event ids are
digests of (call id, seq), so converting the same file twice gives the same events, and sending
them twice changes nothing downstream (duplicate event ids are dropped). A row repeated verbatim is
one call; a different row reusing an id gets ``~2``, ``~3`` ... appended.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.domain.timeutil import format_ts
from schemas.validation import ContractError, validate_event

FORMATS: Final = ("asterisk", "freeswitch")

ASTERISK_COLUMNS: Final = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel",
                           "lastapp", "lastdata", "start", "answer", "end", "duration", "billsec",
                           "disposition", "amaflags")
ASTERISK_NEW_COLUMNS: Final = ("peeraccount", "linkedid", "sequence")  # cdr.conf newcdrcolumns=yes
FREESWITCH_COLUMNS: Final = ("caller_id_name", "caller_id_number", "destination_number", "context",
                             "start_stamp", "answer_stamp", "end_stamp", "duration", "billsec",
                             "hangup_cause", "uuid", "bleg_uuid", "accountcode", "read_codec",
                             "write_codec")
# The columns a row cannot do without (answer may be empty, but its column must be there), by format;
# a first row holding all of them is a header.
_REQUIRED: Final = {"asterisk": ("dst", "start", "answer", "end", "disposition"),
                    "freeswitch": ("destination_number", "start_stamp", "answer_stamp", "end_stamp",
                                   "hangup_cause")}

# Asterisk disposition of an unanswered call -> (end_reason, initiator, sip_status).
ASTERISK_UNANSWERED: Final[dict[str, tuple[str, str, int | None]]] = {
    "BUSY": ("busy", "callee", 486),
    "NO ANSWER": ("call_progress_timeout", "system", None),
    "FAILED": ("rejected", "callee", None),
    "CONGESTION": ("rejected", "callee", 503),
    # An ANSWERED disposition without an answer time (the dialplan answered nothing): the caller left.
    "ANSWERED": ("caller_cancel", "caller", None),
}

# FreeSWITCH hangup_cause of an unanswered call -> (end_reason, initiator); the SIP status is
# SIP_STATUS below.
FREESWITCH_UNANSWERED: Final[dict[str, tuple[str, str]]] = {
    "USER_BUSY": ("busy", "callee"),
    "NO_ANSWER": ("call_progress_timeout", "system"),
    "NO_USER_RESPONSE": ("call_progress_timeout", "system"),
    "ORIGINATOR_CANCEL": ("caller_cancel", "caller"),
    # Cleared normally before any answer: the caller hung up while it rang.
    "NORMAL_CLEARING": ("caller_cancel", "caller"),
    "NO_ROUTE_DESTINATION": ("no_route", "system"),
    "RECOVERY_ON_TIMER_EXPIRE": ("response_timeout", "system"),
}
# FreeSWITCH hangup_cause of an answered call that is not a party's BYE -> (end_reason, initiator).
FREESWITCH_ANSWERED: Final[dict[str, tuple[str, str]]] = {
    "MEDIA_TIMEOUT": ("liveness_probe_failed", "system"),
    "ALLOTTED_TIMEOUT": ("max_duration_limit", "system"),
}
# The SIP status FreeSWITCH sends for a hangup cause (mod_sofia hangup_cause_to_sip), where it has one.
SIP_STATUS: Final[dict[str, int]] = {
    "UNALLOCATED_NUMBER": 404, "NO_ROUTE_TRANSIT_NET": 404, "NO_ROUTE_DESTINATION": 404,
    "USER_NOT_REGISTERED": 404, "USER_BUSY": 486, "NO_USER_RESPONSE": 408, "NO_ANSWER": 480,
    "SUBSCRIBER_ABSENT": 480, "NORMAL_UNSPECIFIED": 480, "CALL_REJECTED": 603, "NUMBER_CHANGED": 410,
    "REDIRECTION_TO_NEW_DESTINATION": 410, "EXCHANGE_ROUTING_ERROR": 483, "DESTINATION_OUT_OF_ORDER": 502,
    "NETWORK_OUT_OF_ORDER": 502, "INVALID_NUMBER_FORMAT": 484, "INVALID_GATEWAY": 484,
    "FACILITY_REJECTED": 501, "SERVICE_NOT_IMPLEMENTED": 501, "NORMAL_CIRCUIT_CONGESTION": 503,
    "NORMAL_TEMPORARY_FAILURE": 503, "SWITCH_CONGESTION": 503, "REQUESTED_CHAN_UNAVAIL": 503,
    "BEARERCAPABILITY_NOTAVAIL": 503, "GATEWAY_DOWN": 503, "OUTGOING_CALL_BARRED": 403,
    "INCOMING_CALL_BARRED": 403, "BEARERCAPABILITY_NOTAUTH": 403, "BEARERCAPABILITY_NOTIMPL": 488,
    "INCOMPATIBLE_DESTINATION": 488, "RECOVERY_ON_TIMER_EXPIRE": 504, "ORIGINATOR_CANCEL": 487,
    "BUSY_EVERYWHERE": 600, "DECLINE": 603, "DOES_NOT_EXIST_ANYWHERE": 604, "NOT_ACCEPTABLE": 606,
}
_INITIATOR_OF_BYE: Final = {"normal_caller_bye": "caller", "normal_callee_bye": "callee"}
# "SIP/carrier-a-0000001b", "PJSIP/carrier-a-00000012", "IAX2/peer-1234": technology, peer, instance.
_CHANNEL = re.compile(r"^(?P<tech>[A-Za-z0-9_]+)/(?P<peer>.+)-[0-9A-Fa-f]+(?:;\d)?$")
# Channels that are not a carrier: Asterisk's Local/ channels loop back into the dialplan.
_NOT_A_CARRIER: Final = frozenset({"Local", "Bridge", "Recorder", "Announcer", "Message"})
_FILE_KIND: Final = {"asterisk": "an Asterisk cdr_csv file", "freeswitch": "a FreeSWITCH mod_cdr_csv file"}
SCHEMA_VERSION: Final = 1
UNKNOWN_IP: Final = "unknown"


class CdrError(ValueError):
    """A row that cannot become a call; ``line`` is where it starts in the file."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Options:
    fmt: str
    node: str
    tz: str = "UTC"
    account_from: str = "accountcode"
    default_account: str = "unknown"

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.tz!r} (an IANA name such as UTC or Europe/Berlin)") \
                from None


@dataclass(frozen=True, slots=True)
class Call:
    """One CDR row, read: what the events are built from."""

    line: int
    ident: str
    caller: str
    callee: str
    account: str
    source_ip: str
    start_ms: int
    answer_ms: int | None
    end_ms: int
    vendor: str | None
    gateway: str | None
    reason: str
    initiator: str
    sip_status: int | None
    detail: str


@dataclass(slots=True)
class Conversion:
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    answered: int = 0
    duplicates: int = 0  # rows repeated verbatim (one call)
    errors: list[CdrError] = field(default_factory=list)


# --- reading the CSV ----------------------------------------------------------------------------------

def read_rows(lines: Iterable[str], fmt: str) -> Iterator[tuple[int, dict[str, str], str]]:
    """(line where the row starts, column -> value, the row's raw text) for each row.

    Quoted fields may hold commas, doubled quotes (``""Alice"" <100>``) and line breaks. A first row
    naming the format's columns is a header; otherwise columns are taken by position.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown CDR format {fmt!r} (one of {', '.join(FORMATS)})")
    numbered = _NumberedLines(lines)
    reader = csv.reader(numbered)
    header: list[str] | None = None
    first = True
    for row in reader:
        start = numbered.row_start
        numbered.row_start = numbered.line + 1
        if not row or all(not c.strip() for c in row):
            continue
        if first:
            first = False
            names = [c.strip().lower() for c in row]
            if set(_REQUIRED[fmt]) <= set(names):
                header = names
                continue
        raw = "\x1f".join(row)
        if header is not None:
            yield start, dict(zip(header, row, strict=False)), raw
        else:
            yield start, _positional(fmt, row), raw


class _NumberedLines:
    """Feeds csv.reader while counting physical lines, so a row's first line can be reported."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._it = iter(lines)
        self.line = 0
        self.row_start = 1

    def __iter__(self) -> _NumberedLines:
        return self

    def __next__(self) -> str:
        text = next(self._it)
        self.line += 1
        return text


def _positional(fmt: str, row: Sequence[str]) -> dict[str, str]:
    if fmt == "freeswitch":
        return dict(zip(FREESWITCH_COLUMNS, row, strict=False))
    names = list(ASTERISK_COLUMNS)
    extra = list(row[len(ASTERISK_COLUMNS):])
    tail: list[str] = []
    if len(extra) >= len(ASTERISK_NEW_COLUMNS):
        # newcdrcolumns=yes appends three columns after the optional uniqueid and userfield.
        tail = list(ASTERISK_NEW_COLUMNS)
        extra = extra[:-len(ASTERISK_NEW_COLUMNS)]
    if len(extra) == 2:
        names += ["uniqueid", "userfield"]
    elif len(extra) == 1:
        # loguniqueid or loguserfield alone: a uniqueid is "<epoch>.<counter>".
        names.append("uniqueid" if re.fullmatch(r"\d+\.\d+", extra[0].strip()) else "userfield")
    return dict(zip(names + tail, row, strict=False))


# --- one row -> one call ------------------------------------------------------------------------------

def _local_ms(stamp: str, zone: ZoneInfo, fold: int) -> int:
    dt = datetime.fromisoformat(stamp.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone, fold=fold)
    return round(dt.astimezone(UTC).timestamp() * 1000)


def _readings(value: str | None, what: str, line: int, zone: ZoneInfo) -> tuple[int, ...] | None:
    """The UTC readings of a local stamp: one, or two in the hour a DST change repeats or skips."""
    if value is None or not value.strip():
        return None
    try:
        first, second = _local_ms(value, zone, 0), _local_ms(value, zone, 1)
    except ValueError:
        raise CdrError(line, f"{what} {value.strip()!r} is not a YYYY-MM-DD HH:MM:SS time") from None
    return (first,) if first == second else (first, second)


def _seconds(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None and value.strip() else None
    except ValueError:
        return None


def _times(line: int, row: dict[str, str], cols: tuple[str, str, str], zone: ZoneInfo
           ) -> tuple[int, int | None, int]:
    """(start, answer, end) in UTC ms. Where a local stamp has two readings (the hour a DST change
    repeats), the one that agrees with the row's duration and billsec wins (else the first)."""
    starts = _readings(row.get(cols[0]), cols[0], line, zone)
    if starts is None:
        raise CdrError(line, f"no {cols[0]} time")
    answers = _readings(row.get(cols[1]), cols[1], line, zone) or (None,)
    ends = _readings(row.get(cols[2]), cols[2], line, zone)
    duration, billsec = _seconds(row.get("duration")), _seconds(row.get("billsec"))
    if ends is None:
        if duration is None:
            raise CdrError(line, f"no {cols[2]} time and no duration")
        ends = tuple(s + duration * 1000 for s in starts)

    def miss(s: int, a: int | None, e: int) -> int:
        off = abs(e - s - duration * 1000) if duration is not None else 0
        return off + (abs(e - a - billsec * 1000) if a is not None and billsec is not None else 0)

    # min() keeps the first of equals: fold 0, the earlier reading, as datetime does by default.
    start, answer, end = min(((s, a, e) for s in starts for a in answers for e in ends),
                             key=lambda t: miss(*t))
    if end < start:
        raise CdrError(line, f"{cols[2]} is before {cols[0]}")
    if answer is not None and not start <= answer <= end:
        raise CdrError(line, f"{cols[1]} is not between {cols[0]} and {cols[2]}")
    return start, answer, end


def _require(line: int, row: dict[str, str], fmt: str, callee_col: str) -> None:
    missing = [c for c in _REQUIRED[fmt] if c not in row]
    if missing:
        raise CdrError(line, f"no {missing[0]} column ({len(row)} columns): not a row of {_FILE_KIND[fmt]}")
    if not (row.get(callee_col) or "").strip():
        raise CdrError(line, f"no destination number ({callee_col})")


def _account(row: dict[str, str], opts: Options) -> str:
    if opts.account_from not in row and opts.account_from not in _known_columns(opts.fmt):
        # A usage error, not a bad row: every row would fail alike.
        raise ValueError(f"--account-from {opts.account_from!r} is not a column of this file "
                         f"(columns: {', '.join(row)})")
    return (row.get(opts.account_from) or "").strip() or opts.default_account


def _known_columns(fmt: str) -> tuple[str, ...]:
    if fmt == "asterisk":
        return (*ASTERISK_COLUMNS, "uniqueid", "userfield", *ASTERISK_NEW_COLUMNS)
    return (*FREESWITCH_COLUMNS, "sip_hangup_disposition", "sip_gateway_name", "network_addr")


def _carrier(dstchannel: str) -> tuple[str, str] | None:
    """(vendor, gateway) from an Asterisk destination channel name, if it names a carrier peer."""
    m = _CHANNEL.match(dstchannel.strip())
    if m is None or m["tech"] in _NOT_A_CARRIER:
        return None
    return m["peer"][:64], f"{m['tech']}/{m['peer']}"[:128]


def asterisk_call(line: int, row: dict[str, str], opts: Options) -> Call:
    _require(line, row, "asterisk", "dst")
    start, answer, end = _times(line, row, ("start", "answer", "end"), opts.zone())
    disposition = (row.get("disposition") or "").strip().upper()
    if answer is not None:
        reason, initiator, status = "normal_caller_bye", "caller", None
        detail = f"asterisk disposition {disposition or '(none)'}"
    elif disposition in ASTERISK_UNANSWERED:
        reason, initiator, status = ASTERISK_UNANSWERED[disposition]
        detail = f"asterisk disposition {disposition}"
    else:
        raise CdrError(line, f"unknown disposition {row.get('disposition')!r} (ANSWERED, NO ANSWER, BUSY, "
                             "FAILED, CONGESTION)")
    carrier = _carrier(row.get("dstchannel") or "")
    ident = (row.get("uniqueid") or "").strip()
    if ident and (row.get("sequence") or "").strip():
        ident = f"{ident}.{row['sequence'].strip()}"
    return Call(line, ident, (row.get("src") or "").strip(), (row.get("dst") or "").strip(),
                _account(row, opts), (row.get("network_addr") or "").strip() or UNKNOWN_IP,
                start, answer, end, carrier[0] if carrier else None, carrier[1] if carrier else None,
                reason, initiator, status, detail)


def freeswitch_call(line: int, row: dict[str, str], opts: Options) -> Call:
    _require(line, row, "freeswitch", "destination_number")
    start, answer, end = _times(line, row, ("start_stamp", "answer_stamp", "end_stamp"), opts.zone())
    cause = (row.get("hangup_cause") or "").strip().upper()
    if not cause:
        raise CdrError(line, "no hangup_cause")
    status = SIP_STATUS.get(cause)
    detail = f"freeswitch hangup_cause {cause}"
    if answer is not None:
        if cause in FREESWITCH_ANSWERED:
            reason, initiator = FREESWITCH_ANSWERED[cause]
        else:
            # send_bye: FreeSWITCH sent the BYE to the caller, so the far side hung up.
            who_sent = (row.get("sip_hangup_disposition") or "").strip()
            reason = "normal_callee_bye" if who_sent == "send_bye" else "normal_caller_bye"
            initiator = _INITIATOR_OF_BYE[reason]
        status = None
    else:
        reason, initiator = FREESWITCH_UNANSWERED.get(cause, ("rejected", "callee"))
    gateway_name = (row.get("sip_gateway_name") or "").strip()
    return Call(line, (row.get("uuid") or "").strip(), (row.get("caller_id_number") or "").strip(),
                (row.get("destination_number") or "").strip(), _account(row, opts),
                (row.get("network_addr") or "").strip() or UNKNOWN_IP, start, answer, end,
                gateway_name[:64] or None, f"sofia/gateway/{gateway_name}"[:128] if gateway_name else None,
                reason, initiator, status, detail)


READERS: Final = {"asterisk": asterisk_call, "freeswitch": freeswitch_call}


# --- one call -> its events ---------------------------------------------------------------------------

def event_id(call_id: str, seq: int) -> str:
    """Deterministic, so a re-converted file sends the same ids (the pipeline drops duplicates)."""
    return hashlib.blake2b(f"{call_id}\x1f{seq}".encode(), digest_size=16).hexdigest()


def call_id_of(node: str, ident: str) -> str:
    cid = f"{node}/{ident}"
    if len(cid) > 128:
        cid = f"{node}/{hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()}"
    return cid


def call_events(call: Call, call_id: str, node: str) -> list[dict[str, Any]]:
    """The call's events, seq 1.. in order, each valid against its schema (ContractError if not)."""
    out: list[dict[str, Any]] = []

    def ev(etype: str, at_ms: int, **body: Any) -> None:
        seq = len(out) + 1
        out.append({"event_id": event_id(call_id, seq), "call_id": call_id, "seq": seq, "type": etype,
                    "ts": format_ts(at_ms), "node": node, "schema_version": SCHEMA_VERSION, **body})

    ev("call.setup", call.start_ms, caller=call.caller, callee=call.callee, account=call.account,
       source_ip=call.source_ip, timer_supported=False, requested_session_expires=None,
       requested_min_se=None, requested_refresher=None)
    if call.vendor and call.gateway:
        ev("call.routed", call.start_ms, vendor=call.vendor, gateway=call.gateway, attempt=1)
    if call.answer_ms is not None:
        # No RFC 4028 timers and no limit announced: the pipeline applies its own no-timer cap.
        ev("call.answered", call.answer_ms, timer_mode="no_timer", session_expires=None,
           refresher={"caller": None, "carrier": None}, effective_limit_s=None, limit_source="none")
    ev("call.terminated", call.end_ms, reason=call.reason, initiator=call.initiator,
       sip_status=call.sip_status, detail=call.detail[:512])
    for e in out:
        validate_event(e)
    return out


def convert(lines: Iterable[str], opts: Options) -> Conversion:
    """Every row of a CDR file into events, sorted by time (each call's events in seq order).

    Rows that cannot be converted are skipped and listed in ``errors`` with their line.
    """
    opts.zone()  # an unknown zone or a bad node name is the caller's error, not every row's
    if not 1 <= len(opts.node) <= 64 or opts.node.startswith("node:"):
        raise ValueError(f"--node must be 1-64 characters (and not start with 'node:'), not {opts.node!r}")
    read = READERS[opts.fmt]
    res = Conversion()
    seen: dict[str, str] = {}  # call id -> the raw row it came from
    taken: dict[str, int] = {}  # base call id -> how many calls use it
    for line, row, raw in read_rows(lines, opts.fmt):
        try:
            call = read(line, row, opts)
            ident = call.ident or "row-" + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()
            cid = call_id_of(opts.node, ident)
            if seen.get(cid) == raw:
                res.duplicates += 1
                continue
            if cid in seen:
                taken[cid] = taken.get(cid, 1) + 1
                cid = call_id_of(opts.node, f"{ident}~{taken[cid]}")
            events = call_events(call, cid, opts.node)
        except CdrError as exc:
            res.errors.append(exc)
            continue
        except ContractError as exc:
            res.errors.append(CdrError(line, f"field {exc.field}: {exc.reason}" if exc.field else exc.reason))
            continue
        seen[cid] = raw
        res.calls += 1
        res.answered += call.answer_ms is not None
        res.events += events
    # Time order across calls; within a call the seq breaks ties (setup and routed share a ts).
    res.events.sort(key=lambda e: (e["ts"], e["call_id"], e["seq"]))
    return res
