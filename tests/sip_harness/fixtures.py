"""Plain helpers for tests: start carriers, run callers, run a caller against a carrier.

No pytest fixtures are registered here (conftest.py is not touched); tests call these
functions with their own ``tmp_path`` as the working directory.

SIPp-to-SIPp (no B2BUA)::

    pair = run_pair("uac_basic_bye", "uas_answer_wait_bye", workdir=tmp_path)
    assert pair.ok, pair.describe()

Against the B2BUA (later)::

    with start_carrier("uas_answer_wait_bye", workdir=tmp_path) as carrier:
        # configure the B2BUA route to carrier.address, then
        caller = run_caller("uac_basic_bye", f"127.0.0.1:{b2bua_port}", workdir=tmp_path)
        carrier_result = carrier.wait(10)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sipp import SippProcess, SippResult


@dataclass
class PairResult:
    caller: SippResult
    carrier: SippResult

    @property
    def ok(self) -> bool:
        return self.caller.ok and self.carrier.ok

    def describe(self) -> str:
        return f"{self.caller.describe()}\n{self.carrier.describe()}"


def start_carrier(
    scenario: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    calls: int = 1,
    timeout_s: float = 30,
    **kwargs: Any,
) -> SippProcess:
    """Start a UAS scenario listening on a free loopback port; returns once the port is bound.

    Use it as a context manager (or call `.stop()`), `.address` is what to route to and
    `.wait(timeout)` collects the result once the expected calls are done.
    """
    proc = SippProcess(
        scenario,
        workdir=_subdir(workdir, name or f"carrier_{Path(scenario).stem}"),
        name=name,
        calls=calls,
        timeout_s=timeout_s,
        **kwargs,
    )
    proc.start()
    try:
        proc.wait_listening()
    except BaseException:
        proc.stop()
        raise
    return proc


def start_caller(
    scenario: str | os.PathLike[str],
    remote: str,
    *,
    workdir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    service: str = "15551230000",
    calls: int = 1,
    timeout_s: float = 30,
    **kwargs: Any,
) -> SippProcess:
    """Start a UAC scenario sending to `remote` ("127.0.0.1:5060") on a free local port."""
    proc = SippProcess(
        scenario,
        remote=remote,
        workdir=_subdir(workdir, name or f"caller_{Path(scenario).stem}"),
        name=name,
        service=service,
        calls=calls,
        timeout_s=timeout_s,
        **kwargs,
    )
    return proc.start()


def run_caller(
    scenario: str | os.PathLike[str],
    remote: str,
    *,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> SippResult:
    """Run a UAC scenario to completion (see `start_caller` for the arguments)."""
    with start_caller(scenario, remote, **kwargs) as proc:
        return proc.wait(wait_timeout)


def run_pair(
    caller_xml: str | os.PathLike[str],
    carrier_xml: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    caller: dict[str, Any] | None = None,
    carrier: dict[str, Any] | None = None,
    calls: int = 1,
    timeout_s: float = 20,
) -> PairResult:
    """Run a caller scenario directly against a carrier scenario (SIPp to SIPp, no B2BUA).

    `caller` / `carrier` are extra `SippProcess` keyword arguments for each side (keys,
    pause_ms, auth_user, ...). Both processes are always stopped.
    """
    carrier_kwargs: dict[str, Any] = {"calls": calls, "timeout_s": timeout_s, **(carrier or {})}
    caller_kwargs: dict[str, Any] = {"calls": calls, "timeout_s": timeout_s, **(caller or {})}
    with start_carrier(carrier_xml, workdir=workdir, **carrier_kwargs) as uas:
        with start_caller(caller_xml, uas.address, workdir=workdir, **caller_kwargs) as uac:
            caller_result = uac.wait()
        carrier_result = uas.wait()
    return PairResult(caller_result, carrier_result)


def _subdir(workdir: str | os.PathLike[str] | None, name: str) -> Path | None:
    if workdir is None:
        return None
    p = Path(workdir) / name
    p.mkdir(parents=True, exist_ok=True)
    return p
