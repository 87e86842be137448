"""Who may call: known source IPs, digest credentials, lockout, and concurrent-call limits.

Pure decision logic: it sees the request's source and credentials and the clock, and
answers admit / challenge / refuse with the SIP status and the end reason to report.
The B2BUA is never an open relay: a source that matches no account is refused.

Lockout is kept per (user name, source address), so a guesser on one address cannot lock the real
user out on another, and it is kept for *every* name that was tried, existing or not, with the same
counts and answers: an attacker cannot tell existing names from missing ones by when "Account
Locked" starts. A lock ends by itself, and its failure count with it; each further lock of the same
pair doubles (up to ``auth_lock_max_seconds``) while the record is remembered.

Everything an unauthenticated sender can make us remember is bounded: nonces by
``b2bua.sip.nonce.NonceLedger``, failure records by an LRU of ``auth_max_records`` entries that
also forget records ``auth_failure_window`` seconds after their last failure or lock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

from b2bua.sip.digest import DigestServer
from b2bua.sip.message import parse_auth_params
from sipledger.config import Account, AdmissionConfig

# Longest user name kept as a record key: names are attacker-chosen and may fill a header line.
_MAX_KEY_NAME = 128
# Calls per failure record whose retries are counted (auth_retry_limit): the latest few suffice.
_MAX_CALLS_PER_RECORD = 4


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
    # A billing record (call.setup + call.terminated) is kept only for refusals of a known account
    # that an operator bills or investigates: a wrong password, a call limit. Refusals of unadmitted
    # traffic (unknown source or name, a locked pair, garbage credentials) are only counted, so a
    # flood cannot fill the event log.
    record: bool = True
    cause: str = ""  # unknown_source | unknown_user | locked | bad_credentials | call_limit


Decision = Admit | Challenge | Refuse


@dataclass(slots=True)
class _Failures:
    failures: int = 0
    locked_until: float = 0.0
    locks: int = 0
    last_at: float = 0.0
    per_call: dict[int, int] = field(default_factory=dict)  # hash of the call key -> failed answers

    def expires_at(self, window: float) -> float:
        return max(self.locked_until, self.last_at) + window


class Admission:
    def __init__(self, accounts: list[Account], cfg: AdmissionConfig, secret: bytes) -> None:
        self.cfg = cfg
        self._secret = secret
        self._by_ip: dict[str, Account] = {}
        self._by_user: dict[str, Account] = {}
        for acc in accounts:
            for ip in acc.ips:
                self._by_ip[ip] = acc
            if acc.username:
                self._by_user[acc.username] = acc
        self.digest = DigestServer(secret, cfg.realm, algorithms=tuple(cfg.digest_algorithms),
                                   nonce_ttl=float(cfg.nonce_ttl), max_tracked_nonces=cfg.max_tracked_nonces)
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._active: dict[str, int] = defaultdict(int)
        self._active_total = 0

    @property
    def failure_records(self) -> int:
        return len(self._failures)

    # -- identity --------------------------------------------------------------------------------
    def identify(self, source_ip: str, call_key: str, method: str, authorization: str | None,
                 now: float, request_uri: str | None = None) -> Decision:
        """Decide for a new INVITE from ``source_ip``. ``call_key`` groups one caller's retries;
        ``request_uri`` is what the digest ``uri`` must name (None only in tests of other parts)."""
        if authorization:
            return self._check_credentials(source_ip, call_key, method, authorization, now, request_uri)
        by_ip = self._by_ip.get(source_ip)
        if by_ip is not None:
            return Admit(by_ip)
        if self._by_user:
            return Challenge(self.digest.challenges(now, bound_to=source_ip))
        return Refuse(403, "Forbidden", "auth_failed", f"source {source_ip} is not a known caller",
                      record=False, cause="unknown_source")

    def _check_credentials(self, source_ip: str, call_key: str, method: str, authorization: str,
                           now: float, request_uri: str | None) -> Decision:
        try:
            scheme, params = parse_auth_params(authorization)
        except ValueError:
            return Refuse(400, "Bad Request", "auth_failed", "unparsable Authorization header",
                          record=False, cause="bad_credentials")
        username = params.get("username", "")
        acc = self._by_user.get(username)
        self._expire(now)
        key = (username[:_MAX_KEY_NAME], source_ip)
        rec = self._failures.get(key)
        if rec is not None and rec.locked_until:
            if rec.locked_until > now:
                return Refuse(403, "Account Locked", "auth_failed",
                              f"user {username[:64]!r} locked for {source_ip} for "
                              f"{rec.locked_until - now:.0f} s", acc.name if acc else "",
                              record=False, cause="locked")
            rec.locked_until = 0.0
            rec.failures = 0  # a lock that ended starts the count afresh
        # An unknown name is checked against a password nobody has, through the same code, so its
        # answers (and their timing) are those of a known name with a wrong password.
        password = acc.password if acc is not None else self._decoy_password(username)
        result = self.digest.verify(authorization, method=method, password=password, now=now,
                                    request_uri=request_uri, bound_to=source_ip, parsed=(scheme, params))
        if result.ok and acc is not None:
            self._failures.pop(key, None)
            return Admit(acc)
        if result.stale:
            return Challenge(self.digest.challenges(now, stale=True, bound_to=source_ip))
        if result.uri_mismatch:
            # RFC 2617 3.2.2.5: credentials for another resource (a captured header aimed at another
            # number) are a bad request, not a password guess.
            return Refuse(400, "Bad Request", "auth_failed", "digest uri is not the Request-URI",
                          record=False, cause="bad_credentials")
        if not result.checked:
            # No password was tried (a nonce not issued to this address, wrong realm, missing
            # fields): a fresh challenge, nothing counted, nothing remembered.
            return Challenge(self.digest.challenges(now, bound_to=source_ip))
        return self._failed(key, call_key, now, acc, username, result.reason or "wrong credentials")

    def _decoy_password(self, username: str) -> str:
        return hmac.new(self._secret, b"decoy\x00" + username.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()

    def _failed(self, key: tuple[str, str], call_key: str, now: float, acc: Account | None,
                username: str, why: str) -> Decision:
        rec = self._failures.get(key)
        if rec is None:
            rec = self._failures[key] = _Failures()
            while len(self._failures) > self.cfg.auth_max_records:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        rec.failures += 1
        rec.last_at = now
        call = hash(call_key)
        tries = rec.per_call.pop(call, 0) + 1
        rec.per_call[call] = tries
        while len(rec.per_call) > _MAX_CALLS_PER_RECORD:
            del rec.per_call[next(iter(rec.per_call))]
        name = acc.name if acc else ""
        who = f"user {username[:64]!r} from {key[1]}"
        if rec.failures >= self.cfg.auth_lock_failures:
            rec.locks += 1
            seconds = min(self.cfg.auth_lock_seconds * 2 ** (rec.locks - 1),
                          max(self.cfg.auth_lock_max_seconds, self.cfg.auth_lock_seconds))
            rec.locked_until = now + seconds
            rec.per_call.clear()
            return Refuse(403, "Account Locked", "auth_failed",
                          f"{why}; {who} locked for {seconds} s after {rec.failures} failures", name,
                          record=acc is not None, cause="bad_credentials" if acc else "unknown_user")
        if tries >= self.cfg.auth_retry_limit:
            rec.per_call.pop(call, None)
            return Refuse(403, "Forbidden", "auth_failed", f"{why}; {who}: {tries} attempts", name,
                          record=acc is not None, cause="bad_credentials" if acc else "unknown_user")
        return Challenge(self.digest.challenges(now, bound_to=key[1]))

    def _expire(self, now: float) -> None:
        window = float(self.cfg.auth_failure_window)
        records = self._failures
        while records:
            key, rec = next(iter(records.items()))
            if rec.expires_at(window) > now:
                return
            del records[key]

    # -- capacity --------------------------------------------------------------------------------
    def acquire(self, acc: Account) -> Refuse | None:
        """Count a call against the limits, or say why it may not start."""
        limit = self.cfg.max_concurrent_calls
        if limit and self._active_total >= limit:
            return Refuse(503, "Call Limit Exceeded", "call_limit_exceeded",
                          f"system limit of {limit} concurrent calls reached", acc.name, cause="call_limit")
        if acc.max_concurrent_calls and self._active[acc.name] >= acc.max_concurrent_calls:
            return Refuse(503, "Call Limit Exceeded", "call_limit_exceeded",
                          f"account {acc.name} limit of {acc.max_concurrent_calls} concurrent calls reached",
                          acc.name, cause="call_limit")
        self._active[acc.name] += 1
        self._active_total += 1
        return None

    def release(self, acc: Account) -> None:
        if self._active[acc.name] > 0:
            self._active[acc.name] -= 1
            self._active_total -= 1

    def active(self, account: str | None = None) -> int:
        return self._active_total if account is None else self._active[account]
