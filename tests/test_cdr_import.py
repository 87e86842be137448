"""Asterisk and FreeSWITCH CDR CSVs into call events (sipledger/cdr_import.py, `events from-cdr`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.domain.timeutil import parse_ts
from schemas.validation import validate_event
from sipledger.cdr_import import ASTERISK_COLUMNS, Options, convert, event_id
from sipledger.cli import main
from sipledger.events_tools import check_lines

REPO = Path(__file__).resolve().parents[1]
AST_SAMPLE = REPO / "examples" / "asterisk-Master.csv"
FS_SAMPLE = REPO / "examples" / "freeswitch-Master.csv"


def q(value: object) -> str:
    return '"' + str(value).replace('"', '""') + '"'


def ast_row(start: str, answer: str, end: str, duration: int, billsec: int, disposition: str, *,
            uniqueid: str | None = "1795593603.1", userfield: str | None = "", accountcode: str = "acme",
            dst: str = "442071234567", dstchannel: str = "SIP/carrier-a-0000001b",
            extra: tuple[str, ...] = ()) -> str:
    """A line as cdr_csv writes it: strings quoted (quotes doubled), duration and billsec bare."""
    cols = [q(accountcode), q("+15551230001"), q(dst), q("from-customers"), q('"Front Desk" <+15551230001>'),
            q("SIP/acme-pbx-0000001a"), q(dstchannel), q("Dial"), q("SIP/carrier-a/442071234567,60"),
            q(start), q(answer), q(end), str(duration), str(billsec), q(disposition), q("DOCUMENTATION")]
    if uniqueid is not None:
        cols.append(q(uniqueid))
    if userfield is not None:
        cols.append(q(userfield))
    cols += [q(x) for x in extra]
    return ",".join(cols) + "\n"


def fs_row(start: str, answer: str, end: str, duration: int, billsec: int, cause: str,
           uuid: str = "3f1c2e4a-0000-4000-8000-000000000001", account: str = "globex") -> str:
    vals = ["Front Desk", "+15551230001", "12125550143", "public", start, answer, end, duration, billsec,
            cause, uuid, "", account, "PCMA", "PCMA"]
    return ",".join(q(v) for v in vals) + "\n"


def by_type(events: list[dict]) -> dict[str, dict]:
    return {e["type"]: e for e in events}


def one_call(text: str, fmt: str, **opts: str) -> list[dict]:
    res = convert(text.splitlines(keepends=True), Options(fmt, opts.pop("node", fmt), **opts))
    assert not res.errors, res.errors
    assert res.calls == 1
    return res.events


# --- Asterisk ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("disposition", "answered", "reason", "initiator", "status"), [
    ("ANSWERED", True, "normal_caller_bye", "caller", None),
    ("BUSY", False, "busy", "callee", 486),
    ("NO ANSWER", False, "call_progress_timeout", "system", None),
    ("FAILED", False, "rejected", "callee", None),
    ("CONGESTION", False, "rejected", "callee", 503),
])
def test_asterisk_dispositions_map_to_end_reasons(disposition: str, answered: bool, reason: str,
                                                  initiator: str, status: int | None) -> None:
    answer = "2026-11-24 09:00:11" if answered else ""
    events = one_call(ast_row("2026-11-24 09:00:03", answer, "2026-11-24 09:04:52", 289,
                              281 if answered else 0, disposition), "asterisk")
    types = [e["type"] for e in events]
    assert types == (["call.setup", "call.routed", "call.answered", "call.terminated"] if answered
                     else ["call.setup", "call.routed", "call.terminated"])
    end = by_type(events)["call.terminated"]
    assert (end["reason"], end["initiator"], end["sip_status"]) == (reason, initiator, status)
    assert end["detail"] == f"asterisk disposition {disposition}"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        validate_event(e)


def test_asterisk_times_are_read_in_the_given_zone_and_the_answer_is_a_no_timer_call() -> None:
    text = ast_row("2026-11-24 09:00:03", "2026-11-24 09:00:11", "2026-11-24 11:31:18", 9075, 9067,
                   "ANSWERED")
    utc = by_type(one_call(text, "asterisk"))
    berlin = by_type(one_call(text, "asterisk", tz="Europe/Berlin"))  # UTC+1 in November
    assert utc["call.setup"]["ts"] == "2026-11-24T09:00:03.000Z"
    assert berlin["call.setup"]["ts"] == "2026-11-24T08:00:03.000Z"
    assert berlin["call.answered"]["ts"] == "2026-11-24T08:00:11.000Z"
    assert berlin["call.terminated"]["ts"] == "2026-11-24T10:31:18.000Z"
    answered = berlin["call.answered"]
    assert (answered["timer_mode"], answered["session_expires"], answered["effective_limit_s"],
            answered["limit_source"]) == ("no_timer", None, None, "none")
    assert answered["refresher"] == {"caller": None, "carrier": None}
    setup = berlin["call.setup"]
    assert (setup["caller"], setup["callee"], setup["account"], setup["timer_supported"]) == (
        "+15551230001", "442071234567", "acme", False)
    assert setup["call_id"] == "asterisk/1795593603.1"


def test_asterisk_carrier_comes_from_the_destination_channel_when_it_names_one() -> None:
    routed = by_type(one_call(ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY",
                                      dstchannel="PJSIP/carrier-b-east-00000012"), "asterisk"))["call.routed"]
    assert (routed["vendor"], routed["gateway"], routed["attempt"]) == (
        "carrier-b-east", "PJSIP/carrier-b-east", 1)
    for dstchannel in ("", "Local/2000@from-internal-00000003;1"):
        events = one_call(ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "FAILED",
                                  dstchannel=dstchannel), "asterisk")
        assert "call.routed" not in by_type(events), dstchannel


def test_asterisk_column_variants_header_row_and_quoted_commas() -> None:
    start, answer, end = "2026-11-24 09:00:03", "2026-11-24 09:00:11", "2026-11-24 09:04:52"
    # 16 columns (neither loguniqueid nor loguserfield): the id is a digest of the row.
    plain = by_type(one_call(ast_row(start, answer, end, 289, 281, "ANSWERED", uniqueid=None, userfield=None),
                             "asterisk"))
    assert plain["call.setup"]["call_id"].startswith("asterisk/row-")
    # 17: loguniqueid alone is told from loguserfield alone by the uniqueid's shape.
    only_id = one_call(ast_row(start, answer, end, 289, 281, "ANSWERED", userfield=None), "asterisk")
    assert only_id[0]["call_id"] == "asterisk/1795593603.1"
    only_user = one_call(ast_row(start, answer, end, 289, 281, "ANSWERED", uniqueid=None, userfield="vip"),
                         "asterisk")
    assert only_user[0]["call_id"].startswith("asterisk/row-")
    # 21: newcdrcolumns appends peeraccount, linkedid, sequence; the sequence tells CDRs of a channel apart.
    new = one_call(ast_row(start, answer, end, 289, 281, "ANSWERED", extra=("", "1795593603.1", "7")),
                   "asterisk")
    assert new[0]["call_id"] == "asterisk/1795593603.1.7"
    # A header row naming the columns (an export from a database) is read by name, in any order.
    names = [*ASTERISK_COLUMNS, "uniqueid", "userfield"]
    header = ",".join(reversed(names)) + "\n"
    row = ast_row(start, answer, end, 289, 281, "ANSWERED")
    values = next(csv.reader([row]))
    reordered = ",".join(q(v) for v in reversed(values)) + "\n"
    assert one_call(header + reordered, "asterisk") == one_call(row, "asterisk")
    # The caller id name holds quotes and a comma: still one column.
    assert plain["call.setup"]["caller"] == "+15551230001"


def test_asterisk_account_column_and_default_account() -> None:
    row = ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", accountcode="")
    assert by_type(one_call(row, "asterisk"))["call.setup"]["account"] == "unknown"
    def account(**opts: str) -> str:
        return by_type(one_call(row, "asterisk", **opts))["call.setup"]["account"]

    assert account(default_account="walk-in") == "walk-in"
    assert account(account_from="dcontext") == "from-customers"
    with pytest.raises(ValueError, match="--account-from 'tenant'"):
        convert([row], Options("asterisk", "asterisk", account_from="tenant"))


# --- FreeSWITCH ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cause", "answered", "reason", "initiator", "status"), [
    ("NORMAL_CLEARING", True, "normal_caller_bye", "caller", None),
    ("MEDIA_TIMEOUT", True, "liveness_probe_failed", "system", None),
    ("ALLOTTED_TIMEOUT", True, "max_duration_limit", "system", None),
    ("DESTINATION_OUT_OF_ORDER", True, "normal_caller_bye", "caller", None),
    ("NORMAL_CLEARING", False, "caller_cancel", "caller", None),
    ("ORIGINATOR_CANCEL", False, "caller_cancel", "caller", 487),
    ("USER_BUSY", False, "busy", "callee", 486),
    ("NO_ANSWER", False, "call_progress_timeout", "system", 480),
    ("NO_USER_RESPONSE", False, "call_progress_timeout", "system", 408),
    ("NO_ROUTE_DESTINATION", False, "no_route", "system", 404),
    ("RECOVERY_ON_TIMER_EXPIRE", False, "response_timeout", "system", 504),
    ("CALL_REJECTED", False, "rejected", "callee", 603),
    ("NORMAL_TEMPORARY_FAILURE", False, "rejected", "callee", 503),
    ("UNALLOCATED_NUMBER", False, "rejected", "callee", 404),
    ("INCOMPATIBLE_DESTINATION", False, "rejected", "callee", 488),
    ("SOMETHING_NEW", False, "rejected", "callee", None),
])
def test_freeswitch_hangup_causes_map_to_end_reasons(cause: str, answered: bool, reason: str, initiator: str,
                                                     status: int | None) -> None:
    answer = "2026-11-24 09:00:11" if answered else ""
    events = one_call(fs_row("2026-11-24 09:00:03", answer, "2026-11-24 09:04:52", 289,
                             281 if answered else 0, cause), "freeswitch")
    kinds = by_type(events)
    assert ("call.answered" in kinds) == answered
    assert "call.routed" not in kinds  # the default template names no gateway
    end = kinds["call.terminated"]
    assert (end["reason"], end["initiator"], end["sip_status"]) == (reason, initiator, status)
    assert end["detail"] == f"freeswitch hangup_cause {cause}"
    assert end["call_id"] == "freeswitch/3f1c2e4a-0000-4000-8000-000000000001"


def test_freeswitch_header_row_names_who_hung_up_and_the_gateway() -> None:
    header = ("caller_id_number,destination_number,start_stamp,answer_stamp,end_stamp,duration,billsec,"
              "hangup_cause,uuid,accountcode,sip_hangup_disposition,sip_gateway_name,network_addr\n")
    row = ("+15551230001,442071234567,2026-11-24 09:00:03,2026-11-24 09:00:11,2026-11-24 09:04:52,289,281,"
           "NORMAL_CLEARING,abc-1,acme,send_bye,carrier-a,198.51.100.7\n")
    kinds = by_type(one_call(header + row, "freeswitch"))
    assert (kinds["call.terminated"]["reason"], kinds["call.terminated"]["initiator"]) == (
        "normal_callee_bye", "callee")
    assert (kinds["call.routed"]["vendor"], kinds["call.routed"]["gateway"]) == (
        "carrier-a", "sofia/gateway/carrier-a")
    assert kinds["call.setup"]["source_ip"] == "198.51.100.7"


def test_the_hour_a_dst_change_repeats_is_read_by_the_row_s_duration() -> None:
    # New York, 2026-11-01: 01:00-01:59 happens twice (EDT, then EST). A call from 01:50 EDT lasting
    # 20 min ends at 01:10 EST, which the stamp alone cannot say.
    events = by_type(one_call(fs_row("2026-11-01 01:50:00", "2026-11-01 01:50:10", "2026-11-01 01:10:00",
                                     1200, 1190, "NORMAL_CLEARING"), "freeswitch", tz="America/New_York"))
    assert events["call.setup"]["ts"] == "2026-11-01T05:50:00.000Z"  # 01:50 EDT (UTC-4)
    assert events["call.answered"]["ts"] == "2026-11-01T05:50:10.000Z"
    assert events["call.terminated"]["ts"] == "2026-11-01T06:10:00.000Z"  # 01:10 EST (UTC-5)
    # The same stamps with the durations of a call within the second 01:xx hour: all EST.
    late = by_type(one_call(fs_row("2026-11-01 01:05:00", "2026-11-01 01:05:10", "2026-11-01 01:10:00", 300,
                                   290, "NORMAL_CLEARING"), "freeswitch", tz="America/New_York"))
    span = parse_ts(late["call.terminated"]["ts"]) - parse_ts(late["call.setup"]["ts"])
    assert span == 300_000


def test_rows_that_cannot_be_calls_are_named_by_line_and_the_rest_converted() -> None:
    good = ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="1.1")
    lines = [
        good,
        ast_row("yesterday", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="1.2"),
        ast_row("2026-11-24 09:00:03", "", "2026-11-24 08:00:09", 6, 0, "BUSY", uniqueid="1.3"),
        ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "EXPLODED", uniqueid="1.4"),
        ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="1.5", dst=""),
        '"acme","100","200"\n',
        ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="1.6",
                dst="9" * 200),
        ast_row("2026-11-24 09:00:03", "2026-11-24 08:59:00", "2026-11-24 09:00:09", 6, 0, "ANSWERED",
                uniqueid="1.7"),
    ]
    res = convert(lines, Options("asterisk", "pbx"))
    assert res.calls == 1
    assert [(e.line, e.reason) for e in res.errors] == [
        (2, "start 'yesterday' is not a YYYY-MM-DD HH:MM:SS time"),
        (3, "end is before start"),
        (4, "unknown disposition 'EXPLODED' (ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION)"),
        (5, "no destination number (dst)"),
        (6, "no start column (3 columns): not a row of an Asterisk cdr_csv file"),
        (7, "field callee: '" + "9" * 200 + "' is too long"),
        (8, "answer is not between start and end"),
    ]
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        convert([good], Options("asterisk", "pbx", tz="Mars/Olympus"))
    with pytest.raises(ValueError, match="--node must be 1-64 characters"):
        convert([good], Options("asterisk", "x" * 65))


def test_a_quoted_line_break_keeps_later_rows_on_their_own_line_numbers() -> None:
    first = ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="1.1",
                    userfield="note:\nsecond line")
    bad = ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "WHAT", uniqueid="1.2")
    res = convert((first + bad).splitlines(keepends=True), Options("asterisk", "pbx"))
    assert res.calls == 1 and [e.line for e in res.errors] == [3]


def test_conversion_is_deterministic_and_repeated_or_reused_ids_are_handled() -> None:
    a = ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "BUSY", uniqueid="9.9")
    b = ast_row("2026-11-24 10:00:03", "", "2026-11-24 10:00:09", 6, 0, "BUSY", uniqueid="9.9")
    res = convert([a, a, b], Options("asterisk", "pbx"))
    assert (res.calls, res.duplicates) == (2, 1)
    assert sorted({e["call_id"] for e in res.events}) == ["pbx/9.9", "pbx/9.9~2"]
    assert convert([a, a, b], Options("asterisk", "pbx")).events == res.events
    assert res.events[0]["event_id"] == event_id("pbx/9.9", 1)
    assert len({e["event_id"] for e in res.events}) == len(res.events)


@pytest.mark.parametrize(("sample", "fmt", "tz"), [(AST_SAMPLE, "asterisk", "Europe/Berlin"),
                                                   (FS_SAMPLE, "freeswitch", "America/New_York")])
def test_the_samples_convert_whole_into_a_stream_that_passes_the_contract(sample: Path, fmt: str,
                                                                          tz: str) -> None:
    with open(sample, newline="") as fh:
        res = convert(fh, Options(fmt, f"{fmt}-1", tz))
    assert not res.errors and res.calls >= 24
    assert [e["ts"] for e in res.events] == sorted(e["ts"] for e in res.events)
    check = check_lines((n, json.dumps(e).encode()) for n, e in enumerate(res.events, start=1))
    assert check.ok, [str(p) for p in check.problems]
    assert (check.calls, check.ended) == (res.calls, res.calls)
    setups = {e["call_id"]: e for e in res.events if e["type"] == "call.setup"}
    answers = {e["call_id"]: parse_ts(e["ts"]) for e in res.events if e["type"] == "call.answered"}
    ends = {e["call_id"]: parse_ts(e["ts"]) for e in res.events if e["type"] == "call.terminated"}
    long_calls = [c for c in answers if ends[c] - answers[c] > 2 * 3600 * 1000]
    assert len(long_calls) >= 2, "the samples hold calls longer than two hours"
    assert len(setups) == res.calls
    reasons = Counter(e["reason"] for e in res.events if e["type"] == "call.terminated")
    assert len(reasons) >= 4 and reasons["normal_caller_bye"] >= 10


def test_from_cdr_command_writes_json_lines_and_names_bad_rows(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "events.jsonl"
    res = runner.invoke(main, ["events", "from-cdr", "--format", "asterisk", "--tz", "Europe/Berlin",
                               "--node", "pbx-berlin", str(AST_SAMPLE), "--out", str(out)])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events and all(e["node"] == "pbx-berlin" for e in events)
    assert "converted 32 calls (22 answered) into 115 events" in res.stderr
    # Standard input to standard output; a bad row is named and makes the exit status 1.
    text = AST_SAMPLE.read_text().splitlines(keepends=True)
    text.insert(3, ast_row("2026-11-24 09:00:03", "", "2026-11-24 09:00:09", 6, 0, "LOST", uniqueid="7.7"))
    res = runner.invoke(main, ["events", "from-cdr", "--format", "asterisk", "-"], input="".join(text))
    assert res.exit_code == 1
    assert "line 4: unknown disposition 'LOST'" in res.stderr
    assert len(res.stdout.splitlines()) == 115
    res = runner.invoke(main, ["events", "from-cdr", "--format", "asterisk", "--tz", "Nowhere",
                               str(AST_SAMPLE)])
    assert res.exit_code == 1 and "unknown time zone 'Nowhere'" in res.output
