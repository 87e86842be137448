"""What one step and one concurrency test measured (plain data, shared by measure and report)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepResult:
    b2bua: str
    rate: int
    calls: int
    passed: bool = False
    reason: str = ""
    uac_ok: int = 0
    uac_failed: int = 0
    uas_ok: int = 0
    uas_failed: int = 0
    messages: int = 0
    retrans: int = 0
    retrans_pct: float = 0.0
    unexpected: int = 0
    achieved_cps: float = 0.0
    setup_ms_p50: float = 0.0
    setup_ms_p99: float = 0.0
    setup_ms_max: float = 0.0
    b2bua_proc: dict[str, float] = field(default_factory=dict)
    uac_cpu_pct: float = 0.0
    uas_cpu_pct: float = 0.0
    other_load_pct: float = 0.0  # CPU the rest of the machine used meanwhile, % of one core
    cpu_ms_per_call: float = 0.0  # the B2BUA's CPU over the step / the calls of the step
    loop_stall_ms: float | None = None  # the longest event-loop stall the B2BUA saw (sipledger only)
    gc_pause_ms: float | None = None  # its longest collector pause (sipledger only)
    b2bua_udp_drops: int = 0
    sipp_udp_drops: int = 0
    attempt: int = 1
    workdir: str = ""
    profile: str = ""  # py-spy's top entries when the step was profiled (--py-spy RATE)


@dataclass
class ConcResult:
    b2bua: str
    calls: int
    rate: int
    hold_s: float
    idle_rss_mb: float = 0.0
    peak_up: int = 0
    rss_at_peak_mb: float = 0.0
    hwm_mb: float = 0.0
    b2bua_reported_active: int | None = None
    uac_ok: int = 0
    uac_failed: int = 0
    uas_ok: int = 0
    uas_failed: int = 0
    retrans: int = 0
    unexpected: int = 0
    held: bool = False
    cpu_pct: float = 0.0
    note: str = ""
