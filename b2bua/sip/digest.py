"""HTTP Digest (RFC 2617 / RFC 7616, as used by SIP per RFC 3261 22 and RFC 8760), MD5 and SHA-256.

The server side issues a nonce per challenge, bound to the time and the address the challenge went
to, and accepts each (nonce, nc) pair once (``b2bua.sip.nonce.NonceLedger``). It also checks that
the digest ``uri`` names the Request-URI (RFC 7616 3.4.6 / RFC 2617 3.2.2.5): otherwise a header
captured on a call to one number would authorize a call to any other.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass

from b2bua.sip.message import SipSyntaxError, parse_auth_params, parse_uri, quote
from b2bua.sip.nonce import NonceLedger, NonceStatus

SUPPORTED_ALGORITHMS = ("MD5", "MD5-SESS", "SHA-256", "SHA-256-SESS")


def _hash_for(algorithm: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    if base == "MD5":
        return "md5"
    if base == "SHA-256":
        return "sha256"
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def _h(algorithm: str, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.new(_hash_for(algorithm), raw).hexdigest()


def compute_ha1(
    username: str, realm: str, password: str, algorithm: str = "MD5", *, nonce: str = "", cnonce: str = ""
) -> str:
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    return ha1


def compute_response(
    *,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    algorithm: str = "MD5",
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 2617 3.2.2.1; RFC 2069 form when qop is absent)."""
    if qop == "auth-int":
        ha2 = _h(algorithm, f"{method}:{uri}:{_h(algorithm, body)}")
    else:
        ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------


def build_authorization(
    challenge: str,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
    rng: random.Random | None = None,
) -> str:
    """Answer a WWW-Authenticate / Proxy-Authenticate value with an Authorization value."""
    scheme, params = parse_auth_params(challenge)
    if scheme.lower() != "digest":
        raise ValueError(f"unsupported auth scheme {scheme!r}")
    realm = params.get("realm", "")
    nonce = params.get("nonce", "")
    algorithm = params.get("algorithm", "MD5")
    offered = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    qop = "auth" if "auth" in offered else ("auth-int" if "auth-int" in offered else None)
    nc_text = f"{nc:08x}"
    if qop and cnonce is None:
        cnonce = f"{(rng or random.SystemRandom()).getrandbits(64):016x}"
    ha1 = compute_ha1(username, realm, password, algorithm, nonce=nonce, cnonce=cnonce or "")
    response = compute_response(
        ha1=ha1,
        nonce=nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        algorithm=algorithm,
        body=body,
    )
    parts = [
        f"username={quote(username)}",
        f"realm={quote(realm)}",
        f"nonce={quote(nonce)}",
        f"uri={quote(uri)}",
        f"response={quote(response)}",
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f"cnonce={quote(cnonce or '')}", f"qop={qop}", f"nc={nc_text}"]
    if "opaque" in params:
        parts.append(f"opaque={quote(params['opaque'])}")
    return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DigestResult:
    ok: bool
    stale: bool = False
    username: str | None = None
    reason: str = ""
    replay: bool = False  # right answer, but this (nonce, nc) was accepted before
    checked: bool = False  # the response value was compared (a password was really tried)
    uri_mismatch: bool = False  # the digest uri names another resource than the Request-URI


def same_resource(digest_uri: str, request_uri: str) -> bool:
    """Whether the digest ``uri`` names the Request-URI. Identical text, or SIP URIs equal by the
    parts RFC 3261 19.1.4 compares case-insensitively (scheme, host, parameter names); user and
    password compare exactly. Anything that does not parse must be identical."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except SipSyntaxError:
        return False
    if a.opaque is not None or b.opaque is not None:
        return a.scheme == b.scheme and a.opaque == b.opaque

    def norm(params: dict[str, str | None]) -> dict[str, str | None]:
        return {k.lower(): (v.lower() if v is not None else None) for k, v in params.items()}

    return (a.scheme, a.user, a.password, a.host.lower(), a.port, norm(a.params), a.headers) == (
        b.scheme, b.user, b.password, b.host.lower(), b.port, norm(b.params), b.headers)


class DigestServer:
    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        qop: str | None = "auth",
        rng: random.Random | None = None,
        max_tracked_nonces: int = 10_000,
    ) -> None:
        if not secret:
            raise ValueError("a non-empty secret is required for nonces")
        for algorithm in algorithms:
            _hash_for(algorithm)
        self.secret = secret
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = algorithms
        self.qop = qop
        self.rng = rng if rng is not None else random.SystemRandom()
        self.nonces = NonceLedger(secret, realm, ttl=nonce_ttl, max_tracked=max_tracked_nonces, rng=self.rng)
        self.replays = 0

    def make_nonce(self, now: float, bound_to: str = "") -> str:
        return self.nonces.issue(now, bound_to)

    def nonce_status(self, nonce: str, now: float, bound_to: str = "") -> NonceStatus:
        return self.nonces.status(nonce, bound_to, now)

    def challenge(
        self, now: float, *, algorithm: str = "MD5", stale: bool = False, opaque: str | None = None,
        bound_to: str = "",
    ) -> str:
        """One WWW-Authenticate / Proxy-Authenticate value, with a nonce of its own."""
        parts = [
            f"realm={quote(self.realm)}",
            f"nonce={quote(self.make_nonce(now, bound_to))}",
            f"algorithm={algorithm}",
        ]
        if self.qop:
            parts.append(f'qop="{self.qop}"')
        if opaque is not None:
            parts.append(f"opaque={quote(opaque)}")
        if stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)

    def challenges(self, now: float, *, stale: bool = False, bound_to: str = "") -> list[str]:
        """One challenge per configured algorithm, preferred first (RFC 8760 3)."""
        return [self.challenge(now, algorithm=a, stale=stale, bound_to=bound_to) for a in self.algorithms]

    def verify(
        self,
        authorization: str,
        *,
        method: str,
        password: str,
        now: float,
        body: bytes = b"",
        expected_username: str | None = None,
        request_uri: str | None = None,
        bound_to: str = "",
        parsed: tuple[str, dict[str, str]] | None = None,
    ) -> DigestResult:
        """Check credentials. ``request_uri`` (when given) must be what the digest ``uri`` names;
        ``bound_to`` is the request's source address, which must be the one the nonce was issued to.
        A verified answer consumes its (nonce, nc) pair. ``parsed``: the header already parsed by
        ``parse_auth_params`` (the caller needed the user name first)."""
        try:
            scheme, p = parsed if parsed is not None else parse_auth_params(authorization)
        except ValueError:
            return DigestResult(False, reason="unparsable credentials")
        if scheme.lower() != "digest":
            return DigestResult(False, reason="not Digest")
        username = p.get("username")
        for needed in ("username", "realm", "nonce", "uri", "response"):
            if not p.get(needed):
                return DigestResult(False, username=username, reason=f"missing {needed}")
        if expected_username is not None and username != expected_username:
            return DigestResult(False, username=username, reason="wrong username")
        if p["realm"] != self.realm:
            return DigestResult(False, username=username, reason="wrong realm")
        algorithm = p.get("algorithm", "MD5")
        if algorithm.upper() not in SUPPORTED_ALGORITHMS or algorithm.upper().removesuffix("-SESS") not in {
            a.upper().removesuffix("-SESS") for a in self.algorithms
        }:
            return DigestResult(False, username=username, reason=f"algorithm {algorithm} not offered")
        qop = p.get("qop")
        nc_value = 0  # RFC 2069 answers (no qop) have no count: such a nonce is good for one request
        if qop is not None:
            if qop not in ("auth", "auth-int"):
                return DigestResult(False, username=username, reason=f"qop {qop} not supported")
            nc = p.get("nc", "")
            if not p.get("cnonce") or len(nc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in nc):
                return DigestResult(False, username=username, reason="qop requires cnonce and nc")
            nc_value = int(nc, 16)
        status = self.nonce_status(p["nonce"], now, bound_to)
        if status == "invalid":
            return DigestResult(False, username=username, reason="invalid nonce")
        if request_uri is not None and not same_resource(p["uri"], request_uri):
            # RFC 2617 3.2.2.5: answered 400, not counted as a password guess.
            return DigestResult(False, username=username, reason="digest uri is not the Request-URI",
                                uri_mismatch=True)
        ha1 = compute_ha1(
            username or "", self.realm, password, algorithm, nonce=p["nonce"], cnonce=p.get("cnonce", "")
        )
        expected = compute_response(
            ha1=ha1,
            nonce=p["nonce"],
            method=method,
            uri=p["uri"],
            qop=qop,
            nc=p.get("nc"),
            cnonce=p.get("cnonce"),
            algorithm=algorithm,
            body=body,
        )
        given = p["response"].lower().encode("utf-8", errors="surrogateescape")
        if not hmac.compare_digest(expected.encode(), given):
            return DigestResult(False, username=username, reason="wrong response", checked=True)
        if status == "stale":
            # Right password, old nonce: RFC 2617 3.2.1 says re-challenge with stale=true so the
            # client retries silently instead of prompting for credentials.
            return DigestResult(False, stale=True, username=username, reason="stale nonce", checked=True)
        if not self.nonces.accept(p["nonce"], nc_value, now):
            # A captured header sent again: the password was right once, for one request. Answered
            # like a stale nonce, so a real client that repeats itself just fetches a new one.
            self.replays += 1
            return DigestResult(False, stale=True, username=username, reason="replayed nonce count",
                                replay=True, checked=True)
        return DigestResult(True, username=username, checked=True)
