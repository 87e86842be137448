"""The request checks of RFC 3261 8.2 a UAS applies before it acts on a request.

Each function returns the answer to give (status and the headers 8.2 asks for) or None. They run in
8.2's order once the request is authenticated (or authentication does not apply):

* 8.2.1 method: a method we know of but do not allow is 405 with ``Allow``; one we have never
  heard of is 501 (21.5.2);
* 8.2.2.1 Request-URI scheme we cannot handle: 416;
* 8.2.2.3 ``Require`` naming an option-tag we do not support: 420 listing them in ``Unsupported``
  (never silently dropped: the sender relies on the extension being applied or refused);
* 8.2.3 body of a type or encoding we cannot process: 415 with ``Accept`` / ``Accept-Encoding``.

Pure functions over parsed requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from b2bua.sip.message import Request, SipSyntaxError, parse_token_list, parse_uri

# Methods of the IANA SIP method registry (RFC 3261, 3262, 3265, 3311, 3428, 3515, 3903, 2976, 6086).
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})  # fmt: skip
URI_SCHEMES = frozenset({"sip", "sips", "tel"})


@dataclass(frozen=True)
class Rejection:
    status: int
    why: str
    headers: list[tuple[str, str]] = field(default_factory=list)


def check_method(req: Request, implemented: Iterable[str], allow: str) -> Rejection | None:
    if req.method in implemented:
        return None
    if req.method in KNOWN_METHODS:
        return Rejection(405, f"method {req.method} not allowed", [("Allow", allow)])
    return Rejection(501, f"method {req.method[:32]!r} not implemented", [("Allow", allow)])


def check_uri_scheme(req: Request) -> Rejection | None:
    try:
        scheme = parse_uri(req.uri).scheme
    except SipSyntaxError:
        scheme = ""
    if scheme in URI_SCHEMES:
        return None
    return Rejection(416, f"Request-URI scheme {scheme[:32]!r} not supported")


def check_require(req: Request, supported: Iterable[str]) -> Rejection | None:
    if req.method in ("ACK", "CANCEL"):
        return None  # 8.2.2.3: never rejected for Require (a 420 to a CANCEL would cancel nothing)
    ours = {tag.lower() for tag in supported}
    missing: list[str] = []
    for value in req.headers.get_all("Require"):
        for token in value.split(","):
            tag = token.strip()
            if tag and tag.lower() not in ours and tag not in missing:
                missing.append(tag)
    if not missing:
        return None
    return Rejection(420, f"unsupported extension(s) {', '.join(missing)[:100]}",
                     [("Unsupported", ", ".join(missing))])


def check_body(req: Request, accept: Iterable[str]) -> Rejection | None:
    """A body we cannot hand on as a session description (INVITE and UPDATE carry offers)."""
    if not req.body or req.method not in ("INVITE", "UPDATE"):
        return None
    accepted = [a.lower() for a in accept]
    encodings = [e for e in parse_token_list(req.headers.get_all("Content-Encoding")) if e != "identity"]
    if encodings:
        return Rejection(415, f"content encoding {encodings[0][:32]!r} not supported",
                         [("Accept-Encoding", "identity")])
    ctype = (req.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if ctype and ctype not in accepted:
        return Rejection(415, f"content type {ctype[:64]!r} not supported", [("Accept", ", ".join(accepted))])
    return None
