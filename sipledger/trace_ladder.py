"""The ladder of `sipledger trace`: both legs side by side (caller | B2BUA | carrier) with the memos.

Input is one call's signalling records (schemas/call_signalling.json): the store's (one per node that
recorded the call, usually one) or those read back from a capture (``trace_pcap.read_capture``). Output is
a text ladder like sngrep's call flow, one line per message or memo in the order the node handled them
(``--full`` adds each message's headers and body), or a self-contained HTML page of the same.

Nothing here reads a store or a file: records in, text out.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LANE = 46  # characters between two parties' bars
ROLES = ("caller", "B2BUA", "carrier")
_COMPACT = {"v": "via", "i": "call-id", "c": "content-type", "l": "content-length"}


@dataclass
class Ladder:
    """One call's records, ordered entries and who is where."""

    records: list[dict[str, Any]]
    roles: tuple[str, str, str] = ROLES
    entries: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (record, entry)
    carriers: list[str] = field(default_factory=list)  # carrier lane remotes in order of appearance

    @classmethod
    def of(cls, records: Sequence[dict[str, Any]], roles: tuple[str, str, str] = ROLES) -> Ladder:
        recs = list(records)
        if len(recs) == 1:
            entries = [(recs[0], e) for e in sorted(recs[0]["entries"], key=lambda e: e["n"])]
        else:  # several nodes (a taken-over call): their entries by time, each node's in its own order
            entries = sorted(((r, e) for r in recs for e in r["entries"]),
                             key=lambda re_: (re_[1]["ts"], recs.index(re_[0]), re_[1]["n"]))
        carriers: list[str] = []
        for _, e in entries:
            if e["kind"] == "sip" and e["leg"] == "carrier" and e["remote"] not in carriers:
                carriers.append(e["remote"])
        return cls(recs, roles, entries, carriers)

    @property
    def call_id(self) -> str:
        return str(self.records[0]["call_id"]) if self.records else ""

    def messages(self) -> list[dict[str, Any]]:
        return [e for _, e in self.entries if e["kind"] == "sip"]

    def memos(self) -> list[dict[str, Any]]:
        return [e for _, e in self.entries if e["kind"] == "memo"]

    def legs(self) -> list[tuple[str, str, str, str]]:
        """(leg, transport, remote, SIP Call-ID) of each distinct leg, in order of appearance."""
        seen: list[tuple[str, str, str, str]] = []
        for e in self.messages():
            item = (e["leg"], e["transport"], e["remote"], e["sip_call_id"])
            if not any(s[0] == item[0] and s[3] == item[3] and s[2] == item[2] for s in seen):
                seen.append(item)
        return seen


# -- labels -----------------------------------------------------------------------------------------
def header_value(headers: str, name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive, compact forms too) in CRLF-joined headers."""
    want = name.lower()
    for line in headers.split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == want or _COMPACT.get(key) == want:
            return value.strip()
    return None


def label(e: dict[str, Any]) -> str:
    """What the arrow of a message says: the request line without the version, or the status."""
    first = e["first_line"]
    text = first[8:] if first.startswith("SIP/2.0 ") else first.removesuffix(" SIP/2.0")
    ctype = (header_value(e["headers"], "Content-Type") or "").lower()
    if e["body_bytes"] and "sdp" in ctype:
        text += " (SDP)"
    return text


def retransmissions(entries: Sequence[dict[str, Any]]) -> set[int]:
    """Serial numbers of messages that repeat an earlier one (same leg, direction, first line, CSeq and
    top Via branch): retransmissions, shown as such."""
    seen: set[tuple[Any, ...]] = set()
    out: set[int] = set()
    for e in entries:
        if e["kind"] != "sip":
            continue
        via = header_value(e["headers"], "Via") or ""
        m = re.search(r";\s*branch=([^;,\s]+)", via)
        key = (e["leg"], e["direction"], e["first_line"], header_value(e["headers"], "CSeq"),
               m.group(1) if m else via)
        if key in seen:
            out.add(e["n"])
        seen.add(key)
    return out


def _arrow(text: str, width: int, right: bool, suffix: str = "") -> str:
    room = width - 8 - len(suffix)
    text = (text if len(text) <= room else text[: room - 1] + "…") + suffix
    if right:
        body = f"-- {text} "
        return body + "-" * (width - 1 - len(body)) + ">"
    body = f"<-- {text} "
    return body + "-" * (width - len(body))


def _time(ts: str) -> str:
    return ts[11:23]  # HH:MM:SS.mmm of the UTC timestamp


def _row_parts(ladder: Ladder, rec: dict[str, Any], e: dict[str, Any], retrans: set[int],
               width: int) -> tuple[str, str, str]:
    """(caller lane, carrier lane, memo) of one entry."""
    blank = " " * width
    several = len({r["node"] for r in ladder.records}) > 1
    if e["kind"] == "memo":
        text = e["text"]
        if several:
            text = f"[{rec['node']}] {text}"
        return blank, blank, text
    text = label(e)
    suffix = " (retrans)" if e["n"] in retrans and len(ladder.records) == 1 else ""
    if e["leg"] == "carrier" and len(ladder.carriers) > 1:
        suffix += f" [{ladder.carriers.index(e['remote']) + 1}]"
    # Towards the B2BUA: a caller's message goes right, a carrier's left; and the other way round.
    if e["leg"] == "caller":
        return _arrow(text, width, e["direction"] == "in", suffix), blank, ""
    return blank, _arrow(text, width, e["direction"] == "out", suffix), ""


def summary(ladder: Ladder) -> list[str]:
    """The lines above the ladder: the call, how it ended, and who each party is."""
    lines = []
    roles = ladder.roles
    for rec in ladder.records:
        who = f"account {rec['account']}, " if rec.get("account") else ""
        how = rec.get("end_reason") or ("open" if rec.get("end") is None else "no end reason")
        failed = ", failed" if rec.get("failed") else ""
        why = f", recorded: {rec['selected_by']}" if rec.get("selected_by") else ""
        lines.append(f"call {rec['call_id']} on {rec['node']} ({who}{how}{failed}{why})")
        span = f"  {rec['start']} to {rec['end']}" if rec.get("end") else f"  from {rec['start']}"
        kept = sum(1 for e in rec["entries"] if e["kind"] == "sip")
        memos = len(rec["entries"]) - kept
        dropped = f", {rec['dropped_entries']} entries not kept" if rec.get("dropped_entries") else ""
        lines.append(f"{span}: {kept} messages, {memos} memos{dropped}")
    local = ", ".join(dict.fromkeys(r["local"] for r in ladder.records))
    lines.append(f"  {roles[1]:<8}{local}")
    for leg, transport, remote, sip_call_id in ladder.legs():
        role = roles[0] if leg == "caller" else roles[2]
        several = leg == "carrier" and len(ladder.carriers) > 1
        mark = f" [{ladder.carriers.index(remote) + 1}]" if several else ""
        lines.append(f"  {role:<8}{transport} {remote}  Call-ID {sip_call_id}{mark}")
    return lines


def render_text(ladder: Ladder, full: bool = False, width: int = LANE) -> str:
    """The ladder as text (``full``: with each message's headers and body)."""
    roles = ladder.roles
    two_lanes = any(e["leg"] == "carrier" for e in ladder.messages())
    retrans = retransmissions([e for _, e in ladder.entries])
    out = [*summary(ladder), ""]
    head = f"{'#':>4}  {'time (UTC)':<12}  " + roles[0].ljust(width + 1) + roles[1].ljust(width + 1)
    out.append((head + roles[2] + "  memo") if two_lanes else (head + "memo"))
    for rec, e in ladder.entries:
        lane1, lane2, memo = _row_parts(ladder, rec, e, retrans, width)
        row = f"{e['n']:>4}  {_time(e['ts'])}  |{lane1}|" + (f"{lane2}|" if two_lanes else "")
        out.append((row + (f"  {memo}" if memo else "")).rstrip())
        if full and e["kind"] == "sip":
            out += [f"{'':>20}{line}" for line in _full_lines(e)]
    return "\n".join(out) + "\n"


def _full_lines(e: dict[str, Any]) -> list[str]:
    arrow = "from" if e["direction"] == "in" else "to"
    lines = [f"{e['leg']} leg, {arrow} {e['transport']} {e['remote']}:", e["first_line"],
             *e["headers"].split("\r\n")]
    if e["body"]:
        lines += ["", *e["body"].rstrip("\r\n").split("\r\n")]
    elif e["body_bytes"]:
        lines += ["", f"({e['body_bytes']} bytes of body, not recorded: trace.bodies = false)"]
    return [*lines, ""]


def render_html(ladders: Sequence[Ladder], title: str) -> str:
    """One self-contained page (no scripts, no external files) with every ladder."""
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for ladder in ladders:
        parts.append(_html_ladder(ladder))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_ladder(ladder: Ladder) -> str:
    roles = ladder.roles
    two_lanes = any(e["leg"] == "carrier" for e in ladder.messages())
    retrans = retransmissions([e for _, e in ladder.entries])
    esc = html.escape
    rows = [f"<section><pre class=\"summary\">{esc(chr(10).join(summary(ladder)))}</pre>",
            "<table><thead><tr><th>#</th><th>time (UTC)</th>"
            f"<th class=\"lane\">{esc(roles[0])} &rarr; {esc(roles[1])}</th>"
            + (f"<th class=\"lane\">{esc(roles[1])} &rarr; {esc(roles[2])}</th>" if two_lanes else "")
            + "<th>memo</th></tr></thead><tbody>"]
    several = len({r["node"] for r in ladder.records}) > 1
    for rec, e in ladder.entries:
        cells = [f"<td class=\"n\">{e['n']}</td>", f"<td class=\"t\">{esc(_time(e['ts']))}</td>"]
        if e["kind"] == "memo":
            text = (f"[{rec['node']}] " if several else "") + e["text"]
            cells += ["<td></td>"] * (2 if two_lanes else 1) + [f"<td class=\"memo\">{esc(text)}</td>"]
            rows.append(f"<tr class=\"memo\">{''.join(cells)}</tr>")
            continue
        text = label(e) + (" (retrans)" if e["n"] in retrans and len(ladder.records) == 1 else "")
        if e["leg"] == "carrier" and len(ladder.carriers) > 1:
            text += f" [{ladder.carriers.index(e['remote']) + 1}]"
        right = (e["direction"] == "in") if e["leg"] == "caller" else (e["direction"] == "out")
        detail = "\n".join(_full_lines(e)).rstrip("\n")
        arrow = (f"<details><summary class=\"{'right' if right else 'left'}\">{esc(text)}</summary>"
                 f"<pre>{esc(detail)}</pre></details>")
        lane = f"<td class=\"lane\">{arrow}</td>"
        if e["leg"] == "caller":
            cells += [lane] + (["<td></td>"] if two_lanes else [])
        else:
            cells += ["<td></td>", lane]
        cells.append("<td></td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rows.append("</tbody></table></section>")
    return "\n".join(rows)


_CSS = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}"
        "th,td{padding:2px 8px;vertical-align:top;text-align:left}th{border-bottom:1px solid #999}"
        "td.lane{border-left:2px solid #555;border-right:2px solid #555;width:30%}"
        "td.n,td.t{font-family:monospace;white-space:nowrap}tr.memo td.memo{color:#7a4b00;font-style:italic}"
        "summary{cursor:pointer;font-family:monospace;border-bottom:1px solid #333;list-style:none}"
        "summary.right::after{content:' \\25B6';float:right}summary.left::before{content:'\\25C0 '}"
        "pre{font-size:85%;background:#f6f6f6;padding:4px;white-space:pre-wrap}pre.summary{background:none}")
