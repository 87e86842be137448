"""Sans-I/O SIP core: plain-data messages, parser/serializer, transactions, dialogs, RFC 4028, digest.

Nothing in this package opens sockets, starts threads or reads the clock; time is always passed in
as ``now`` (seconds, any monotonic origin) and side effects come back as action objects.
"""

from b2bua.sip.message import Headers, Request, Response
from b2bua.sip.parser import ParseError, StreamFramer, parse_message
from b2bua.sip.serializer import build_response, serialize

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
