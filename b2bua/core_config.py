"""The B2BUA core's configuration (``CoreConfig``, built from the sipledger config) and the constants
of what it advertises (Allow, Supported) and reports (end reasons)."""

from __future__ import annotations

from dataclasses import dataclass, field

from b2bua.signalling_trace import TraceSettings
from b2bua.sip.message import (
    uri_host,
)
from b2bua.sip.session_timer import (
    SessionTimerConfig,
)
from b2bua.sip.transaction import (
    TimerConfig,
)
from sipledger.config import Config, ConfigError

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"


IMPLEMENTED = frozenset(m.strip() for m in ALLOW.split(","))


SUPPORTED = "timer"


END_REASONS = frozenset(
    {
        "normal_caller_bye", "normal_callee_bye", "caller_cancel", "busy", "no_route", "response_timeout",
        "call_progress_timeout", "session_expired", "session_refresh_failed", "liveness_probe_failed",
        "no_timer_limit", "max_duration_limit", "pipeline_terminate", "orphaned", "auth_failed",
        "call_limit_exceeded", "rejected", "credit_limit", "insufficient_balance",
    }
)  # fmt: skip


INITIATOR = {"caller": "caller", "carrier": "callee"}


SWEEP_KEY: tuple[str] = ("sweep",)
# The one adapter timer of the transaction layer's own queue (TimedTransactionLayer): due at its
# earliest deadline, it fires every transaction timer then due.
TX_TIMERS_KEY: tuple[str] = ("tx",)


_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def contact_host(cfg: Config) -> str:
    """The host this B2BUA writes into Via, Contact, From and Call-ID: ``sip.advertised_host``, else
    ``sip.listen_host``. ConfigError when that is a wildcard bind: peers would send in-dialog requests
    (the BYE that ends a call) to 0.0.0.0."""
    host = cfg.sip.advertised_host or cfg.sip.listen_host
    if host in _WILDCARD_HOSTS:
        key = "sip.advertised_host" if cfg.sip.advertised_host else "sip.listen_host"
        raise ConfigError(key, f"{host!r} is no address peers can send requests to: set sip.advertised_host "
                          "to the address they reach this B2BUA at")
    return uri_host(host)


@dataclass(frozen=True)
class CoreConfig:
    node_id: str = "node-1"
    local_host: str = "127.0.0.1"
    local_port: int = 5060
    timers: TimerConfig = field(default_factory=TimerConfig)
    invite_timeout: float = 32.0
    call_progress_timeout: float = 120.0
    refresh_method: str = "update"
    session: SessionTimerConfig = field(default_factory=SessionTimerConfig)
    no_timer_max_duration: int = 7200
    max_call_duration: int = 0
    liveness_probe_interval: int = 0
    # Safety net: how often stuck calls are looked for, and how long ended calls stay known for
    # late retransmissions (a late 2xx after a CANCEL still gets its ACK and BYE).
    sweep_interval: float = 10.0
    # Call analysis: which calls' signalling is recorded (b2bua/signalling_trace.py); off by default.
    trace: TraceSettings = field(default_factory=TraceSettings)

    @property
    def linger(self) -> float:
        return self.timers.timeout + 5.0

    @classmethod
    def from_config(cls, cfg: Config, local_port: int | None = None) -> CoreConfig:
        t = cfg.timers
        segment = float(t.session_update_segment)
        return cls(
            node_id=cfg.node.id,
            local_host=contact_host(cfg),
            local_port=cfg.sip.listen_port if local_port is None else local_port,
            timers=TimerConfig.from_resend_interval_ms(cfg.sip.resend_interval_ms),
            invite_timeout=cfg.sip.invite_timeout,
            call_progress_timeout=cfg.sip.call_progress_timeout,
            refresh_method=cfg.sip.refresh_method,
            session=SessionTimerConfig(
                session_ttl=t.session_ttl,
                min_se=t.min_se,
                # A segment of 1 would put the refresh at the expiry itself; the SessionTimer refuses it.
                update_segment=segment if segment > 1 else 2.0,
                early_hangup=float(t.session_timeout_early_hangup),
                # A carrier whose 2xx says nothing about timers is not refreshed (many reject UPDATE);
                # liveness probes cover such legs instead.
                refresh_without_peer_support=False,
            ),
            no_timer_max_duration=t.no_timer_max_duration,
            max_call_duration=t.max_call_duration,
            liveness_probe_interval=t.liveness_probe_interval,
            trace=TraceSettings.from_config(cfg),
        )
