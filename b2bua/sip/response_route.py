"""Where a response goes: RFC 3261 18.2.1/18.2.2 with RFC 3581 (rport), for every answer we send.

The request's source address is the only address we know the sender really has. A Via is what the
sender *claims*; answering to its sent-by host would let a forged Via reflect our responses to a
third party and leave the real sender (behind NAT, or a scanner) without an answer. So:

* the host is always the packet's source (18.2.1 adds ``received`` whenever sent-by differs; a
  ``received`` the sender wrote itself is overwritten, never followed);
* the port is the source port when the request carried ``rport`` (RFC 3581 4), else the sent-by
  port (18.2.2), else the transport's default;
* a stream transport answers on the connection the request came in on (18.2.2 first bullet).

Pure functions; ``stamp_via`` returns the Via to echo in responses and to key the transaction.
"""

from __future__ import annotations

from b2bua.actions import Address
from b2bua.sip.message import Via


def stamp_via(via: Via, source: Address) -> Via:
    """The top Via as 18.2.1 and RFC 3581 want it echoed: ``received`` set to the source host when
    the sent-by differs (or the sender supplied its own), ``rport`` filled in when present."""
    params = dict(via.params)
    if via.host != source.host or "received" in params:
        params["received"] = source.host
    if "rport" in params:
        params["rport"] = str(source.port)
    return Via(via.transport, via.host, via.port, params, via.protocol)


def response_address(via: Via | None, source: Address) -> Address:
    """The address a response to a request from ``source`` with top Via ``via`` is sent to."""
    if source.transport != "udp" or via is None:
        return source
    if "rport" in via.params:
        port = source.port
    else:
        port = via.port if via.port is not None else (5061 if via.transport == "TLS" else 5060)
    return Address(source.host, port, source.transport)
