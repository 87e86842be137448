"""Call signalling as a capture file and back: `sipledger trace --export FILE` and `--import FILE`.

Export writes each recorded SIP message as one synthesized packet (Ethernet, IPv4 or IPv6, and UDP, or
TCP with sequence numbers running per direction) between the recorded addresses, at the recorded time, so
Wireshark, tshark and sngrep open it like a capture of the node's interface. ``.pcapng`` files also carry
what a capture cannot: the node's memos as packet comments (shown by Wireshark beside the packets) and,
in the section header's comment, the record's own fields and which record entry each packet is, so that
``--import`` gives back exactly the ladder it came from. Any other name gets a classic ``.pcap``.
A body that was not recorded (``trace.bodies = false``) is written as a placeholder of its recorded size
(``[sipledger: body not recorded]`` repeated), which keeps each message's Content-Length true (a TCP
reader frames messages by it) and reads back as "not recorded".

Import reads any pcap or pcapng (Ethernet with VLAN tags, Linux cooked v1 and v2, raw IP, BSD loopback;
IPv4 with fragments, IPv6; SIP over UDP and over TCP, reassembled per direction and framed by
Content-Length), groups the messages by Call-ID and, where one dialog's INVITE leaves the very address
another dialog's INVITE arrived at, for the same called number, while that one is still being set up,
joins them as the caller and carrier legs of one B2BUA call; every other dialog is a ladder of its own.
Packet parsing is dpkt's; SIP parsing is the B2BUA's own parser.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from b2bua.sip.message import Request, Response, SipSyntaxError
from b2bua.sip.parser import ParseError, parse_message

from .store.tables import ms_to_ts, ts_to_ms
from .trace_ladder import ROLES, Ladder

PLACEHOLDER = b"[sipledger: body not recorded]"
SHB_TAG = "sipledger call-signalling "
_MEMO = re.compile(r"^sipledger memo #(\d+) r(\d+) (\S+) (\S+): (.*)$", re.S)
_DLT_RAW = (dpkt.pcap.DLT_RAW, 12, 14, 101)
_LINKTYPE_IPV4, _LINKTYPE_IPV6 = 228, 229
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureError(ValueError):
    """A file that is no capture this module can read."""


# -- export -----------------------------------------------------------------------------------------
def placeholder(n: int) -> bytes:
    return (PLACEHOLDER * (n // len(PLACEHOLDER) + 1))[:n]


def payload(e: dict[str, Any]) -> bytes:
    """The message as it went over the wire (with a placeholder for a body not recorded)."""
    head = f"{e['first_line']}\r\n{e['headers']}\r\n\r\n".encode()
    if e["body"] is not None:
        return head + e["body"].encode()
    return head + placeholder(e["body_bytes"])


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        # A host name (a gateway configured by name): a stable address of TEST-NET-3 stands in for it.
        digest = sum(host.encode()) % 254 + 1
        return ipaddress.ip_address(f"203.0.113.{digest}")


def _mac(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return b"\x02\x00" + ip.packed[-4:]


class _Packets:
    """Synthesized Ethernet frames, with TCP sequence numbers kept per direction."""

    def __init__(self) -> None:
        self.seq: dict[tuple[Any, ...], int] = {}

    def frame(self, src: str, dst: str, transport: str, data: bytes) -> bytes:
        (sh, sp), (dh, dp) = split_address(src), split_address(dst)
        sip_, dip = _ip(sh), _ip(dh)
        if sip_.version != dip.version:  # one side IPv6: both as IPv6 (the IPv4 one mapped)
            sip_ = sip_ if sip_.version == 6 else ipaddress.IPv6Address(f"::ffff:{sip_}")
            dip = dip if dip.version == 6 else ipaddress.IPv6Address(f"::ffff:{dip}")
        if transport == "tcp":
            key, back = (sip_, sp, dip, dp), (dip, dp, sip_, sp)
            seq = self.seq.setdefault(key, 1000)
            ack = self.seq.setdefault(back, 1000)
            self.seq[key] = (seq + len(data)) & 0xFFFFFFFF
            l4: Any = dpkt.tcp.TCP(sport=sp, dport=dp, seq=seq, ack=ack,
                                   flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, win=65535, data=data)
            proto = dpkt.ip.IP_PROTO_TCP
        else:
            l4 = dpkt.udp.UDP(sport=sp, dport=dp, data=data)
            l4.ulen = len(l4)
            proto = dpkt.ip.IP_PROTO_UDP
        if sip_.version == 4:
            ip: Any = dpkt.ip.IP(src=sip_.packed, dst=dip.packed, p=proto, ttl=64, data=l4)
            etype = dpkt.ethernet.ETH_TYPE_IP
        else:
            ip = dpkt.ip6.IP6(src=sip_.packed, dst=dip.packed, nxt=proto, hlim=64, data=l4, plen=len(l4))
            ip.extension_hdrs = {}
            etype = dpkt.ethernet.ETH_TYPE_IP6
        eth = dpkt.ethernet.Ethernet(src=_mac(sip_), dst=_mac(dip), type=etype, data=ip)
        return bytes(eth)


def write_capture(records: Sequence[dict[str, Any]], path: Path) -> int:
    """Write ``records`` (one call) as a capture; pcapng when ``path`` ends in .pcapng. Returns packets."""
    ladder = Ladder.of(records)
    packets = _Packets()
    rows: list[tuple[float, bytes, list[str], tuple[int, int]]] = []
    memos: list[str] = []
    for rec, e in ladder.entries:
        r = ladder.records.index(rec)
        if e["kind"] == "memo":
            memos.append(f"sipledger memo #{e['n']} r{r} {e['ts']} {e['leg'] or '-'}: {e['text']}")
            continue
        src, dst = (e["remote"], rec["local"]) if e["direction"] == "in" else (rec["local"], e["remote"])
        data = packets.frame(src, dst, e["transport"], payload(e))
        rows.append((ts_to_ms(e["ts"]) / 1000.0, data, memos, (r, e["n"])))
        memos = []
    if memos and rows:  # memos after the last message ride on it
        rows[-1][2].extend(memos)
        memos = []
    with open(path, "wb") as fh:
        if path.suffix.lower() == ".pcapng":
            _write_pcapng(fh, ladder, rows, memos)
        else:
            w = dpkt.pcap.Writer(fh, snaplen=262_144, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, data, _, _ in rows:
                w.writepkt(data, ts)
    return len(rows)


def _write_pcapng(fh: BinaryIO, ladder: Ladder, rows: list[tuple[float, bytes, list[str], tuple[int, int]]],
                  memos: list[str]) -> None:
    from dpkt import pcapng

    opt = pcapng.PcapngOptionLE
    # A message without a body looks the same whether bodies were recorded ("") or not (null): say which.
    unrecorded = [[ladder.records.index(rec), e["n"]] for rec, e in ladder.entries
                  if e["kind"] == "sip" and e["body"] is None and not e["body_bytes"]]
    meta = {"records": [{k: v for k, v in rec.items() if k != "entries"} for rec in ladder.records],
            "packets": [list(p[3]) for p in rows], "memos": memos, "unrecorded": unrecorded}
    shb = pcapng.SectionHeaderBlockLE(opts=[
        opt(code=pcapng.PCAPNG_OPT_COMMENT, text=SHB_TAG + json.dumps(meta, separators=(",", ":"))),
        opt(code=pcapng.PCAPNG_OPT_SHB_USERAPPL, data=b"sipledger trace --export"),
        opt(code=pcapng.PCAPNG_OPT_ENDOFOPT)])
    idb = pcapng.InterfaceDescriptionBlockLE(snaplen=262_144, linktype=dpkt.pcap.DLT_EN10MB)
    w = pcapng.Writer(fh, shb=shb, idb=idb)
    for ts, data, comments, _ in rows:
        epb = pcapng.EnhancedPacketBlockLE(pkt_data=data)
        if comments:
            epb.opts = [*(opt(code=pcapng.PCAPNG_OPT_COMMENT, text=c[:65000]) for c in comments),
                        opt(code=pcapng.PCAPNG_OPT_ENDOFOPT)]
        w.writepkt(epb, ts)


# -- import: packets --------------------------------------------------------------------------------
@dataclass
class Segment:
    """A transport payload between two addresses."""

    ts: float
    src: str
    dst: str
    transport: str
    data: bytes
    seq: int = 0
    comments: list[str] = field(default_factory=list)


def _addr(ip: bytes, port: int) -> str:
    a = ipaddress.ip_address(ip)
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def _network(linktype: int, buf: bytes) -> Any:
    """The IP packet in a frame of ``linktype`` (None: something else)."""
    if linktype == dpkt.pcap.DLT_EN10MB:
        pkt = dpkt.ethernet.Ethernet(buf).data
    elif linktype == dpkt.pcap.DLT_LINUX_SLL:
        pkt = dpkt.sll.SLL(buf).data
    elif linktype == 276:
        pkt = dpkt.sll2.SLL2(buf).data
    elif linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        pkt = dpkt.loopback.Loopback(buf).data
    elif linktype in _DLT_RAW or linktype in (_LINKTYPE_IPV4, _LINKTYPE_IPV6):
        version = buf[0] >> 4 if buf else 0
        pkt = dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf) if version == 6 else None
    else:
        raise CaptureError(f"link type {linktype} is not supported (Ethernet, Linux cooked, raw IP, "
                           "loopback)")
    return pkt if isinstance(pkt, dpkt.ip.IP | dpkt.ip6.IP6) else None


class _Fragments:
    """IPv4 reassembly (a big SIP message over UDP arrives in fragments)."""

    def __init__(self) -> None:
        self.parts: dict[tuple[bytes, bytes, int, int], dict[int, bytes]] = {}
        self.total: dict[tuple[bytes, bytes, int, int], int] = {}

    def add(self, ip: Any) -> Any:
        more = bool(ip.mf)
        offset = ip.offset * 8
        if not more and offset == 0:
            return ip.data
        key = (ip.src, ip.dst, ip.id, ip.p)
        raw = bytes(ip.data) if not isinstance(ip.data, bytes) else ip.data
        self.parts.setdefault(key, {})[offset] = raw
        if not more:
            self.total[key] = offset + len(raw)
        total = self.total.get(key)
        parts = self.parts[key]
        if total is None or sum(len(p) for p in parts.values()) < total:
            return None
        whole = b"".join(parts[o] for o in sorted(parts))
        del self.parts[key], self.total[key]
        return dpkt.udp.UDP(whole) if ip.p == dpkt.ip.IP_PROTO_UDP else dpkt.tcp.TCP(whole)


def _frames(fh: BinaryIO) -> Iterator[tuple[float, int, bytes, list[str]]]:
    """(time, link type, frame, comments) of every packet of a pcap or pcapng file."""
    magic = fh.read(4)
    fh.seek(0)
    if magic == _PCAPNG_MAGIC:
        yield from _pcapng_frames(fh)
        return
    try:
        reader = dpkt.pcap.Reader(fh)
    except (ValueError, dpkt.dpkt.NeedData) as exc:
        raise CaptureError(f"not a pcap or pcapng file ({exc})") from None
    linktype = reader.datalink()
    for ts, buf in reader:
        yield float(ts), linktype, buf, []


def _pcapng_frames(fh: BinaryIO) -> Iterator[tuple[float, int, bytes, list[str]]]:
    """pcapng blocks read one by one (dpkt's reader takes one interface and drops comments): every
    interface's link type and time resolution, and each packet's comments. The section header's comment
    is yielded first, as a frame of link type -1."""
    from dpkt import pcapng

    le = True
    interfaces: list[tuple[int, float]] = []
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return
        btype = struct.unpack("<I", head[:4])[0]
        if btype == pcapng.PCAPNG_BT_SHB:
            bom = fh.read(4)
            le = bom == b"\x4d\x3c\x2b\x1a"
            size = struct.unpack("<I" if le else ">I", head[4:])[0]
            buf = head + bom + fh.read(size - 12)
            shb = pcapng.SectionHeaderBlockLE(buf) if le else pcapng.SectionHeaderBlock(buf)
            interfaces = []
            texts = [o.text for o in shb.opts if o.code == pcapng.PCAPNG_OPT_COMMENT]
            yield 0.0, -1, b"", texts
            continue
        btype, size = struct.unpack("<II" if le else ">II", head)
        if size < 12:
            raise CaptureError("malformed pcapng block")
        buf = head + fh.read(size - 8)
        if btype == pcapng.PCAPNG_BT_IDB:
            idb = pcapng.InterfaceDescriptionBlockLE(buf) if le else pcapng.InterfaceDescriptionBlock(buf)
            divisor = 1e6
            for o in idb.opts:
                if o.code == pcapng.PCAPNG_OPT_IF_TSRESOL and o.data:
                    v = o.data[0]
                    divisor = float((2 if v & 0x80 else 10) ** (v & 0x7F))
            interfaces.append((idb.linktype, divisor))
        elif btype == pcapng.PCAPNG_BT_EPB:
            epb = pcapng.EnhancedPacketBlockLE(buf) if le else pcapng.EnhancedPacketBlock(buf)
            linktype, divisor = interfaces[epb.iface_id] if epb.iface_id < len(interfaces) else (1, 1e6)
            ts = ((epb.ts_high << 32) | epb.ts_low) / divisor
            comments = [o.text for o in epb.opts if o.code == pcapng.PCAPNG_OPT_COMMENT]
            yield ts, linktype, epb.pkt_data, comments
        elif btype == pcapng.PCAPNG_BT_SPB and interfaces:
            length = struct.unpack("<I" if le else ">I", buf[8:12])[0]
            yield 0.0, interfaces[0][0], buf[12:12 + length], []


def segments(path: Path) -> tuple[list[Segment], list[str]]:
    """Every UDP and TCP payload of the capture, and the section header's comments."""
    out: list[Segment] = []
    header: list[str] = []
    frags = _Fragments()
    with open(path, "rb") as fh:
        for ts, linktype, buf, comments in _frames(fh):
            if linktype == -1:
                header += comments
                continue
            try:
                ip = _network(linktype, buf)
            except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, IndexError, struct.error):
                continue
            if ip is None:
                continue
            l4 = frags.add(ip) if isinstance(ip, dpkt.ip.IP) else ip.data
            if isinstance(l4, dpkt.udp.UDP):
                out.append(Segment(ts, _addr(ip.src, l4.sport), _addr(ip.dst, l4.dport), "udp",
                                   bytes(l4.data), comments=comments))
            elif isinstance(l4, dpkt.tcp.TCP) and l4.data:
                out.append(Segment(ts, _addr(ip.src, l4.sport), _addr(ip.dst, l4.dport), "tcp",
                                   bytes(l4.data), l4.seq, comments))
    return out, header


# -- import: SIP ------------------------------------------------------------------------------------
@dataclass
class Message:
    ts: float
    src: str
    dst: str
    transport: str
    raw: bytes  # the message as it was on the wire
    msg: Request | Response
    comments: list[str]
    index: int  # packet order


_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)


class _Stream:
    """One direction of a TCP connection: its bytes, cut into SIP messages by Content-Length (RFC 3261
    18.3), each kept as its raw bytes with the time of the segment its first byte came in."""

    def __init__(self, seq: int) -> None:
        self.next_seq = seq
        self.buf = b""
        self.base = 0  # stream offset of buf[0]
        self.starts: list[tuple[int, float, list[str]]] = []  # (stream offset, ts, comments) per segment
        self.broken = False

    def feed(self, seg: Segment) -> Iterator[tuple[bytes, float, list[str]]]:
        if ((seg.seq - self.next_seq) & 0xFFFFFFFF) > 0x7FFFFFFF:
            return  # a retransmitted segment: its bytes were had already
        self.starts.append((self.base + len(self.buf), seg.ts, seg.comments))
        self.buf += seg.data
        self.next_seq = (seg.seq + len(seg.data)) & 0xFFFFFFFF
        while True:
            stripped = self.buf.lstrip(b"\r\n")  # keep-alives between messages
            self.base += len(self.buf) - len(stripped)
            self.buf = stripped
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _CONTENT_LENGTH.search(self.buf[:end + 2])
            if m is None:
                self.broken = True  # not SIP over TCP (which must say Content-Length): stop reading it
                return
            total = end + 4 + int(m.group(1))
            if len(self.buf) < total:
                return
            raw, self.buf = self.buf[:total], self.buf[total:]
            first = [s for s in self.starts if s[0] <= self.base][-1]
            self.base += total
            later = [s for s in self.starts if s[0] > self.base]
            current = [s for s in self.starts if s[0] <= self.base][-1:]
            self.starts = current + later
            yield raw, first[1], first[2]


def sip_messages(segs: Sequence[Segment]) -> list[Message]:
    """The SIP messages in the payloads, in capture order (TCP reassembled per direction)."""
    out: list[Message] = []
    streams: dict[tuple[str, str], _Stream] = {}

    def add(raw: bytes, ts: float, seg: Segment, comments: list[str], i: int, stream: bool) -> None:
        try:
            msg = parse_message(raw, stream=stream)
        except ParseError:
            return
        if msg is not None:
            out.append(Message(ts, seg.src, seg.dst, seg.transport, raw.lstrip(b"\r\n"), msg, comments, i))

    for i, seg in enumerate(segs):
        if seg.transport == "udp":
            add(seg.data, seg.ts, seg, seg.comments, i, False)
            continue
        st = streams.get((seg.src, seg.dst))
        if st is None:
            st = streams[(seg.src, seg.dst)] = _Stream(seg.seq)
        if st.broken:
            continue
        for raw, ts, comments in st.feed(seg):
            add(raw, ts, seg, comments, i, True)
    return out


def _entry(m: Message, n: int, leg: str, local: str) -> dict[str, Any]:
    head, _, body = m.raw.partition(b"\r\n\r\n")
    first, _, headers = head.decode("utf-8", errors="replace").partition("\r\n")
    inbound = m.dst == local or (m.src != local and _host(m.dst) == _host(local))
    kept: str | None = body.decode("utf-8", errors="replace")
    if body and body == placeholder(len(body)):
        kept = None
    return {"n": n, "ts": ms_to_ts(round(m.ts * 1000)), "kind": "sip", "leg": leg,
            "direction": "in" if inbound else "out", "transport": m.transport,
            "remote": m.src if inbound else m.dst, "sip_call_id": m.msg.call_id or "", "first_line": first,
            "headers": headers, "body": kept, "body_bytes": len(body)}


def _host(addr: str) -> str:
    return addr.rpartition(":")[0]


@dataclass
class _Dialog:
    call_id: str
    messages: list[Message]
    invite: Message | None
    answered_at: float | None  # the final response to the first INVITE
    user: str


def _dialogs(messages: Sequence[Message]) -> list[_Dialog]:
    groups: dict[str, list[Message]] = {}
    for m in messages:
        groups.setdefault(m.msg.call_id or "", []).append(m)
    out = []
    for cid, ms in groups.items():
        invite = next((m for m in ms if isinstance(m.msg, Request) and m.msg.method == "INVITE"), None)
        final = None
        user = ""
        if invite is not None:
            try:
                user = invite.msg.parsed_uri.user or ""  # type: ignore[union-attr]
                cseq = invite.msg.cseq.num
            except SipSyntaxError:
                cseq = -1
            final = next((m.ts for m in ms if isinstance(m.msg, Response) and m.msg.status >= 200
                          and _cseq(m.msg) == (cseq, "INVITE")), None)
        out.append(_Dialog(cid, ms, invite, final, user))
    return out


def _cseq(msg: Request | Response) -> tuple[int, str]:
    try:
        c = msg.cseq
        return c.num, c.method
    except SipSyntaxError:
        return -1, ""


def correlate(dialogs: Sequence[_Dialog], window: float = 60.0) -> list[tuple[_Dialog, list[_Dialog]]]:
    """(caller leg, carrier legs) per call: a dialog whose INVITE leaves the address another dialog's INVITE
    arrived at (the same host and port; over TCP, or failing that, the same host), for the same called
    number, before that one's final answer, is that call's outgoing leg (a B2BUA's)."""
    order = sorted(dialogs, key=lambda d: d.messages[0].index)
    carriers_of: dict[str, list[_Dialog]] = {}
    taken: set[str] = set()
    for d in order:
        inv = d.invite
        if inv is None:
            continue
        exact: _Dialog | None = None
        near: _Dialog | None = None
        for caller in reversed(order):
            ci = caller.invite
            if caller is d or ci is None or caller.call_id in taken or ci.index >= inv.index:
                continue
            end = caller.answered_at if caller.answered_at is not None else ci.ts + window
            if d.user != caller.user or not ci.ts <= inv.ts <= end + 0.001:
                continue
            if inv.src == ci.dst and exact is None:
                exact = caller
            elif _host(inv.src) == _host(ci.dst) and near is None:
                near = caller
        found = exact or near
        if found is not None:
            carriers_of.setdefault(found.call_id, []).append(d)
            taken.add(d.call_id)
    return [(d, carriers_of.get(d.call_id, [])) for d in order if d.call_id not in taken]


def read_capture(path: Path) -> list[Ladder]:
    """The ladders of a capture (see the module docstring); a file sipledger exported gives back its
    records exactly."""
    segs, header = segments(path)
    messages = sip_messages(segs)
    meta = _sipledger_meta(header)
    if meta is not None and len(meta["packets"]) == len(messages):
        return [_exact(meta, messages)]
    ladders = []
    for caller, carriers in correlate(_dialogs(messages)):
        local = caller.invite.dst if caller.invite is not None else caller.messages[0].dst
        items = [(m, "caller", local) for m in caller.messages]
        for c in carriers:
            here = c.invite.src if c.invite is not None else c.messages[0].src
            items += [(m, "carrier", here) for m in c.messages]
        items.sort(key=lambda item: item[0].index)
        entries = [_entry(m, i + 1, leg, at) for i, (m, leg, at) in enumerate(items)]
        first, last = items[0][0], items[-1][0]
        rec = {"schema_version": 1, "call_id": caller.call_id, "node": f"pcap {path.name}", "account": "",
               "selected_by": "", "local": local, "start": ms_to_ts(round(first.ts * 1000)),
               "end": ms_to_ts(round(last.ts * 1000)), "end_reason": None, "failed": False,
               "dropped_entries": 0, "entries": entries}
        ladders.append(Ladder.of([rec], ROLES if carriers else ("UAC", "UAS", "")))
    return ladders


def _sipledger_meta(header: Sequence[str]) -> dict[str, Any] | None:
    for text in header:
        if text.startswith(SHB_TAG):
            try:
                meta = json.loads(text[len(SHB_TAG):])
            except ValueError:
                return None
            if isinstance(meta, dict) and {"records", "packets", "memos"} <= meta.keys():
                return meta
    return None


def _exact(meta: dict[str, Any], messages: Sequence[Message]) -> Ladder:
    """The records of a capture sipledger exported (its header says which entry each packet is)."""
    records = [dict(r, entries=[]) for r in meta["records"]]
    unrecorded = {(r, n) for r, n in meta.get("unrecorded", [])}
    for m, (r, n) in zip(messages, meta["packets"], strict=True):
        rec = records[r]
        entry = _entry(m, n, "", rec["local"])
        if (r, n) in unrecorded and entry["body"] == "":
            entry["body"] = None
        rec["entries"].append(entry)
        for c in m.comments:
            _memo(records, c)
    for c in meta["memos"]:
        _memo(records, c)
    for rec in records:
        _legs_of(rec)
        rec["entries"].sort(key=lambda e: e["n"])
    return Ladder.of(records)


def _memo(records: list[dict[str, Any]], comment: str) -> None:
    m = _MEMO.match(comment)
    if m is None:
        return
    n, r, ts, leg, text = m.groups()
    records[int(r)]["entries"].append({"n": int(n), "ts": ts, "kind": "memo",
                                       "leg": None if leg == "-" else leg, "text": text})


def _legs_of(rec: dict[str, Any]) -> None:
    """Which leg each message is: the dialog of the record's first INVITE received is the caller's."""
    sip = [e for e in rec["entries"] if e["kind"] == "sip"]
    first = next((e for e in sorted(sip, key=lambda e: e["n"])
                  if e["direction"] == "in" and e["first_line"].startswith("INVITE ")), None)
    caller_id = first["sip_call_id"] if first is not None else None
    for e in sip:
        e["leg"] = "caller" if e["sip_call_id"] == caller_id else "carrier"
