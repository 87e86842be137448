"""The bench's py-spy report (bench/cps/pyspy.py): own time per function from py-spy's raw output.

The lines below are the shapes py-spy 0.4 writes with ``--format raw`` (taken from a profile of the
B2BUA under SIPp load): frames with and without line numbers, frozen modules, generated code, and a
function on top of the stack at several lines."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))  # after the project: never shadows it

from cps.pyspy import format_top, top_own

RAW = """\
_run_module_as_main (<frozen runpy>:198);run (b2bua/server.py:318);Runner.run (asyncio/runners.py:118);\
_UdpProtocol.datagram_received (b2bua/transport.py:51);_validate (b2bua/sip/parser.py:337) 3
_run_module_as_main (<frozen runpy>:198);run (b2bua/server.py:318);Runner.run (asyncio/runners.py:118) 10
_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118);\
Transports.send (b2bua/transport.py:400) 7
_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118);\
Transports.send (b2bua/transport.py:402) 5
_run_module_as_main (<frozen runpy>:198);B2BUAServer.perform (b2bua/server.py:140);\
__create_fn__.<locals>.__init__ (<string>) 2
this line is not a stack
"""


def test_own_time_is_the_top_frame_with_line_numbers_folded(tmp_path: Path) -> None:
    raw = tmp_path / "pyspy.raw"
    raw.write_text(RAW)
    total, rows = top_own(raw, top=10)
    assert total == 27
    assert rows == [
        ("Transports.send (b2bua/transport.py)", 12),
        ("Runner.run (asyncio/runners.py)", 10),
        ("_validate (b2bua/sip/parser.py)", 3),
        ("__create_fn__.<locals>.__init__ (<string>)", 2),
    ]
    text = format_top(raw, top=2)
    assert "(27 samples), top 2 by own time" in text
    assert " 44.4%  Transports.send (b2bua/transport.py)" in text
    assert "_validate" not in text


def test_a_missing_profile_is_said_not_raised(tmp_path: Path) -> None:
    text = format_top(tmp_path / "none.raw")
    assert text.startswith("(no py-spy profile at ") and "none.pyspy.out" in text
