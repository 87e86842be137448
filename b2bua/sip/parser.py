"""Bytes -> Request/Response, for datagrams and for byte streams.

Every failure is a ParseError carrying whatever Via/From/To/Call-ID/CSeq could be read, because
RFC 3261 8.2 wants a 400 to echo them; the adapter decides between answering 400 (request) and
silently dropping (response).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from b2bua.sip.message import (
    COMMON_METHODS,
    TOKEN_RE,
    Headers,
    Request,
    Response,
    SipSyntaxError,
    canonical_name,
    has_empty_param,
    is_digits,
    parse_uri,
    split_commas,
)

# RFC 3261 7.3.1: these are defined as comma-separated lists, so one line may carry several values.
# Anything else (notably WWW-Authenticate, Date, User-Agent) may contain commas that are not
# separators and must be left alone.
MULTI_VALUE_HEADERS = frozenset(
    {
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Allow",
        "Allow-Events",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Content-Encoding",
        "In-Reply-To",
    }
)

PARTIAL_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
STRICT_LIST_HEADERS = frozenset({"Via", "Contact", "Route", "Record-Route"})
MANDATORY_REQUEST_HEADERS = ("To", "From", "CSeq", "Call-ID", "Via")
MANDATORY_RESPONSE_HEADERS = ("To", "From", "CSeq", "Call-ID", "Via")

_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_STATUS_RE = re.compile(r"^SIP/2\.0 +(\d{3})(?: (.*))?$", re.I)
_VERSION_RE = re.compile(r"^SIP/\d+\.\d+$", re.I)

_Fail = Callable[["ParseError"], "ParseError"]

# Header names as written before the colon (trailing blanks included) that passed the token check,
# with their canonical spelling. Peers write the same dozen names in every message, so each is
# checked once instead of by a regex on every line (a fifth of parsing a message). Bounded in count
# and in name length, so random names from hostile traffic cannot grow it without end (at most
# 4,096 x 64 characters); once full, other names are simply checked every time.
_CHECKED_NAMES: dict[str, str] = {}
_CHECKED_NAMES_MAX = 4096
_CHECKED_NAME_LENGTH = 64


@dataclass(frozen=True)
class ParserLimits:
    max_message_size: int = 65535
    max_headers: int = 128
    max_line_length: int = 8192


DEFAULT_LIMITS = ParserLimits()
# The framer only looks for Content-Length; over-long lines are the parser's business.
DEFAULT_LIMITS_NO_LINE_CAP = ParserLimits(max_line_length=1 << 30)


class ParseError(Exception):
    """Malformed message.

    ``is_request`` is None when not even the start line could be classified. ``partial`` maps the
    canonical names in PARTIAL_HEADERS to the raw values read (Via keeps every value, in order).
    """

    def __init__(
        self,
        reason: str,
        is_request: bool | None = None,
        partial: dict[str, list[str]] | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.is_request = is_request
        self.partial: dict[str, list[str]] = partial if partial is not None else {}
        # The answer RFC 3261 wants for this fault: 400 in general, 505 for another SIP version
        # (8.2.2 / 21.5.20), 513 for a message over the size limit (21.5.13).
        self.status = status


def _decode(data: bytes) -> str:
    # surrogateescape keeps non-UTF-8 bytes (latin-1 display names from old phones) intact so the
    # message still serialises back to the same bytes instead of failing the whole request.
    return data.decode("utf-8", errors="surrogateescape")


def is_keepalive(data: bytes) -> bool:
    """RFC 5626 CRLF keep-alives (and stray whitespace datagrams) carry no message."""
    return data.strip(b" \t\r\n") == b""


def _split_lines(head: str) -> list[str]:
    if head.count("\n") == head.count("\r\n"):
        return head.split("\r\n")  # every line ends in CRLF (the usual case): no regex needed
    return re.split(r"\r?\n", head)


def _unfold(lines: list[str], limits: ParserLimits, partial_err: list[ParseError]) -> list[str]:
    """Join continuation lines (RFC 3261 7.3.1 folding) onto the previous header line."""
    if lines and max(map(len, lines)) <= limits.max_line_length and not any(
            line[:1] in (" ", "\t") for line in lines):
        return lines  # nothing folded, nothing too long: the usual case
    out: list[str] = []
    for line in lines:
        if len(line) > limits.max_line_length:
            partial_err.append(ParseError("header line too long"))
            continue
        if line[:1] in (" ", "\t") and out:
            out[-1] = out[-1].rstrip() + " " + line.strip()
        elif line[:1] in (" ", "\t"):
            partial_err.append(ParseError("continuation line without a header"))
        else:
            out.append(line)
    return out


def _parse_start_line(line: str) -> tuple[bool, str, str, int, str]:
    """Return (is_request, method, uri, status, reason)."""
    if line[:4].upper() == "SIP/":
        m = _STATUS_RE.match(line)
        if not m:
            raise ParseError("bad status line", is_request=False)
        status = int(m.group(1))
        if not 100 <= status <= 699:
            raise ParseError("status code out of range", is_request=False)
        return False, "", "", status, (m.group(2) or "").strip()
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("bad request line", is_request=True)
    method, uri, version = parts
    if method not in COMMON_METHODS and not TOKEN_RE.match(method):
        raise ParseError("bad method", is_request=True)
    if version.upper() != "SIP/2.0":
        # A well-formed other version is answered 505 (8.2.2 via 21.5.20); anything else is a bad line.
        status = 505 if _VERSION_RE.match(version) else 400
        raise ParseError("unsupported SIP version", is_request=True, status=status)
    try:
        parsed = parse_uri(uri)
    except SipSyntaxError as exc:
        raise ParseError(f"bad Request-URI: {exc}", is_request=True) from None
    if parsed.headers:
        # RFC 3261 19.1.5: headers are not allowed in a Request-URI (RFC 4475 3.1.2.10 escruri).
        raise ParseError("headers in the Request-URI", is_request=True)
    return True, method, uri, 0, ""


def parse_message(
    data: bytes,
    *,
    stream: bool = False,
    limits: ParserLimits = DEFAULT_LIMITS,
) -> Request | Response | None:
    """Parse one complete message.

    Returns None for keep-alives. On a datagram (``stream=False``) the body is the rest of the
    datagram, truncated to Content-Length when present (RFC 3261 18.3); on a stream the framer has
    already cut exactly Content-Length bytes, and Content-Length is mandatory.
    """
    if is_keepalive(data):
        return None
    if len(data) > limits.max_message_size:
        raise oversize_error(data, limits)
    # RFC 3261 7.5: implementations should ignore CRLFs before the start line.
    data = data.lstrip(b"\r\n")
    span = _head_end(data)
    if span is None:
        head_bytes, rest, has_end = data, b"", False
    else:
        head_bytes, rest, has_end = data[: span[0]], data[span[1] :], True
    head = _read_head(head_bytes, limits)
    errors = head.errors
    if not has_end:
        errors.append(ParseError("missing empty line after headers"))

    is_request = head.is_request

    def fail(exc: ParseError) -> ParseError:
        return ParseError(exc.reason, is_request, head.partial, exc.status)

    if errors:
        raise fail(errors[0])

    headers = head.headers
    body = _frame_body(headers, rest, stream, fail)
    if is_request:
        msg: Request | Response = Request(head.method, head.uri, headers, body)
    else:
        msg = Response(head.status, head.reason, headers, body)
    _validate(msg, fail)
    return msg


def _head_end(data: bytes) -> tuple[int, int] | None:
    """Where ``_HEADER_END_RE`` would match (the first empty line, CRLF or bare LF), found with two
    ``bytes.find`` instead of a regex that tries every position."""
    crlf, lf = data.find(b"\n\r\n"), data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None
    if lf < 0 or 0 <= crlf < lf:
        i, end = crlf, crlf + 3
    else:
        i, end = lf, lf + 2
    return (i - 1 if i > 0 and data[i - 1] == 13 else i), end


@dataclass
class _Head:
    is_request: bool | None
    method: str
    uri: str
    status: int
    reason: str
    headers: Headers
    errors: list[ParseError]

    @property
    def partial(self) -> dict[str, list[str]]:
        """The PARTIAL_HEADERS values read (for the answer to a malformed request); built only when
        a message is refused, from the fields read."""
        partial: dict[str, list[str]] = {}
        for name, value in self.headers:
            if name in PARTIAL_HEADERS:
                partial.setdefault(name, []).append(value)
        return partial


def _read_head(head_bytes: bytes, limits: ParserLimits) -> _Head:
    """Start line and header fields of one message; every fault is collected, the first one wins."""
    lines = _split_lines(_decode(head_bytes))
    errors: list[ParseError] = []
    start_line = lines[0]
    is_request: bool | None = None
    method = uri = reason = ""
    status = 0
    try:
        if len(start_line) > limits.max_line_length:
            raise ParseError("start line too long")
        is_request, method, uri, status, reason = _parse_start_line(start_line)
    except ParseError as exc:
        errors.append(exc)
        is_request = exc.is_request

    headers = Headers()
    # Filled directly: the names are canonical already (Headers.add would canonicalise again).
    items: list[tuple[str, str]] = headers._items
    header_lines = _unfold(lines[1:], limits, errors)
    token = TOKEN_RE.match
    checked = _CHECKED_NAMES
    for line in header_lines[: limits.max_headers * 2]:
        name, colon, value = line.partition(":")
        cname = checked.get(name) if colon else None
        if cname is None:
            written = name
            name = name.rstrip(" \t")
            if not colon or not token(name):
                errors.append(ParseError(f"bad header line {line[:40]!r}"))
                continue
            cname = canonical_name(name)
            if len(written) <= _CHECKED_NAME_LENGTH and len(checked) < _CHECKED_NAMES_MAX:
                checked[written] = cname
        value = value.strip(" \t")
        if cname in MULTI_VALUE_HEADERS:
            if "," in value:
                values = split_commas(value)
                empty = cname in STRICT_LIST_HEADERS and _has_empty_element(value)
            else:
                one = value.strip()
                values = [one] if one else []
                empty = not one and cname in STRICT_LIST_HEADERS
            if empty:
                # RFC 3261 25.1 spells these as elem *(COMMA elem): an empty element is a syntax
                # error (RFC 4475 3.1.2.1 badinv01), not something to skip silently.
                errors.append(ParseError(f"empty element in {cname}"))
            for v in values:
                items.append((cname, v))
        else:
            items.append((cname, value))
    if len(items) > limits.max_headers:
        errors.append(ParseError("too many headers"))
    return _Head(is_request, method, uri, status, reason, headers, errors)


def _has_empty_element(value: str) -> bool:
    return any(not part for part in split_commas(value, keep_empty=True))


def oversize_error(data: bytes, limits: ParserLimits) -> ParseError:
    """513 for a message over the size limit, with whatever Via/From/To/Call-ID/CSeq its head gives
    (RFC 3261 21.5.13): the sender learns why instead of retransmitting into silence."""
    window = data[: limits.max_message_size].lstrip(b"\r\n")
    m = _HEADER_END_RE.search(window)
    head = _read_head(window[: m.start()] if m else window, limits)
    return ParseError("message too large", head.is_request, head.partial, 513)


def _frame_body(headers: Headers, rest: bytes, stream: bool, fail: _Fail) -> bytes:
    cl_values = headers.get_all("Content-Length")
    if not cl_values:
        if stream:
            raise fail(ParseError("missing Content-Length on stream transport"))
        return rest
    if len({v.strip() for v in cl_values}) != 1 or not is_digits(cl_values[0].strip()):
        raise fail(ParseError("bad Content-Length"))
    length = int(cl_values[0].strip())
    if length > len(rest):
        raise fail(ParseError("body shorter than Content-Length"))
    return rest[:length]


_COUNTED_HEADERS = frozenset(MANDATORY_REQUEST_HEADERS + MANDATORY_RESPONSE_HEADERS)


def _validate(msg: Request | Response, fail: _Fail) -> None:
    counts: dict[str, int] = {}
    for name, _ in msg.headers:
        if name in _COUNTED_HEADERS:
            counts[name] = counts.get(name, 0) + 1
    mandatory = MANDATORY_REQUEST_HEADERS if isinstance(msg, Request) else MANDATORY_RESPONSE_HEADERS
    for name in mandatory:
        if not counts.get(name):
            raise fail(ParseError(f"missing {name}"))
    for name in ("From", "To", "Call-ID", "CSeq"):
        if counts.get(name, 0) != 1:
            raise fail(ParseError(f"duplicate {name}"))
    try:
        cseq = msg.cseq
    except SipSyntaxError:
        raise fail(ParseError("bad CSeq")) from None
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise fail(ParseError("CSeq method does not match request method"))
    if not (msg.headers.get("Call-ID") or "").strip():
        raise fail(ParseError("empty Call-ID"))
    try:
        # Parsed through the message's cache: the core reads the same values again right after.
        msg.vias  # noqa: B018 -- every Via, not only the top one: evaluated for validation only
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
        contacts = msg.headers.get_all("Contact")
        if contacts:
            msg.contacts  # noqa: B018
            for contact in contacts:
                _check_contact_params(contact)
    except SipSyntaxError as exc:
        raise fail(ParseError(str(exc))) from None
    if isinstance(msg, Request):
        mf = msg.headers.get("Max-Forwards")
        if mf is not None and not is_digits(mf.strip()):
            raise fail(ParseError("bad Max-Forwards"))


def _check_contact_params(value: str) -> None:
    """The grammar checks of a Contact value that parsing it leaves out (it was parsed already)."""
    if value.strip() == "*":
        return
    gt = value.rfind(">")
    params = value[gt + 1 :] if gt >= 0 else value.partition(";")[1] + value.partition(";")[2]
    if has_empty_param(params):
        raise SipSyntaxError(f"empty Contact parameter in {value!r}")


def _content_lengths(head: bytes) -> list[str]:
    """Every Content-Length value of a message head: long or compact name (``l``), any case, with
    whitespace before the colon, folded values joined, CRLF or bare LF line ends (RFC 3261 7.3.1)."""
    out: list[str] = []
    for line in _unfold(_split_lines(_decode(head))[1:], DEFAULT_LIMITS_NO_LINE_CAP, []):
        name, colon, value = line.partition(":")
        if colon and name.strip(" \t").lower() in ("content-length", "l"):
            out.append(value.strip(" \t"))
    return out


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages (RFC 3261 18.3).

    ``feed`` only buffers; ``next_message`` returns one message, None when more bytes are needed, or
    raises ParseError. When ``framing_lost`` is set after an error the stream position is unknown
    and the adapter must close the connection; otherwise the bad message was skipped and parsing
    can continue (e.g. after answering 400, or 513 for a message over the size limit, whose body is
    then discarded as it arrives).
    """

    # A plain class, not a dataclass: mypyc 1.18 could not build a dataclass field whose factory is a type.
    def __init__(self, limits: ParserLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.keepalives_seen = 0
        self.framing_lost = False
        self._buf = bytearray()
        self._lead = b""
        self._skip = 0  # bytes of an oversized message's body still to discard

    def feed(self, data: bytes) -> None:
        if self.framing_lost:
            raise ParseError("stream framing lost; close the connection")
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf.extend(data)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """A message has started and is not complete yet (the adapter bounds how long that may take)."""
        return bool(self._buf) or self._skip > 0

    def _lose(self, reason: str, status: int, head: bytes) -> ParseError:
        """The stream position is unknown from here on; the error still carries what the head gave,
        so the request can be answered before the connection is closed."""
        self.framing_lost = True
        self._buf.clear()
        parsed = _read_head(head[: self.limits.max_message_size], self.limits)
        return ParseError(reason, parsed.is_request, parsed.partial, status)

    def next_message(self) -> Request | Response | None:
        if self.framing_lost:
            raise ParseError("stream framing lost; close the connection")
        # RFC 5626 keep-alives are CRLFCRLF pings between messages.
        stripped = 0
        while stripped < len(self._buf) and self._buf[stripped] in (0x0D, 0x0A):
            stripped += 1
        if stripped:
            # Pings may arrive split across reads, so count over the CR/LF run seen so far.
            lead = self._lead + bytes(self._buf[:stripped])
            self.keepalives_seen += lead.count(b"\r\n\r\n")
            self._lead = lead.rpartition(b"\r\n\r\n")[2][-3:]
            del self._buf[:stripped]
        if not self._buf:
            return None
        self._lead = b""
        m = _HEADER_END_RE.search(self._buf)
        if m is None:
            if len(self._buf) > self.limits.max_message_size:
                raise self._lose("headers exceed maximum message size", 513, bytes(self._buf))
            return None
        head = bytes(self._buf[: m.start()])
        values = set(_content_lengths(head))
        if not values:
            raise self._lose("missing Content-Length on stream transport", 400, head)
        if len(values) != 1 or not is_digits(next(iter(values))):
            raise self._lose("bad Content-Length on stream transport", 400, head)
        length = int(next(iter(values)))
        total = m.end() + length
        if total > self.limits.max_message_size:
            # The length is known, so the stream stays in step: answer 513 and discard the body.
            err = oversize_error(head + b"\r\n\r\n", self.limits)
            taken = min(total, len(self._buf))
            del self._buf[:taken]
            self._skip = total - taken
            raise err
        if len(self._buf) < total:
            return None
        data = bytes(self._buf[:total])
        del self._buf[:total]
        return parse_message(data, stream=True, limits=self.limits)

    def messages(self) -> Iterator[Request | Response]:
        """Yield every complete buffered message; a ParseError propagates to the caller."""
        while True:
            msg = self.next_message()
            if msg is None:
                return
            yield msg
