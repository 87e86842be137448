"""Plain-data SIP messages and the small grammar helpers the rest of the core needs.

Nothing here does I/O. Requests and responses are mutable dataclasses so the transaction user can
build them step by step; parsing helpers are pure functions over header *values* so the parser, the
dialog layer and tests can share them without round-tripping through bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

T = TypeVar("T")

# RFC 3261 7.3.3 plus the extension compact forms registered with IANA that we are likely to meet.
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "x": "Session-Expires",
    "s": "Subject",
    "o": "Event",
    "e": "Content-Encoding",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
}

# Names whose conventional spelling is not simple Title-Case; everything else is title-cased per word.
_SPECIAL_SPELLINGS: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "min-se": "Min-SE",
    "rack": "RAck",
    "rseq": "RSeq",
    "p-asserted-identity": "P-Asserted-Identity",
}

_CANONICAL_CACHE: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """Return the long, conventionally spelled form of a header name (compact forms expanded)."""
    cached = _CANONICAL_CACHE.get(name)
    if cached is not None:
        return cached
    lower = name.strip().lower()
    if lower in COMPACT_FORMS:
        result = COMPACT_FORMS[lower]
    elif lower in _SPECIAL_SPELLINGS:
        result = _SPECIAL_SPELLINGS[lower]
    else:
        result = "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))
    # The cache is bounded so hostile traffic with random header names cannot grow memory forever.
    if len(_CANONICAL_CACHE) < 4096:
        _CANONICAL_CACHE[name] = result
    return result


class Headers:
    """Ordered, case-insensitive multi-map of header fields.

    Each entry is one header *value*; the parser splits comma-joined lists (Via, Contact, ...) into
    separate entries, so ``get_all("Via")`` is the full Via stack regardless of how it was written.

    Parsed values (the top Via, From, To, CSeq, ...) are cached per Headers object by ``parsed``:
    a message's From or Via is read many times on its way through the transaction layer and the
    core, and parsing it anew each time cost a third of the B2BUA's CPU. Every mutation drops the
    cache, so a cached value always belongs to the current fields.
    """

    __slots__ = ("_items", "_parsed")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._parsed: dict[str, Any] | None = None
        if items is not None:
            for name, value in items:
                self.add(name, value)

    def parsed(self, key: str, build: Callable[[], T]) -> T:
        """``build()``, computed once per key until the fields change (a SipSyntaxError is not cached:
        it is raised again on the next read, as before)."""
        cache = self._parsed
        if cache is None:
            cache = self._parsed = {}
        elif key in cache:
            return cast(T, cache[key])
        value = cache[key] = build()
        return value

    def forget_parsed(self) -> None:
        """Drop the cached parsed values (a message kept for long: they are parsed again if read)."""
        self._parsed = None

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))
        self._parsed = None

    def insert(self, index: int, name: str, value: str) -> None:
        """Insert before position ``index`` (used to push a Via on top of the stack)."""
        self._items.insert(index, (canonical_name(name), value))
        self._parsed = None

    def prepend(self, name: str, value: str) -> None:
        """Put the value before all existing values of the same name (Via/Route stacks)."""
        key = canonical_name(name)
        self._parsed = None
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items.insert(i, (key, value))
                return
        self._items.append((key, value))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical_name(name)
        for n, v in self._items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [v for n, v in self._items if n == key]

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one value, keeping the position of the first one."""
        key = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if n == key:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((key, value))
        self._items = out
        self._parsed = None

    def replace_first(self, name: str, value: str) -> bool:
        """Replace the first value of ``name`` in place (a received request's top Via, stamped with
        received/rport); False when there is none. Only that field's parsed values are dropped (its
        own and its whole stack's, ``name*``): From, To, CSeq... stay parsed, not parsed again."""
        key = canonical_name(name)
        items = self._items
        for i in range(len(items)):
            if items[i][0] == key:
                items[i] = (key, value)
                cache = self._parsed
                if cache is not None:
                    cache.pop(key, None)
                    cache.pop(key + "*", None)
                return True
        return False

    def remove(self, name: str) -> int:
        """Remove all values of ``name``; return how many were removed."""
        key = canonical_name(name)
        before = len(self._items)
        self._items = [(n, v) for n, v in self._items if n != key]
        self._parsed = None
        return before - len(self._items)

    def remove_first(self, name: str) -> str | None:
        key = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if n == key:
                del self._items[i]
                self._parsed = None
                return v
        return None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        h._parsed = None
        return h

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        return any(n == key for n, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# ---------------------------------------------------------------------------------------------
# Generic tokenising helpers
# ---------------------------------------------------------------------------------------------


def split_commas(value: str, *, keep_empty: bool = False) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets.

    Display names may contain commas inside quotes and URIs inside <> may contain anything, so a
    naive ``str.split(",")`` breaks real Contact headers. Empty elements are dropped unless
    ``keep_empty`` (the parser uses it to refuse ``Via: a;;,;,,``).
    """
    if "," not in value:
        # One element (the usual Via, Contact, Route): nothing to split.
        one = value.strip()
        return [one] if one or keep_empty else []
    if '"' not in value and "<" not in value:
        # No quoted string and no URI in brackets that could hide a comma (Allow, Supported, ...).
        parts = [p.strip() for p in value.split(",")]
        return parts if keep_empty else [p for p in parts if p]
    parts = []
    buf: list[str] = []
    in_quotes = False
    in_angle = False
    escape = False
    for ch in value:
        if escape:
            buf.append(ch)
            escape = False
            continue
        if in_quotes:
            if ch == "\\":
                escape = True
            elif ch == '"':
                in_quotes = False
            buf.append(ch)
            continue
        if ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf).strip())
    return parts if keep_empty else [p for p in parts if p]


def is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts characters like '²' that ``int`` rejects."""
    return text.isascii() and text.isdigit()


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    if '"' not in value:
        return value.split(sep)  # no quoted string: every separator counts
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = False
    escape = False
    for ch in value:
        if escape:
            escape = False
        elif in_quotes and ch == "\\":
            escape = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` into an ordered dict with lower-cased names.

    Values keep their case (tags and branches are case-sensitive); callers lower-case values that
    the grammar defines as case-insensitive (transport, refresher, ...).
    """
    params: dict[str, str | None] = {}
    for raw in _split_outside_quotes(text, ";"):
        item = raw.strip()
        if not item:
            continue
        if "=" in item:
            name, _, val = item.partition("=")
            params[name.strip().lower()] = val.strip()
        else:
            params[item.lower()] = None
    return params


def has_empty_param(text: str) -> bool:
    """``;a;;b`` or a trailing ``;``: the grammar has no empty parameter (RFC 3261 25.1)."""
    items = _split_outside_quotes(text, ";")
    return any(not item.strip() for item in items[1:])


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class SipSyntaxError(ValueError):
    """A header value does not follow the grammar; the parser converts it into a ParseError."""


# ---------------------------------------------------------------------------------------------
# URIs and name-addr
# ---------------------------------------------------------------------------------------------


@dataclass
class SipUri:
    """A sip:/sips:/tel: URI. Unknown schemes are kept as ``opaque`` so they still round-trip."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""
    opaque: str | None = None

    @property
    def transport(self) -> str | None:
        # RFC 3261 19.1.1: transport is case-insensitive; returning it lower-cased means callers
        # comparing against "udp"/"tcp" work for "transport=UDP" too.
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        out = f"{self.scheme}:{userinfo}{self.host_port}{format_params(self.params)}"
        if self.headers:
            out += "?" + self.headers
        return out


_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(?::(\d{1,5}))?$")


def uri_host(host: str) -> str:
    """``host`` as it is written in a SIP URI or Via (RFC 3261 25.1): an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_hostport(text: str) -> tuple[str, int | None]:
    m = _HOSTPORT_RE.match(text.strip())
    if not m:
        raise SipSyntaxError(f"bad host:port {text!r}")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipSyntaxError(f"bad port {port}")
    return m.group(1), port


# Parsed URIs by their text: the same Contact, From and To URIs come back in every message of a peer.
# The SipUri objects are shared, so nobody may change one (copy with dataclasses.replace instead).
_URI_CACHE: dict[str, SipUri] = {}
_URI_CACHE_MAX = 4096


def parse_uri(text: str) -> SipUri:
    cached = _URI_CACHE.get(text)
    if cached is not None:
        return cached
    uri = _parse_uri(text)
    if len(_URI_CACHE) >= _URI_CACHE_MAX:
        _URI_CACHE.clear()  # bounded: hostile traffic with ever new URIs cannot grow it
    _URI_CACHE[text] = uri
    return uri


def _parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        raise SipSyntaxError(f"bad URI {text!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return SipUri(scheme=scheme, opaque=rest)
    user = password = None
    # The user part may legally contain ';', '?' and '/' (RFC 3261 25.1 user-unreserved; RFC 4475
    # intmeth), while '@' appears nowhere else unescaped: split on the *last* '@' before anything.
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    headers = ""
    if "?" in rest:
        rest, _, headers = rest.partition("?")
    hostport, _, param_text = rest.partition(";")
    host, port = _split_hostport(hostport)
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=parse_params(param_text),
        headers=headers,
    )


@dataclass
class NameAddr:
    """``"Display" <uri>;params`` as used by From, To, Contact, Route, Record-Route, Refer-To."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False  # Contact: *

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


_TOKEN_WORD = re.compile(r"[A-Za-z0-9.!%*_+`'~\-]+")


# Parsed name-addrs and Vias by their text, like URIs: a dialog's From and To (tags included) come
# back in every one of its messages and responses echo the request's Via. Shared objects: read-only.
_NAME_ADDR_CACHE: dict[str, NameAddr] = {}
_VIA_CACHE: dict[str, Via] = {}
_VALUE_CACHE_MAX = 4096


def parse_cache_sizes() -> dict[str, int]:
    """Entries in the parse caches (each bounded: hostile traffic cannot grow them past their cap)."""
    return {"uri": len(_URI_CACHE), "name_addr": len(_NAME_ADDR_CACHE), "via": len(_VIA_CACHE)}


def clear_parse_caches() -> None:
    _URI_CACHE.clear()
    _NAME_ADDR_CACHE.clear()
    _VIA_CACHE.clear()


def parse_name_addr(text: str) -> NameAddr:
    cached = _NAME_ADDR_CACHE.get(text)
    if cached is not None:
        return cached
    value = _parse_name_addr(text)
    if len(_NAME_ADDR_CACHE) >= _VALUE_CACHE_MAX:
        _NAME_ADDR_CACHE.clear()
    _NAME_ADDR_CACHE[text] = value
    return value


def _parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    if text == "*":
        return NameAddr(uri=SipUri(), wildcard=True)
    lt = _find_unquoted(text, "<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipSyntaxError(f"unterminated <> in {text!r}")
        inner = text[lt + 1 : gt]
        if inner != inner.strip():
            # RFC 4475 3.1.2.13 badaspec: no LWS inside the angle brackets.
            raise SipSyntaxError(f"whitespace inside <> in {text!r}")
        shown = text[:lt].strip()
        if shown and not shown.startswith('"') and not all(_TOKEN_WORD.fullmatch(w) for w in shown.split()):
            # An unquoted display name is a sequence of tokens (RFC 4475 3.1.2.14 baddn: a comma).
            raise SipSyntaxError(f"display name needs quotes in {text!r}")
        display = unquote(text[:lt]) or None
        uri = parse_uri(inner)
        params = parse_params(text[gt + 1 :])
        return NameAddr(uri=uri, display=display, params=params)
    # addr-spec form: header params start at the first ';' (RFC 3261 20.10 -- URI params would be
    # ambiguous, which is why such URIs must be in angle brackets).
    uri_text, _, param_text = text.partition(";")
    return NameAddr(uri=parse_uri(uri_text), params=parse_params(param_text))


def _find_unquoted(text: str, ch: str) -> int:
    in_quotes = False
    escape = False
    for i, c in enumerate(text):
        if escape:
            escape = False
        elif in_quotes and c == "\\":
            escape = True
        elif c == '"':
            in_quotes = not in_quotes
        elif c == ch and not in_quotes:
            return i
    return -1


# ---------------------------------------------------------------------------------------------
# Via, CSeq, session timer and auth headers
# ---------------------------------------------------------------------------------------------

MAGIC_COOKIE = "z9hG4bK"


@dataclass
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """None: absent; True: present without value (RFC 3581 request); int: filled in."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None or value == "":
            return True
        return int(value) if is_digits(value) else True

    @property
    def sent_by(self) -> tuple[str, int]:
        """host and port with the transport default filled in, as 17.2.3 matching compares them."""
        default = 5061 if self.transport == "TLS" else 5060
        return self.host.lower(), self.port if self.port is not None else default

    @property
    def is_rfc3261_branch(self) -> bool:
        return bool(self.branch and self.branch.startswith(MAGIC_COOKIE))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"


_VIA_RE = re.compile(
    r"^\s*([A-Za-z0-9.!%*_+`'~\-]+)\s*/\s*([0-9.]+)\s*/\s*([A-Za-z0-9.!%*_+`'~\-]+)\s+([^;\s]+)\s*(.*)$",
    re.S,
)


def parse_via(value: str) -> Via:
    """Parse one Via value (not a comma list)."""
    cached = _VIA_CACHE.get(value)
    if cached is not None:
        return cached
    via = _parse_via(value)
    if len(_VIA_CACHE) >= _VALUE_CACHE_MAX:
        _VIA_CACHE.clear()
    _VIA_CACHE[value] = via
    return via


def _parse_via(value: str) -> Via:
    m = _VIA_RE.match(value)
    if not m:
        raise SipSyntaxError(f"bad Via {value!r}")
    host, port = _split_hostport(m.group(4))
    rest = m.group(5).strip()
    if rest and not rest.startswith(";"):
        # "host : port" with spaces around the colon is legal LWS (RFC 4475 'wsinv' style).
        mm = re.match(r"^:\s*(\d{1,5})\s*(.*)$", rest, re.S)
        if not mm or port is not None:
            raise SipSyntaxError(f"bad Via sent-by {value!r}")
        port = int(mm.group(1))
        rest = mm.group(2).strip()
        if rest and not rest.startswith(";"):
            raise SipSyntaxError(f"bad Via params {value!r}")
    if has_empty_param(rest):
        raise SipSyntaxError(f"empty Via parameter in {value!r}")
    params = parse_params(rest)
    return Via(
        transport=m.group(3).upper(),
        host=host,
        port=port,
        params=params,
        protocol=f"{m.group(1).upper()}/{m.group(2)}",
    )


@dataclass(frozen=True)
class CSeq:
    num: int
    method: str

    def __str__(self) -> str:
        return f"{self.num} {self.method}"


TOKEN_RE = re.compile(r"^[A-Za-z0-9.!%*_+`'~\-]+$")  # RFC 3261 token: methods, header names
# Methods seen every second, in CSeq and in request lines (the parser): no regex for these.
COMMON_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "PRACK", "INFO",
                             "REGISTER", "NOTIFY", "REFER", "MESSAGE", "SUBSCRIBE"})


def parse_cseq(value: str) -> CSeq:
    """``1*DIGIT LWS Method`` (RFC 3261 25.1), read as the regex it replaced read it: up to 10
    digits, any Unicode whitespace around and between, Unicode decimal digits included (``int`` reads
    them). ``str.split`` splits on the whitespace ``\\s`` matches and ``str.isdecimal`` accepts the
    digits ``\\d`` does, without a regex per message."""
    parts = value.split()
    if len(parts) != 2:
        raise SipSyntaxError(f"bad CSeq {value!r}")
    digits, method = parts
    if not (0 < len(digits) <= 10 and digits.isdecimal()) or (
            method not in COMMON_METHODS and not TOKEN_RE.match(method)):
        raise SipSyntaxError(f"bad CSeq {value!r}")
    num = int(digits)
    # RFC 3261 8.1.1.5: the sequence number MUST be less than 2**31.
    if num >= 2**31:
        raise SipSyntaxError(f"CSeq number out of range {num}")
    return CSeq(num, method)


@dataclass(frozen=True)
class SessionExpires:
    delta: int
    refresher: str | None = None  # "uac" | "uas" | None

    def __str__(self) -> str:
        return f"{self.delta};refresher={self.refresher}" if self.refresher else str(self.delta)


def parse_session_expires(value: str) -> SessionExpires:
    delta_text, _, param_text = value.partition(";")
    delta_text = delta_text.strip()
    if not is_digits(delta_text):
        raise SipSyntaxError(f"bad Session-Expires {value!r}")
    params = parse_params(param_text)
    refresher = params.get("refresher")
    refresher = refresher.lower() if refresher else None
    if refresher not in (None, "uac", "uas"):
        raise SipSyntaxError(f"bad refresher {refresher!r}")
    return SessionExpires(int(delta_text), refresher)


def parse_min_se(value: str) -> int:
    delta_text = value.partition(";")[0].strip()
    if not is_digits(delta_text):
        raise SipSyntaxError(f"bad Min-SE {value!r}")
    return int(delta_text)


def parse_token_list(values: Iterable[str]) -> list[str]:
    """Flatten Supported/Require/Allow style values into lower-cased tokens."""
    out: list[str] = []
    for value in values:
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                out.append(token)
    return out


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``Digest realm="x", nonce="y", qop="auth"`` into (scheme, params with lower-cased names)."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    for item in split_commas(rest):
        name, eq, val = item.partition("=")
        if not eq:
            continue
        params[name.strip().lower()] = unquote(val)
    return scheme.strip(), params


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

DEFAULT_MAX_FORWARDS = 70


@dataclass
class _MessageBase:
    headers: Headers
    body: bytes

    # Parsed header values are cached on the Headers (see ``Headers.parsed``); the objects returned
    # are shared, so callers treat them as read-only (none of them mutates one).

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    @property
    def cseq(self) -> CSeq:
        return self.headers.parsed("CSeq", self._parse_cseq)

    def _parse_cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipSyntaxError("missing CSeq")
        return parse_cseq(value)

    @property
    def vias(self) -> list[Via]:
        return list(self.headers.parsed("Via*", lambda: [parse_via(v) for v in self.headers.get_all("Via")]))

    @property
    def top_via(self) -> Via:
        h = self.headers
        every = h._parsed.get("Via*") if h._parsed is not None else None
        if every:
            return cast(Via, every[0])  # the parser validated the whole stack already
        return h.parsed("Via", self._parse_top_via)

    def _parse_top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise SipSyntaxError("missing Via")
        return parse_via(value)

    @property
    def from_(self) -> NameAddr:
        return self.headers.parsed("From", lambda: parse_name_addr(self.headers.get("From") or ""))

    @property
    def to(self) -> NameAddr:
        return self.headers.parsed("To", lambda: parse_name_addr(self.headers.get("To") or ""))

    @property
    def contacts(self) -> list[NameAddr]:
        return list(self.headers.parsed(
            "Contact*", lambda: [parse_name_addr(v) for v in self.headers.get_all("Contact")]))


@dataclass
class Request(_MessageBase):
    method: str = ""
    uri: str = ""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    @property
    def parsed_uri(self) -> SipUri:
        uri = self.uri
        return self.headers.parsed("\x00uri " + uri, lambda: parse_uri(uri))

    @property
    def max_forwards(self) -> int:
        # RFC 3261 8.1.1.6 makes Max-Forwards a SHOULD for UACs; a missing one is treated as the
        # recommended initial value instead of rejecting the request.
        value = self.headers.get("Max-Forwards")
        if value is None or not is_digits(value.strip()):
            return DEFAULT_MAX_FORWARDS
        return int(value.strip())


# What a request kept after its exchange still needs to ACK, CANCEL or hang up what answers it late
# (RFC 3261 17.1.1.3, 9.1, 12.1.2) or to be told from a new request reusing its branch (17.2.3).
IDENTITY_FIELDS = frozenset({"Via", "Route", "From", "To", "Call-ID", "CSeq", "Max-Forwards"})


def identity_copy(request: Request) -> Request:
    """The request without its body and its other fields (Contact, capabilities, SDP headers...):
    a server holding thousands of fresh calls keeps one of these per INVITE, not the whole message."""
    headers = Headers()
    headers._items = [item for item in request.headers._items if item[0] in IDENTITY_FIELDS]
    return Request(request.method, request.uri, headers)


@dataclass
class Response(_MessageBase):
    status: int = 0
    reason: str = ""

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    @property
    def is_provisional(self) -> bool:
        return 100 <= self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_final(self) -> bool:
        return self.status >= 200


Message = Request | Response
