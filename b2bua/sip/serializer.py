"""Request/Response -> bytes, plus RFC 3261 8.2.6 response construction."""

from __future__ import annotations

from collections.abc import Iterable

from b2bua.sip.message import Headers, Request, Response, format_params, parse_name_addr
from b2bua.sip.parser import ParseError

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


def _encode(text: str) -> bytes:
    # Mirrors the parser's surrogateescape decoding so undecodable input bytes survive a round trip.
    return text.encode("utf-8", errors="surrogateescape")


def serialize(msg: Request | Response) -> bytes:
    """Render a message; Content-Length is always rewritten to match the body."""
    if isinstance(msg, Request):
        lines = [f"{msg.method} {msg.uri} SIP/2.0"]
    else:
        lines = [f"SIP/2.0 {msg.status} {msg.reason or reason_phrase(msg.status)}"]
    wrote_length = False
    for name, value in msg.headers:
        if name == "Content-Length":
            # Keep the original position (some test peers diff headers) but never a stale value.
            if not wrote_length:
                lines.append(f"Content-Length: {len(msg.body)}")
                wrote_length = True
            continue
        lines.append(f"{name}: {value}")
    if not wrote_length:
        lines.append(f"Content-Length: {len(msg.body)}")
    return _encode("\r\n".join(lines) + "\r\n\r\n") + msg.body


def _with_to_tag(to_value: str, to_tag: str | None) -> str:
    if to_tag is None:
        return to_value
    try:
        to = parse_name_addr(to_value)
    except ValueError:
        return to_value
    if to.tag is not None:
        return to_value
    return to_value + format_params({"tag": to_tag})


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    copy_record_route: bool = False,
) -> Response:
    """Build a response per RFC 3261 8.2.6.

    Via (all, in order), From, Call-ID and CSeq are copied; To is copied and gets ``to_tag`` unless it
    already carries one. 100 Trying never gets a tag and copies Timestamp (8.2.6.1). Record-Route is
    copied only when asked, because only dialog-creating responses need it (12.1.1).
    """
    out = Headers()
    for via in request.headers.get_all("Via"):
        out.add("Via", via)
    for name in ("From",):
        value = request.headers.get(name)
        if value is not None:
            out.add(name, value)
    to_value = request.headers.get("To")
    if to_value is not None:
        if status == 100 or to_tag is None:
            out.add("To", to_value)
        else:
            try:
                tagged = request.to.tag is not None  # parsed once per request (the message's cache)
            except ValueError:
                tagged = True  # unparsable: echoed as it came
            out.add("To", to_value if tagged else to_value + format_params({"tag": to_tag}))
    for name in ("Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is not None:
            out.add(name, value)
    if status == 100:
        ts = request.headers.get("Timestamp")
        if ts is not None:
            out.add("Timestamp", ts)
    if copy_record_route:
        for value in request.headers.get_all("Record-Route"):
            out.add("Record-Route", value)
    for name, value in headers:
        out.add(name, value)
    return Response(status, reason or reason_phrase(status), out, body)


def response_from_parse_error(
    error: ParseError,
    status: int | None = None,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
) -> Response | None:
    """Build the answer to a malformed request from the fields the parser managed to read: the
    error's own status (400, 505 for another SIP version, 513 for an over-large message).

    Returns None when the message was not a request or lacks a Via: without a Via there is nowhere
    to send the answer (18.2.2), and responses are never answered.
    """
    if error.is_request is not True:
        return None
    partial = error.partial
    if not partial.get("Via"):
        return None
    out = Headers()
    for value in partial["Via"]:
        out.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        values = partial.get(name)
        if values:
            out.add(name, _with_to_tag(values[0], to_tag) if name == "To" else values[0])
    status = status or error.status
    # The reason phrase tells the peer's engineer what we disliked; keep it on one safe line.
    text = reason or f"{reason_phrase(status)} ({error.reason})"
    text = "".join(ch for ch in text if ch.isprintable())[:100]
    return Response(status, text, out)
