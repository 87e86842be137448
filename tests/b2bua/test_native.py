"""b2bua/native.py: the compiled core is the one in use, only when it matches the sources, behaves
like the pure Python one, and does not leak."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from b2bua import native
from b2bua.sip.parser import parse_message
from b2bua.sip.serializer import build_response, serialize

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_build_is_the_sip_core_in_use() -> None:
    # deploy/install.sh builds it; the suite must exercise the code the B2BUA runs in production.
    assert native.is_compiled(), f"core not compiled: {native.STATUS} (run deploy/install.sh)"
    assert native.STATUS.startswith("compiled"), native.STATUS


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A copy of the compiled modules' sources (b2bua/ and b2bua/sip/) with a stamp as a build of
    them would write it."""
    copy = tmp_path / "b2bua"
    for p in native.source_files():
        target = copy / p.relative_to(native.PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    (copy / native.BUILD_DIR_NAME).mkdir()
    stamp = native._stamp(copy, "2.4.1")
    (copy / native.BUILD_DIR_NAME / native.STAMP).write_text(json.dumps(stamp))
    return copy


def test_a_build_of_exactly_these_sources_is_used(sources: Path) -> None:
    d = native.decide(sources, environ={})
    assert d.use and not d.warn and d.reason.startswith("compiled (mypyc 2.4.1")


def test_an_edited_source_falls_back_to_pure_python_with_a_warning(sources: Path) -> None:
    for edited in ("sip/parser.py", "relay.py"):  # the SIP core and the call core alike
        with (sources / edited).open("a") as f:
            f.write("\n# edited after the build\n")
        d = native.decide(sources, environ={})
        assert not d.use and d.warn
        assert edited in d.reason and "rebuild" in d.reason


def test_a_new_or_removed_module_is_a_changed_source(sources: Path) -> None:
    (sources / "sip" / "extra.py").write_text("X = 1\n")
    assert "sip/extra.py" in native.decide(sources, environ={}).reason
    (sources / "sip" / "extra.py").unlink()
    (sources / "sip" / "nonce.py").unlink()
    d = native.decide(sources, environ={})
    assert not d.use and "sip/nonce.py" in d.reason


def test_no_build_another_interpreter_and_the_switch(sources: Path) -> None:
    off = native.decide(sources, environ={"SIPLEDGER_NATIVE": "0"})
    assert off.reason == "pure Python (SIPLEDGER_NATIVE=0)"
    stamp_path = sources / native.BUILD_DIR_NAME / native.STAMP
    stamp = json.loads(stamp_path.read_text())
    stamp["cache_tag"] = "cpython-399"
    stamp_path.write_text(json.dumps(stamp))
    d = native.decide(sources, environ={})
    assert not d.use and d.warn and "cpython-399" in d.reason
    stamp_path.write_text("{not json")
    assert native.decide(sources, environ={}).warn
    stamp_path.unlink()
    d = native.decide(sources, environ={})
    assert not d.use and not d.warn and "no compiled build" in d.reason


def test_the_pure_python_core_passes_the_same_tests() -> None:
    """The sources stay the truth: the B2BUA's unit tests (SIP core and call core) pass on them,
    uncompiled."""
    env = {**os.environ, "SIPLEDGER_NATIVE": "0", "PYTHONPATH": str(ROOT)}
    code = "import b2bua.core, b2bua.sip.parser, b2bua.native as n; print(n.is_compiled())"
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT,
                           check=True)
    assert probe.stdout.strip() == "False"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/b2bua",
                          "--ignore", "tests/b2bua/test_native.py"],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


_INVITE = (
    b"INVITE sip:15551230000@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0;rport\r\n"
    b"From: \"1000\" <sip:1000@127.0.0.1:5070>;tag=abc\r\n"
    b"To: <sip:15551230000@127.0.0.1:5060>\r\n"
    b"Call-ID: leak-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: <sip:1000@127.0.0.1:5070;transport=udp>\r\nMax-Forwards: 70\r\n"
    b"Session-Expires: 600;refresher=uac\r\nSupported: timer\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
)


def test_the_hot_path_frees_what_it_allocates() -> None:
    """mypyc 1.18 leaked an operand of every ``bytes + bytes`` (mypyc/mypyc#1192): the path every
    datagram takes (parse, read the parsed headers, answer, serialize) must come back to where it was."""

    def one() -> None:
        msg = parse_message(_INVITE)
        assert msg is not None
        _ = (msg.top_via, msg.from_, msg.to, msg.cseq, msg.contacts)
        serialize(build_response(msg, 200, to_tag="t1", body=b"v=0\n"))

    for _ in range(200):
        one()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(20_000):
        one()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 50_000, f"{grown} bytes kept after 20,000 messages ({native.STATUS})"
