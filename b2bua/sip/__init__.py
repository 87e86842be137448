"""Sans-I/O SIP core: plain-data messages, parser/serializer, transactions, dialogs, RFC 4028, digest.

Nothing in this package opens sockets, starts threads or reads the clock; time is always passed in
as ``now`` (seconds, any monotonic origin) and side effects come back as action objects.
"""

from b2bua import native

# Before any module of this package is imported: all of them come from the compiled build, or none
# (the decision b2bua/__init__ made).
native.use_build(__path__, "sip")

from b2bua.sip.message import Headers, Request, Response  # noqa: E402
from b2bua.sip.parser import ParseError, StreamFramer, parse_message  # noqa: E402
from b2bua.sip.serializer import build_response, serialize  # noqa: E402

__all__ = [
    "Headers",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "build_response",
    "parse_message",
    "serialize",
]
