"""Minimal SDP bodies for offers and answers.

No media ever flows in the simulator; the B2BUA only relays the bodies. They still have to look
like what phones and gateways send (a single audio stream, common codecs) so the SDP the B2BUA
forwards, and anything it logs, is realistic.
"""

from __future__ import annotations

CONTENT_TYPE = "application/sdp"


def make_sdp(
    host: str, media_port: int, *, session_id: int, version: int = 1, user: str = "sipledger"
) -> bytes:
    """An audio session description (offer or answer: our answers accept PCMU/PCMA as offered)."""
    lines = [
        "v=0",
        f"o={user} {session_id} {version} IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {media_port} RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def is_sdp(content_type: str | None, body: bytes) -> bool:
    return bool(body) and (content_type or "").split(";")[0].strip().lower() == CONTENT_TYPE
