"""`sipledger calls` as a table: the call id and node are there, and a pipe gets the whole width."""

from __future__ import annotations

import time

import pytest

from sipledger.calls_view import render_calls


def test_table_names_call_and_node_and_is_not_cut_at_80_columns_when_piped(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time() * 1000)
    call = {"call_id": "0f7c3a52-6c1e-4d9a-8f24-3e6b1c9d7a15", "node": "node-2", "caller": "+15550001234",
            "callee": "+442071234567", "account": "acme-wholesale", "vendor": "carrier-a",
            "answer_ms": now - 65_000, "duration_ms": 65_000, "timer_mode": "no_timer",
            "next_deadline_ms": now + 7_135_000}
    render_calls([call])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "0f7c3a52-6c1e-4d9a-8f24-3e6b1c9d7a15" in line)
    assert "node-2" in row and "+442071234567" in row and "acme-wholesale" in row and "0:01:05" in row
    assert len(row) > 80
