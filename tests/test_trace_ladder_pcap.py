"""Call analysis without the wire: the ladder renderer (text, --full, html) and the capture round trip
(pcapng exactly, classic pcap by the messages), with the bad days of --import (not a capture, a
truncated one, a capture without SIP, dialogs of no B2BUA)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import dpkt
import pytest
from click.testing import CliRunner

from schemas.validation import validate_signalling
from sipledger.cli import main
from sipledger.trace_ladder import Ladder, render_html, render_text, retransmissions
from sipledger.trace_pcap import CaptureError, read_capture, write_capture

LOCAL = "10.0.0.1:5060"
CALLER = "192.0.2.10:5070"
GW_A = "198.51.100.20:5060"
GW_B = "198.51.100.30:5060"
SDP = "v=0\r\no=x 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def _headers(call_id: str, cseq: str, frm: str, to: str, branch: str, via_host: str, body: str | None,
             body_bytes: int, extra: str = "") -> str:
    ctype = "Content-Type: application/sdp\r\n" if body_bytes else ""
    return (f"Via: SIP/2.0/UDP {via_host};branch={branch}\r\nFrom: {frm}\r\nTo: {to}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\nContact: <sip:x@{via_host}>\r\nMax-Forwards: 70\r\n"
            f"{extra}{ctype}"
            f"Content-Length: {body_bytes}")


class RecordBuilder:
    """A failed-over call as the B2BUA would record it: carrier A answers 503, carrier B (over TCP)
    answers 200 and retransmits it; the caller hangs up."""

    def __init__(self, bodies: bool) -> None:
        self.bodies = bodies
        self.entries: list[dict[str, Any]] = []
        self.ms = 0

    def _ts(self) -> str:
        self.ms += 7
        return f"2026-12-05T10:00:{self.ms // 1000:02d}.{self.ms % 1000:03d}Z"

    def sip(self, leg: str, direction: str, remote: str, call_id: str, first: str, cseq: str,
            branch: str, transport: str = "udp", body: str = "", extra: str = "") -> None:
        # A request's Via is its sender's; a response carries its request's.
        request = not first.startswith("SIP/2.0 ")
        via_host = remote if (direction == "in") == request else LOCAL
        frm, to = "<sip:1000@example.com>;tag=a", "<sip:15551230000@example.com>;tag=b"
        kept = body if self.bodies else None
        self.entries.append({
            "n": len(self.entries) + 1, "ts": self._ts(), "kind": "sip", "leg": leg, "direction": direction,
            "transport": transport, "remote": remote, "sip_call_id": call_id, "first_line": first,
            "headers": _headers(call_id, cseq, frm, to, branch, via_host, kept, len(body.encode()), extra),
            "body": kept, "body_bytes": len(body.encode())})

    def memo(self, text: str, leg: str | None = None) -> None:
        self.entries.append({"n": len(self.entries) + 1, "ts": self._ts(), "kind": "memo", "leg": leg,
                             "text": text})

    def failed_over_call(self) -> dict[str, Any]:
        c, a, b = "c1@192.0.2.10", "ga@10.0.0.1", "gb@10.0.0.1"
        self.sip("caller", "in", CALLER, c, "INVITE sip:15551230000@10.0.0.1:5060 SIP/2.0", "1 INVITE",
                 "z9hG4bKc1", body=SDP, extra="X-Note: <script>alert(1)</script>\r\n")
        self.sip("caller", "out", CALLER, c, "SIP/2.0 100 Trying", "1 INVITE", "z9hG4bKc1")
        self.memo("route: prefix '1555' for 15551230000, gateways A, B (account acme)")
        self.memo("attempt 1 of 2: gateway A at udp " + GW_A)
        self.sip("carrier", "out", GW_A, a, "INVITE sip:15551230000@198.51.100.20:5060 SIP/2.0", "1 INVITE",
                 "z9hG4bKa1", body=SDP)
        self.sip("carrier", "in", GW_A, a, "SIP/2.0 503 Service Unavailable", "1 INVITE", "z9hG4bKa1")
        self.sip("carrier", "out", GW_A, a, "ACK sip:15551230000@198.51.100.20:5060 SIP/2.0", "1 ACK",
                 "z9hG4bKa1")
        self.memo("attempt 1 to A failed: 503 Service Unavailable; failing over", "carrier")
        self.memo("attempt 2 of 2: gateway B at tcp " + GW_B)
        self.sip("carrier", "out", GW_B, b, "INVITE sip:15551230000@198.51.100.30:5060 SIP/2.0", "1 INVITE",
                 "z9hG4bKb1", transport="tcp", body=SDP)
        self.sip("carrier", "in", GW_B, b, "SIP/2.0 200 OK", "1 INVITE", "z9hG4bKb1", transport="tcp",
                 body=SDP)
        self.sip("carrier", "out", GW_B, b, "ACK sip:15551230000@198.51.100.30:5060 SIP/2.0", "1 ACK",
                 "z9hG4bKb2", transport="tcp")
        self.sip("caller", "out", CALLER, c, "SIP/2.0 200 OK", "1 INVITE", "z9hG4bKc1", body=SDP)
        self.sip("carrier", "in", GW_B, b, "SIP/2.0 200 OK", "1 INVITE", "z9hG4bKb1", transport="tcp",
                 body=SDP)  # a retransmission
        self.sip("caller", "in", CALLER, c, "ACK sip:b2bua@10.0.0.1:5060 SIP/2.0", "1 ACK", "z9hG4bKc2")
        self.sip("caller", "in", CALLER, c, "BYE sip:b2bua@10.0.0.1:5060 SIP/2.0", "2 BYE", "z9hG4bKc3")
        self.sip("caller", "out", CALLER, c, "SIP/2.0 200 OK", "2 BYE", "z9hG4bKc3")
        self.sip("carrier", "out", GW_B, b, "BYE sip:15551230000@198.51.100.30:5060 SIP/2.0", "2 BYE",
                 "z9hG4bKb3", transport="tcp")
        self.memo("call ended: normal_caller_bye by caller")
        self.sip("carrier", "in", GW_B, b, "SIP/2.0 200 OK", "2 BYE", "z9hG4bKb3", transport="tcp")
        rec = {"schema_version": 1, "call_id": "11111111-2222-3333-4444-555555555555", "node": "n1",
               "account": "acme", "selected_by": "failed_calls", "local": LOCAL,
               "start": self.entries[0]["ts"], "end": self.entries[-2]["ts"],
               "end_reason": "normal_caller_bye", "failed": True, "dropped_entries": 0,
               "entries": self.entries}
        validate_signalling(rec)
        return rec


def failed_over(bodies: bool = False) -> dict[str, Any]:
    return RecordBuilder(bodies).failed_over_call()


def rows(text: str) -> list[str]:
    """The ladder's rows (after the summary and the column heads)."""
    lines = text.splitlines()
    return [line for line in lines[lines.index("") + 2:] if line[:4].strip().isdigit()]


# -- the ladder -------------------------------------------------------------------------------------
def test_the_text_ladder_puts_each_leg_in_its_lane_with_arrows_memos_and_retransmissions() -> None:
    rec = failed_over()
    ladder = Ladder.of([rec])
    text = render_text(ladder)
    head = text.splitlines()
    assert head[0] == ("call 11111111-2222-3333-4444-555555555555 on n1 (account acme, normal_caller_bye, "
                       "failed, recorded: failed_calls)")
    assert head[1].endswith(": 15 messages, 5 memos")
    assert f"  caller  udp {CALLER}  Call-ID c1@192.0.2.10" in head
    assert f"  carrier udp {GW_A}  Call-ID ga@10.0.0.1 [1]" in head
    assert f"  carrier tcp {GW_B}  Call-ID gb@10.0.0.1 [2]" in head
    body = rows(text)
    assert len(body) == len(rec["entries"])  # one row per entry, in the order recorded
    assert [int(r.split()[0]) for r in body] == list(range(1, 21))
    caller_lane, carrier_lane = slice(20, 68), slice(67, 115)
    # The caller's INVITE goes right into the B2BUA; our 100 goes back left; carrier A's 503 comes left.
    assert body[0][caller_lane].startswith("|-- INVITE sip:15551230000@10.0.0.1:5060 … ---")
    assert body[0][caller_lane].endswith("->|")
    assert body[1][caller_lane].startswith("|<-- 100 Trying ---")
    assert body[4][carrier_lane] == "|-- INVITE sip:15551230000@198.51.100… [1] --->|"  # too long: cut
    assert body[5][carrier_lane].startswith("|<-- 503 Service Unavailable [1] ---")
    assert "200 OK (SDP) (retrans) [2]" in body[13] and "(retrans)" not in body[10]
    assert retransmissions(rec["entries"]) == {14}
    # Memos sit in the memo column, the lanes empty.
    assert body[2].split("|")[-1].strip() == \
        "route: prefix '1555' for 15551230000, gateways A, B (account acme)"
    assert body[7].endswith("attempt 1 to A failed: 503 Service Unavailable; failing over")
    assert body[7][20:115].strip(" |") == ""


def test_full_shows_every_header_and_says_when_a_body_was_not_recorded() -> None:
    without = render_text(Ladder.of([failed_over(bodies=False)]), full=True)
    assert "Call-ID: gb@10.0.0.1" in without and "X-Note: <script>alert(1)</script>" in without
    assert f"({len(SDP)} bytes of body, not recorded: trace.bodies = false)" in without
    assert f"carrier leg, to tcp {GW_B}:" in without and f"caller leg, from udp {CALLER}:" in without
    with_bodies = render_text(Ladder.of([failed_over(bodies=True)]), full=True)
    assert "m=audio 6000 RTP/AVP 0" in with_bodies and "not recorded" not in with_bodies
    # Without --full the same rows, nothing else.
    assert rows(render_text(Ladder.of([failed_over()]))) == \
        [r for r in rows(without) if not r.startswith(" " * 20)]


def test_the_html_page_folds_each_message_under_its_arrow_and_escapes_what_peers_sent() -> None:
    rec = failed_over(bodies=True)
    page = render_html([Ladder.of([rec])], "Call analysis: <x>")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "Call analysis: &lt;x&gt;" in page
    assert page.count("<details>") == 15 and page.count("<tr class=\"memo\">") == 5
    assert page.count("summary class=\"right\"") == 8  # towards the B2BUA from the caller, out to carriers


# -- capture round trip -----------------------------------------------------------------------------
@pytest.mark.parametrize("bodies", [False, True])
def test_a_pcapng_gives_back_the_very_record(tmp_path: Path, bodies: bool) -> None:
    rec = failed_over(bodies)
    path = tmp_path / "call.pcapng"
    assert write_capture([rec], path) == 15
    (ladder,) = read_capture(path)
    assert ladder.records == [rec]
    assert render_text(ladder, full=True) == render_text(Ladder.of([rec]), full=True)


def test_a_classic_pcap_gives_back_the_messages_and_joins_the_legs(tmp_path: Path) -> None:
    rec = failed_over(bodies=True)
    path = tmp_path / "call.pcap"
    assert write_capture([rec], path) == 15
    (ladder,) = read_capture(path)
    want = [e for e in rec["entries"] if e["kind"] == "sip"]
    got = ladder.messages()
    keys = ("leg", "direction", "transport", "remote", "sip_call_id", "first_line", "headers", "body", "ts")
    assert [tuple(e[k] for k in keys) for e in got] == [tuple(e[k] for k in keys) for e in want]
    assert ladder.memos() == [] and ladder.call_id == "c1@192.0.2.10"
    assert ladder.carriers == [GW_A, GW_B]
    # tshark reads the same messages, the TCP leg's too (the wire test's calls are UDP only).
    for f in (path, tmp_path / "call.pcapng"):
        write_capture([rec], f)
        out = subprocess.run(["tshark", "-r", str(f), "-Y", "sip", "-T", "fields", "-E", "separator=|",
                              "-e", "ip.proto", "-e", "sip.Request-Line", "-e", "sip.Status-Line"],
                             capture_output=True, text=True, check=True).stdout
        seen = [line.split("|", 1) for line in out.splitlines() if line.strip("|")]
        assert [(proto, "".join(rest.split("|"))) for proto, rest in seen] == \
            [("6" if e["transport"] == "tcp" else "17", e["first_line"]) for e in want]


def test_dialogs_of_no_b2bua_are_one_ladder_each(tmp_path: Path) -> None:
    """Only the caller leg and carrier A's: the INVITE to A leaves the B2BUA's address, so they join;
    alone, carrier A's dialog and the caller's (the B2BUA's address differs) are ladders of their own."""
    rec = failed_over(bodies=True)
    sip = [e for e in rec["entries"] if e["kind"] == "sip"]
    caller_only = dict(rec, entries=[e for e in sip if e["leg"] == "caller"])
    other = dict(rec, local="10.0.0.2:5060", entries=[e for e in sip if e["sip_call_id"] == "ga@10.0.0.1"])
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    write_capture([caller_only], a)
    write_capture([other], b)
    merged = tmp_path / "both.pcap"
    with open(merged, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for p in (a, b):
            with open(p, "rb") as src:
                for ts, buf in dpkt.pcap.Reader(src):
                    w.writepkt(buf, ts)
    ladders = read_capture(merged)
    assert [lad.call_id for lad in ladders] == ["c1@192.0.2.10", "ga@10.0.0.1"]
    assert [lad.roles for lad in ladders] == [("UAC", "UAS", ""), ("UAC", "UAS", "")]
    assert [len(lad.messages()) for lad in ladders] == [6, 3]


# -- the bad days of --import ----------------------------------------------------------------------
def test_what_is_no_capture_is_refused_with_the_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"INVITE sip:x SIP/2.0\r\n" * 10)
    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        read_capture(junk)
    res = CliRunner().invoke(main, ["trace", "--import", str(junk)])
    assert res.exit_code == 1 and "not a pcap or pcapng file" in res.output


def test_a_truncated_capture_gives_the_messages_before_the_cut(tmp_path: Path) -> None:
    rec = failed_over(bodies=True)
    whole = tmp_path / "call.pcap"
    write_capture([rec], whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    (ladder,) = read_capture(cut)
    first_lines = [e["first_line"] for e in rec["entries"] if e["kind"] == "sip"]
    got = [e["first_line"] for e in ladder.messages()]
    assert 0 < len(got) < len(first_lines) and got == first_lines[: len(got)]


def test_a_capture_without_sip_has_no_ladder(tmp_path: Path) -> None:
    path = tmp_path / "dns.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        udp = dpkt.udp.UDP(sport=5353, dport=53, data=b"\x12\x34\x01\x00")
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=dpkt.ip.IP_PROTO_UDP, data=udp)
        w.writepkt(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)), 1.0)
    assert read_capture(path) == []
    res = CliRunner().invoke(main, ["trace", "--import", str(path), "--json"])
    assert res.exit_code == 1 and "no signalling of any SIP dialog" in res.output
