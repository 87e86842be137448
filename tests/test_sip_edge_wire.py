"""The SIP edge on real sockets: RFC 4475 torture messages over UDP and TCP, TCP framing, sipsak,
responses to the real source, 513, and a captured Authorization replayed (SIPp's real call)."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rfc4475 import ALL, BY_NAME, Torture
from sip_harness.b2bua_runner import RunningB2BUA
from sip_harness.fixtures import start_caller, start_carrier
from sip_harness.sipp import SippProcess
from sip_harness.wire import (
    dribble,
    invite,
    options,
    tcp_connect,
    tcp_responses,
    udp_responses,
    udp_socket,
)

pytestmark = pytest.mark.sipp

TORTURER = "127.0.0.77"


def _core(node: RunningB2BUA) -> Any:
    assert node.server is not None and node.server.core is not None
    return node.server.core


def _torture_node(b2bua: Callable[..., RunningB2BUA]) -> RunningB2BUA:
    return b2bua([9], accounts=[{"name": "acme", "ips": ["127.0.0.1", TORTURER]}],
                 sip={"tcp_message_timeout": 1.5})


def _call_id(t: Torture) -> str:
    m = re.search(rb"^(?:Call-ID|i)\s*:\s*(.*?)\r$", t.data, re.M | re.I)
    return m.group(1).decode("utf-8", "surrogateescape") if m else ""


def _check(t: Torture, got: list[int]) -> None:
    finals = [s for s in got if s >= 200]
    if not t.expect:  # a response: never answered
        assert finals == [], (t.name, got)
    else:
        assert finals and finals[0] in t.expect, (t.name, t.section, got)


def test_rfc4475_torture_messages_over_udp(b2bua: Callable[..., RunningB2BUA]) -> None:
    node = _torture_node(b2bua)
    # No Via in these messages names a port, so answers go to our address at the Via transport's
    # default port: 5060, or 5061 for bext01's TLS Via (RFC 3261 18.2.2).
    with contextlib.closing(udp_socket(TORTURER, 5060)) as sock, \
            contextlib.closing(udp_socket(TORTURER, 5061)) as tls_port:
        for t in ALL:
            sock.sendto(t.data, node.host_port)
            into = tls_port if t.name == "bext01" else sock
            got = [r.status for r in udp_responses(into, 1.5 if t.expect else 0.5,
                                                   until_final=bool(t.expect), call_id=_call_id(t) or None)]
            _check(t, got)
        # dblreq: only the REGISTER counts on UDP; the INVITE behind it got no answer of its own.
        sock.sendto(BY_NAME["dblreq"].data, node.host_port)
        answers = [r for r in udp_responses(sock, 1.0, until_final=False) if r.call_id.startswith("dblreq")]
        assert [(r.status, r.cseq.method) for r in answers] == [(405, "REGISTER")]
    core = _core(node)
    assert core.stats["internal_errors"] == 0 and core.active_calls == 0
    assert not [e for e in node.events() if e["type"] == "call.routed"]


def test_rfc4475_torture_messages_over_tcp(b2bua: Callable[..., RunningB2BUA]) -> None:
    node = _torture_node(b2bua)
    for t in ALL:
        with contextlib.closing(tcp_connect(node.host_port, TORTURER)) as conn:
            conn.sendall(t.data)
            if t.name == "clerr":
                # Content-Length promises more than comes: on a stream the rest is awaited, and the
                # connection closed at the message timeout, without the message being processed.
                answers, closed = tcp_responses(conn, 1, timeout=4.0)
                assert answers == [] and closed, t.name
                continue
            if t.name == "dblreq":
                # On a stream the INVITE behind the REGISTER is a message of its own: both answered.
                answers, _ = tcp_responses(conn, 2)
                assert [(r.status, r.cseq.method) for r in answers if r.status >= 200] == [
                    (405, "REGISTER"), (404, "INVITE")]
                continue
            expect_answer = bool(t.expect)
            answers, closed = tcp_responses(conn, 1, timeout=2.0 if expect_answer else 0.5)
            got = [r.status for r in answers]
            if not t.stream_ok:
                # No Content-Length: a stream cannot be framed (RFC 3261 18.3): 400, then closed.
                assert [s for s in got if s >= 200] == [400], (t.name, got)
                continue
            _check(t, got)
    assert _core(node).stats["internal_errors"] == 0


def _cl_variants() -> list[bytes]:
    base = options("x").decode()
    head, _, _ = base.partition("\r\n\r\n")
    lines = head.split("\r\n")
    start, fields = lines[0], [f for f in lines[1:] if not f.startswith("Content-Length")]
    out = []
    for n, (pos, form) in enumerate([(0, "Content-Length: 0"), (2, "l: 0"), (4, "content-length :\r\n  0"),
                                     (len(fields), "L:0"), (1, "Content-Length:0")]):
        f = [x.replace("z9hG4bKx", f"z9hG4bKcl{n}").replace("Call-ID: x", f"Call-ID: cl{n}") for x in fields]
        f.insert(pos, form)
        out.append(("\r\n".join([start, *f]) + "\r\n\r\n").encode())
    return out


def test_tcp_reads_content_length_anywhere_and_keeps_messages_apart(
        b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9])
    variants = _cl_variants()
    with contextlib.closing(tcp_connect(node.host_port)) as conn:
        conn.sendall(b"".join(variants))  # several messages in one segment
        answers, _ = tcp_responses(conn, len(variants))
        expected = [(200, f"cl{n}") for n in range(len(variants))]
        assert sorted((r.status, r.call_id) for r in answers) == expected
        one = options("slow", extra="X-Padding: " + "p" * 300 + "\r\n")
        dribble(conn, one, 16, 0.01)  # one message across many segments
        answers, _ = tcp_responses(conn, 1)
        assert [(r.status, r.call_id) for r in answers] == [(200, "slow")]


def test_sipsak_options_get_an_answer_over_udp_and_tcp(b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9])
    for transport in ("udp", "tcp"):
        run = subprocess.run(["sipsak", "-vv", f"--transport={transport}", "-s", f"sip:ping@{node.address}"],
                             capture_output=True, text=True, timeout=20)
        assert run.returncode == 0, (transport, run.stdout, run.stderr)
        assert "SIP/2.0 200 OK" in run.stdout, (transport, run.stdout)


def test_answers_go_to_the_real_source_never_to_a_forged_via(b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9])
    with contextlib.closing(udp_socket("127.0.0.2")) as sender:
        port = sender.getsockname()[1]
        with contextlib.closing(udp_socket("127.0.0.3", port)) as victim:
            bad = invite("forged1", via_host="127.0.0.3", via_port=port).replace(b"1 INVITE", b"1 BYE")
            bad = bad.replace(b";rport", b"")  # plain RFC 3261: the port comes from the Via
            sender.sendto(bad, node.host_port)
            answers = udp_responses(sender, 2.0)
            assert [r.status for r in answers] == [400]
            assert "received=127.0.0.2" in (answers[0].headers.get("Via") or "")
            # An answer the core gives (OPTIONS) follows the same rule, as does one to a forged rport.
            forged = options("forged2", via_host="127.0.0.3", via_port=port, rport=False)
            sender.sendto(forged.replace(b"Via: SIP/2.0/UDP 127.0.0.3", b"Via: SIP/2.0/UDP 127.0.0.3")
                          .replace(b"\r\nFrom", b";received=127.0.0.3\r\nFrom", 1), node.host_port)
            assert [r.status for r in udp_responses(sender, 2.0)] == [200]
            assert udp_responses(victim, 0.5, until_final=False) == []


def test_oversized_requests_get_513_over_udp_and_tcp(b2bua: Callable[..., RunningB2BUA]) -> None:
    node = b2bua([9], sip={"max_message_bytes": 2048})
    big = options("big", extra="X-Big: " + "b" * 3000 + "\r\n")
    with contextlib.closing(udp_socket()) as sock:
        port = sock.getsockname()[1]
        sock.sendto(options("bigu", via_port=port, extra="X-Big: " + "b" * 3000 + "\r\n"), node.host_port)
        assert [r.status for r in udp_responses(sock, 2.0)] == [513]
    with contextlib.closing(tcp_connect(node.host_port)) as conn:
        conn.sendall(big + options("after"))
        answers, closed = tcp_responses(conn, 2)
        assert [(r.status, r.call_id) for r in answers] == [(513, "big"), (200, "after")] and not closed


def _authorization(messages_log: Path) -> tuple[str, str]:
    """The Authorization header and Request-URI of the INVITE SIPp sent with credentials."""
    text = messages_log.read_text(errors="replace")
    for block in text.split("INVITE sip:")[1:]:
        m = re.search(r"^Authorization: (.+)$", block, re.M)
        if m:
            return m.group(1).strip(), "sip:" + block.split(" ", 1)[0]
    raise AssertionError("no INVITE with Authorization in the SIPp trace")


def test_a_captured_authorization_replayed_is_refused_and_reaches_no_carrier(
        tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    with start_carrier("uas_answer_wait_bye", workdir=tmp_path, timeout_s=20) as uas:
        routes = [{"prefix": "1555", "gateways": ["gw1"]}, {"prefix": "1900", "gateways": ["gw1"]}]
        node = b2bua([uas.local_port], routes=routes,
                     accounts=[{"name": "roamer", "username": "roam", "password": "s3cret"}])
        with start_caller("uac_auth", node.address, workdir=tmp_path, service="15551230000", pause_ms=300,
                          auth_user="roam", auth_password="s3cret", timeout_s=20) as caller:
            real = caller.wait()
            log = caller.message_file
        gw = uas.wait(10)
    assert real.ok and gw.ok, real.describe() + gw.describe()
    node.wait_terminated()
    captured, uri = _authorization(log)
    assert uri.startswith("sip:15551230000@")
    host, port = node.host_port
    # Replayed with a new Call-ID: from another address and from the caller's own, to the same number
    # and to a premium one.
    for n, (src, callee) in enumerate([("127.0.0.2", "15551230000"), ("127.0.0.2", "19005550100"),
                                       ("127.0.0.1", "15551230000"), ("127.0.0.1", "19005550100")]):
        with contextlib.closing(udp_socket(src)) as sock:
            sport = sock.getsockname()[1]
            req = invite(f"replay{n}", callee=callee, host=host, port=port, via_host=src, via_port=sport,
                         authorization=captured, user="roam")
            sock.sendto(req, node.host_port)
            finals = [r.status for r in udp_responses(sock, 2.0) if r.status >= 200]
            assert finals and finals[0] in (400, 401), (src, callee, finals)
    events = node.events()
    assert [e["type"] for e in events].count("call.routed") == 1  # the real call, nothing after it
    assert _core(node).stats["calls"] == 1
    assert len(gw.requests("INVITE", "received")) == 1
    assert _core(node).admission.digest.replays == 1  # same source, same number: the nc was used


def test_a_tcp_carrier_whose_content_length_comes_first_is_understood(
        tmp_path: Path, b2bua: Callable[..., RunningB2BUA]) -> None:
    # The stream framer reads responses too: a carrier writing "l:" first must not be lost.
    uas = SippProcess("uas_answer_cl_first", workdir=tmp_path / "carrier", transport="t1", timeout_s=20)
    uas.start()
    with uas:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((uas.local_ip, uas.local_port))
                except OSError:
                    break
            time.sleep(0.02)
        node = b2bua([uas.local_port], transport="tcp")
        with start_caller("uac_basic_bye", node.address, workdir=tmp_path, service="15551230000",
                          pause_ms=300, transport="t1", timeout_s=20) as proc:
            caller = proc.wait()
        gw = uas.wait(10)
    assert caller.ok and gw.ok, caller.describe() + gw.describe()
    events = node.wait_terminated()
    assert [e["type"] for e in events] == ["call.setup", "call.routed", "call.progress", "call.answered",
                                           "call.terminated"]
