"""Who may call: known source IPs, digest credentials, lockout, and concurrent-call limits.

Pure decision logic: it sees the request's source and credentials and the clock, and
answers admit / challenge / refuse with the SIP status and the end reason to report.
The B2BUA is never an open relay: a source that matches no account is refused.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from b2bua.sip.digest import DigestServer
from b2bua.sip.message import parse_auth_params
from sipledger.config import Account, AdmissionConfig


@dataclass(frozen=True, slots=True)
class Admit:
    account: Account


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer 401 with these WWW-Authenticate values (``stale``: the nonce only expired)."""

    www_authenticate: list[str]


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    reason_phrase: str
    end_reason: str  # auth_failed | call_limit_exceeded
    detail: str
    account: str = ""


Decision = Admit | Challenge | Refuse


@dataclass(slots=True)
class _AuthRecord:
    failures_in_row: int = 0
    locked_until: float = 0.0
    per_call: dict[str, int] = field(default_factory=dict)


class Admission:
    def __init__(self, accounts: list[Account], cfg: AdmissionConfig, secret: bytes) -> None:
        self.cfg = cfg
        self._by_ip: dict[str, Account] = {}
        self._by_user: dict[str, Account] = {}
        for acc in accounts:
            for ip in acc.ips:
                self._by_ip[ip] = acc
            if acc.username:
                self._by_user[acc.username] = acc
        self.digest = DigestServer(secret, cfg.realm, algorithms=("MD5", "SHA-256"))
        self._auth: dict[str, _AuthRecord] = defaultdict(_AuthRecord)
        self._active: dict[str, int] = defaultdict(int)
        self._active_total = 0

    # -- identity --------------------------------------------------------------------------------
    def identify(self, source_ip: str, call_key: str, method: str, authorization: str | None,
                 now: float) -> Decision:
        """Decide for a new INVITE from ``source_ip``. ``call_key`` groups one caller's retries."""
        if authorization:
            return self._check_credentials(call_key, method, authorization, now)
        by_ip = self._by_ip.get(source_ip)
        if by_ip is not None:
            return Admit(by_ip)
        if self._by_user:
            return Challenge(self.digest.challenges(now))
        return Refuse(403, "Forbidden", "auth_failed", f"source {source_ip} is not a known caller")

    def _check_credentials(self, call_key: str, method: str, authorization: str, now: float) -> Decision:
        try:
            _, params = parse_auth_params(authorization)
        except ValueError:
            return Refuse(400, "Bad Request", "auth_failed", "unparsable Authorization header")
        username = params.get("username", "")
        acc = self._by_user.get(username)
        rec = self._auth[username]
        if acc is not None and rec.locked_until > now:
            return Refuse(403, "Account Locked", "auth_failed",
                          f"account {acc.name} locked for {rec.locked_until - now:.0f} s", acc.name)
        if acc is None:
            return self._failed(rec, call_key, now, None, f"unknown user {username!r}")
        result = self.digest.verify(authorization, method=method, password=acc.password, now=now)
        if result.ok:
            rec.failures_in_row = 0
            rec.per_call.pop(call_key, None)
            return Admit(acc)
        if result.stale:
            return Challenge(self.digest.challenges(now, stale=True))
        return self._failed(rec, call_key, now, acc, result.reason or "wrong credentials")

    def _failed(self, rec: _AuthRecord, call_key: str, now: float, acc: Account | None,
                why: str) -> Decision:
        rec.failures_in_row += 1
        tries = rec.per_call.get(call_key, 0) + 1
        rec.per_call[call_key] = tries
        name = acc.name if acc else ""
        if acc is not None and rec.failures_in_row >= self.cfg.auth_lock_failures:
            rec.locked_until = now + self.cfg.auth_lock_seconds
            rec.per_call.clear()
            return Refuse(403, "Account Locked", "auth_failed",
                          f"{why}; account {acc.name} locked after {rec.failures_in_row} failures", name)
        if tries >= self.cfg.auth_retry_limit:
            rec.per_call.pop(call_key, None)
            return Refuse(403, "Forbidden", "auth_failed", f"{why}; {tries} attempts", name)
        return Challenge(self.digest.challenges(now))

    # -- capacity --------------------------------------------------------------------------------
    def acquire(self, acc: Account) -> Refuse | None:
        """Count a call against the limits, or say why it may not start."""
        limit = self.cfg.max_concurrent_calls
        if limit and self._active_total >= limit:
            return Refuse(503, "Call Limit Exceeded", "call_limit_exceeded",
                          f"system limit of {limit} concurrent calls reached", acc.name)
        if acc.max_concurrent_calls and self._active[acc.name] >= acc.max_concurrent_calls:
            return Refuse(503, "Call Limit Exceeded", "call_limit_exceeded",
                          f"account {acc.name} limit of {acc.max_concurrent_calls} concurrent calls reached",
                          acc.name)
        self._active[acc.name] += 1
        self._active_total += 1
        return None

    def release(self, acc: Account) -> None:
        if self._active[acc.name] > 0:
            self._active[acc.name] -= 1
            self._active_total -= 1

    def active(self, account: str | None = None) -> int:
        return self._active_total if account is None else self._active[account]
