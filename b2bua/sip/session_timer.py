"""RFC 4028 session timers: pure negotiation (UAS and UAC roles) and a per-leg deadline tracker.

This is the piece that kills zombie calls, so the tables follow the RFC literally:

* UAS (§9): 422 only for a UAC that understands it (Supported: timer); the refresher table; Require:
  timer in the 2xx whenever the UAC supports the extension.
* UAC (§7): Supported/Session-Expires/Min-SE on the INVITE, bounded 422 retries, and learning the
  refresher from the 2xx.
* Timing (§10): the refresher refreshes at SE/2 (configurable segment); the other side gives up at
  SE - min(32, SE/3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from b2bua.sip.message import (
    Headers,
    Request,
    Response,
    parse_min_se,
    parse_session_expires,
    parse_token_list,
)

Refresher = Literal["uac", "uas"]
RFC_DEFAULT_MIN_SE = 90


@dataclass(frozen=True)
class SessionTimerConfig:
    session_ttl: int = 600
    # RFC 4028 says never below 90 s; lab setups lower it to exercise expiry quickly.
    min_se: int = RFC_DEFAULT_MIN_SE
    update_segment: float = 2.0
    early_hangup: float = 0.0
    # Who refreshes when a timer-capable UAC leaves the choice to us. A B2BUA prefers to refresh
    # itself: it then notices a dead peer without relying on the peer's behaviour.
    preferred_refresher: Refresher = "uas"
    max_422_retries: int = 2
    # §7.2: with no Session-Expires in the 2xx the UAC may still run the timer as refresher.
    refresh_without_peer_support: bool = True


DEFAULT_CONFIG = SessionTimerConfig()


def _headers_of(message: Request | Response | Headers) -> Headers:
    return message if isinstance(message, Headers) else message.headers


def supports_timer(message: Request | Response | Headers) -> bool:
    h = _headers_of(message)
    tokens = parse_token_list(h.get_all("Supported")) + parse_token_list(h.get_all("Require"))
    return "timer" in tokens


# ---------------------------------------------------------------------------------------------
# UAS role
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UasDecision:
    mode: Literal["timer", "no_timer", "reject_422"]
    interval: int | None = None
    refresher: Refresher | None = None
    min_se: int | None = None  # the value for the 422's Min-SE header
    response_headers: tuple[tuple[str, str], ...] = ()

    @property
    def we_refresh(self) -> bool:
        """True when this UAS has to send the refreshes."""
        return self.mode == "timer" and self.refresher == "uas"


def negotiate_uas(request: Request | Headers, config: SessionTimerConfig = DEFAULT_CONFIG) -> UasDecision:
    """Decide how to answer an INVITE/UPDATE (initial or refresh) as UAS.

    Raises ``SipSyntaxError`` for an unparsable Session-Expires/Min-SE so the caller can send 400.
    """
    h = _headers_of(request)
    uac_supports = supports_timer(h)
    se_value = h.get("Session-Expires")
    se = parse_session_expires(se_value) if se_value is not None else None
    min_se_value = h.get("Min-SE")
    request_min_se = parse_min_se(min_se_value) if min_se_value is not None else None
    floor = max(config.min_se, request_min_se or 0)

    if se is None:
        if not uac_supports:
            return UasDecision(mode="no_timer")
        # §9: the UAC supports timers but asked for none; the UAS may still request one, not below
        # the request's Min-SE. Having been given the choice we pick the refresher.
        interval = max(config.session_ttl, floor)
        refresher: Refresher = config.preferred_refresher
    else:
        if se.delta < config.min_se and uac_supports:
            return UasDecision(
                mode="reject_422",
                min_se=floor,
                response_headers=(("Min-SE", str(floor)),),
            )
        # A UAC without the extension cannot understand 422, so a too-small interval is raised to
        # our floor instead (same rule a proxy follows in §8.1).
        interval = se.delta
        if interval > config.session_ttl:
            # §9: the UAS may shorten the interval, but never below the Min-SE it was given.
            interval = config.session_ttl
        interval = max(interval, floor)
        if uac_supports:
            # parse_session_expires admits only "uac" and "uas"; the comparison narrows the type.
            refresher = ("uac" if se.refresher == "uac" else "uas") if se.refresher is not None \
                else config.preferred_refresher
        else:
            # §9 table: without UAC support the refresher is always the UAS; the "uac" row is
            # marked N/A (a proxy must not choose a UAC that cannot refresh) and we treat it the
            # same way rather than trusting a refresher that will never refresh.
            refresher = "uas"

    headers: list[tuple[str, str]] = [("Session-Expires", f"{interval};refresher={refresher}")]
    if uac_supports:
        # §9: MUST when the refresher is the UAC, SHOULD otherwise; always sending it is compliant.
        headers.append(("Require", "timer"))
    return UasDecision(mode="timer", interval=interval, refresher=refresher, response_headers=tuple(headers))


# ---------------------------------------------------------------------------------------------
# UAC role
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UacResult:
    mode: Literal["timer", "no_timer"]
    interval: int | None = None
    refresher: Refresher | None = None

    @property
    def we_refresh(self) -> bool:
        """True when this UAC has to send the refreshes."""
        return self.mode == "timer" and self.refresher == "uac"


class UacNegotiation:
    """State for one outgoing INVITE's session-timer negotiation (including its 422 retries)."""

    def __init__(self, config: SessionTimerConfig = DEFAULT_CONFIG, refresher: Refresher | None = None):
        self.config = config
        self.session_expires = max(config.session_ttl, config.min_se)
        self.min_se = config.min_se
        self.refresher = refresher
        self.retries_422 = 0

    def request_headers(self) -> list[tuple[str, str]]:
        se = str(self.session_expires)
        if self.refresher:
            se += f";refresher={self.refresher}"
        return [("Supported", "timer"), ("Session-Expires", se), ("Min-SE", str(self.min_se))]

    def apply_to(self, request: Request) -> None:
        """Put our Session-Expires/Min-SE on ``request`` (replacing old ones) and advertise timer."""
        for name in ("Session-Expires", "Min-SE"):
            request.headers.remove(name)
        for name, value in self.request_headers():
            if name == "Supported":
                if "timer" not in parse_token_list(request.headers.get_all("Supported")):
                    request.headers.add(name, value)
            else:
                request.headers.add(name, value)

    def on_422(self, response: Response) -> bool:
        """§7.4: adopt the 422's Min-SE and say whether to retry (bounded to avoid a 422 loop)."""
        if response.status != 422 or self.retries_422 >= self.config.max_422_retries:
            return False
        value = response.headers.get("Min-SE")
        if value is None:
            return False
        try:
            their_min = parse_min_se(value)
        except ValueError:
            return False
        if their_min <= self.session_expires and their_min <= self.min_se:
            return False  # retrying with the same values would only earn the same 422
        self.retries_422 += 1
        self.min_se = max(self.min_se, their_min)
        self.session_expires = max(self.session_expires, their_min)
        return True

    def on_2xx(self, response: Response) -> UacResult:
        """§7.2: learn the interval and who refreshes from the 2xx."""
        value = response.headers.get("Session-Expires")
        if value is None:
            if self.config.refresh_without_peer_support:
                return UacResult(mode="timer", interval=self.session_expires, refresher="uac")
            return UacResult(mode="no_timer")
        se = parse_session_expires(value)
        # A 2xx Session-Expires without refresher means nobody on the far side committed to
        # refreshing; we do it, since a timer nobody refreshes would tear the call down.
        refresher: Refresher = "uas" if se.refresher == "uas" else "uac"
        return UacResult(mode="timer", interval=se.delta, refresher=refresher)


# ---------------------------------------------------------------------------------------------
# Per-leg deadlines
# ---------------------------------------------------------------------------------------------

TimerEvent = Literal["refresh", "expire"]


class SessionTimer:
    """Deadlines for one leg. Pure: the adapter asks ``next_deadline`` and calls ``fire(now)``.

    When we refresh there is a refresh deadline (SE / update_segment) and an expiry guard at SE in
    case no refresh succeeds; when the peer refreshes there is only the expiry check at
    SE - min(32, SE/3) (§10). ``early_hangup`` moves either expiry earlier.
    """

    def __init__(
        self,
        interval: float,
        we_refresh: bool,
        *,
        update_segment: float = 2.0,
        early_hangup: float = 0.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("session interval must be positive")
        if update_segment <= 1:
            raise ValueError("update_segment must be > 1 so the refresh happens before expiry")
        self.interval = float(interval)
        self.we_refresh = we_refresh
        self.update_segment = update_segment
        self.early_hangup = early_hangup
        self.refresh_at: float | None = None
        self.expire_at: float | None = None
        self.stopped = False

    @classmethod
    def from_config(cls, interval: float, we_refresh: bool, config: SessionTimerConfig) -> SessionTimer:
        return cls(
            interval, we_refresh, update_segment=config.update_segment, early_hangup=config.early_hangup
        )

    @property
    def active(self) -> bool:
        return not self.stopped and (self.refresh_at is not None or self.expire_at is not None)

    def _arm(self, now: float) -> float:
        se = self.interval
        if self.we_refresh:
            self.refresh_at = now + se / self.update_segment
            # Our own guard is the session's real end: if no refresh has succeeded by then the peer
            # has already given up (and our refresh transaction has timed out long before).
            self.expire_at = max(self.refresh_at, now + se - self.early_hangup)
        else:
            self.refresh_at = None
            self.expire_at = max(now, now + se - min(32.0, se / 3.0) - self.early_hangup)
        deadline = self.next_deadline
        assert deadline is not None
        return deadline

    def start(self, now: float) -> float:
        """Arm the timer; returns the first deadline."""
        self.stopped = False
        return self._arm(now)

    def refreshed(
        self, now: float, interval: float | None = None, we_refresh: bool | None = None
    ) -> float | None:
        """A refresh succeeded (we got a 2xx, or we answered the peer's refresh): re-arm.

        Returns the new deadline, or None if the timer was stopped (a late 2xx for an ended call).
        """
        if self.stopped:
            return None
        if interval is not None:
            self.interval = float(interval)
        if we_refresh is not None:
            self.we_refresh = we_refresh
        return self._arm(now)

    @property
    def next_deadline(self) -> float | None:
        if self.stopped:
            return None
        candidates = [t for t in (self.refresh_at, self.expire_at) if t is not None]
        return min(candidates) if candidates else None

    @property
    def next_event(self) -> tuple[float, TimerEvent] | None:
        if self.stopped:
            return None
        if self.refresh_at is not None and (self.expire_at is None or self.refresh_at <= self.expire_at):
            return self.refresh_at, "refresh"
        if self.expire_at is not None:
            return self.expire_at, "expire"
        return None

    def fire(self, now: float) -> TimerEvent | None:
        """Report what is due at ``now``: "refresh" (send re-INVITE/UPDATE), "expire" (send BYE), or
        None (nothing due, or stopped -- a fire after the dialog ended must do nothing)."""
        event = self.next_event
        if event is None or now < event[0]:
            return None
        if event[1] == "refresh":
            self.refresh_at = None
            return "refresh"
        self.stop()
        return "expire"

    def stop(self) -> None:
        self.stopped = True
        self.refresh_at = None
        self.expire_at = None
