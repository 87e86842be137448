"""RFC 4028 negotiation tables and per-leg deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.sip.message import Headers, Request, Response, SipSyntaxError
from b2bua.sip.session_timer import (
    SessionTimer,
    SessionTimerConfig,
    UacNegotiation,
    negotiate_uas,
    supports_timer,
)


def hdrs(*pairs: tuple[str, str]) -> Headers:
    return Headers(pairs)


# -- UAS: RFC 4028 §9 refresher table ---------------------------------------------------------

# (UAC supports timer?, refresher in request, expected refresher in 2xx, Require: timer in 2xx?)
UAS_TABLE = [
    (False, None, "uas", False),
    (True, None, "uas", True),  # "uas or uac": our configured preference (default uas)
    (False, "uac", "uas", False),  # "NA" row: a UAC without support cannot refresh
    (False, "uas", "uas", False),
    (True, "uac", "uac", True),
    (True, "uas", "uas", True),
]


@pytest.mark.parametrize(("supports", "req_refresher", "expected", "require"), UAS_TABLE)
def test_uas_refresher_table(supports: bool, req_refresher: str | None, expected: str, require: bool) -> None:
    se = "1800" + (f";refresher={req_refresher}" if req_refresher else "")
    h = hdrs(("Session-Expires", se))
    if supports:
        h.add("Supported", "100rel, timer")
    decision = negotiate_uas(h, SessionTimerConfig(session_ttl=1800))
    assert decision.mode == "timer"
    assert decision.interval == 1800
    assert decision.refresher == expected
    assert decision.we_refresh is (expected == "uas")
    headers = dict(decision.response_headers)
    assert headers["Session-Expires"] == f"1800;refresher={expected}"
    assert ("Require" in headers) is require


def test_uas_choice_follows_configured_preference() -> None:
    d = negotiate_uas(
        hdrs(("Supported", "timer"), ("x", "900")), SessionTimerConfig(preferred_refresher="uac")
    )
    assert d.refresher == "uac" and not d.we_refresh
    assert ("Require", "timer") in d.response_headers


def test_uas_rejects_small_interval_with_422_when_uac_supports_timer() -> None:
    d = negotiate_uas(hdrs(("Supported", "timer"), ("Session-Expires", "60")))
    assert d.mode == "reject_422"
    assert d.min_se == 90
    assert d.response_headers == (("Min-SE", "90"),)


def test_uas_422_min_se_honours_larger_request_min_se() -> None:
    d = negotiate_uas(hdrs(("Supported", "timer"), ("Session-Expires", "60"), ("Min-SE", "120")))
    assert d.mode == "reject_422" and d.min_se == 120


def test_uas_cannot_422_a_uac_without_support_so_raises_interval() -> None:
    d = negotiate_uas(hdrs(("Session-Expires", "60")))
    assert d.mode == "timer" and d.interval == 90 and d.refresher == "uas"


def test_uas_no_timer_when_neither_se_nor_supported() -> None:
    d = negotiate_uas(hdrs(("Supported", "100rel")))
    assert d.mode == "no_timer" and d.interval is None and d.response_headers == ()
    assert not d.we_refresh


def test_uas_requests_timer_when_uac_supports_but_did_not_ask() -> None:
    d = negotiate_uas(hdrs(("k", "timer"), ("Min-SE", "700")), SessionTimerConfig(session_ttl=600))
    assert d.mode == "timer" and d.interval == 700  # never below the request's Min-SE
    assert d.refresher == "uas"


def test_uas_shortens_long_interval_but_not_below_min_se() -> None:
    assert negotiate_uas(hdrs(("Session-Expires", "3600"), ("Supported", "timer"))).interval == 600
    d = negotiate_uas(hdrs(("Session-Expires", "3600"), ("Supported", "timer"), ("Min-SE", "1000")))
    assert d.interval == 1000


def test_uas_lab_min_se_below_rfc_floor() -> None:
    cfg = SessionTimerConfig(session_ttl=30, min_se=10)
    d = negotiate_uas(hdrs(("Session-Expires", "20;refresher=uac"), ("Supported", "timer")), cfg)
    assert (d.mode, d.interval, d.refresher) == ("timer", 20, "uac")


def test_uas_require_timer_counts_as_support_and_request_object_accepted() -> None:
    req = Request("UPDATE", "sip:b@h", [("Require", "timer"), ("Session-Expires", "50")])
    assert supports_timer(req)
    assert negotiate_uas(req).mode == "reject_422"


def test_uas_malformed_session_expires_raises() -> None:
    with pytest.raises(SipSyntaxError):
        negotiate_uas(hdrs(("Session-Expires", "soon")))
    with pytest.raises(SipSyntaxError):
        negotiate_uas(hdrs(("Session-Expires", "100"), ("Min-SE", "x")))


# -- UAC ---------------------------------------------------------------------------------------


def test_uac_request_headers_and_apply() -> None:
    neg = UacNegotiation(SessionTimerConfig(session_ttl=1800, min_se=90))
    assert neg.request_headers() == [("Supported", "timer"), ("Session-Expires", "1800"), ("Min-SE", "90")]
    req = Request("INVITE", "sip:carrier@h", [("Supported", "100rel"), ("Session-Expires", "5")])
    neg.apply_to(req)
    assert req.headers.get_all("Supported") == ["100rel", "timer"]
    assert req.headers.get_all("Session-Expires") == ["1800"]
    neg.apply_to(req)  # idempotent
    assert req.headers.get_all("Supported") == ["100rel", "timer"]
    assert UacNegotiation(refresher="uac").request_headers()[1] == ("Session-Expires", "600;refresher=uac")


def test_uac_422_retry_adopts_min_se_and_is_bounded() -> None:
    neg = UacNegotiation(SessionTimerConfig(session_ttl=600, max_422_retries=2))
    assert neg.on_422(Response(422, "", [("Min-SE", "1800")]))
    assert (neg.session_expires, neg.min_se) == (1800, 1800)
    assert dict(neg.request_headers())["Min-SE"] == "1800"
    assert neg.on_422(Response(422, "", [("Min-SE", "3600")]))
    assert not neg.on_422(Response(422, "", [("Min-SE", "7200")]))  # gave up after two retries
    assert neg.session_expires == 3600


def test_uac_422_without_useful_min_se_is_not_retried() -> None:
    neg = UacNegotiation()
    assert not neg.on_422(Response(422, ""))
    assert not neg.on_422(Response(422, "", [("Min-SE", "60")]))  # same values would loop
    assert not neg.on_422(Response(422, "", [("Min-SE", "bogus")]))
    assert not neg.on_422(Response(500, "", [("Min-SE", "1800")]))


@pytest.mark.parametrize(
    ("se", "refresher", "we_refresh"),
    [("900;refresher=uac", "uac", True), ("900;refresher=uas", "uas", False), ("900", "uac", True)],
)
def test_uac_2xx_processing(se: str, refresher: str, we_refresh: bool) -> None:
    result = UacNegotiation().on_2xx(Response(200, "OK", [("Session-Expires", se), ("Require", "timer")]))
    assert (result.mode, result.interval, result.refresher, result.we_refresh) == (
        "timer",
        900,
        refresher,
        we_refresh,
    )


def test_uac_2xx_without_session_expires() -> None:
    result = UacNegotiation(SessionTimerConfig(session_ttl=1200)).on_2xx(Response(200, "OK"))
    assert (result.mode, result.interval, result.refresher) == ("timer", 1200, "uac")
    off = UacNegotiation(SessionTimerConfig(refresh_without_peer_support=False)).on_2xx(Response(200, "OK"))
    assert off.mode == "no_timer" and not off.we_refresh


# -- SessionTimer deadlines --------------------------------------------------------------------


def test_refresher_deadlines() -> None:
    t = SessionTimer(600, we_refresh=True)
    assert t.start(1000.0) == 1300.0
    assert t.next_event == (1300.0, "refresh")
    assert t.fire(1299.9) is None
    assert t.fire(1300.0) == "refresh"
    assert t.next_event == (1600.0, "expire")  # guard if the refresh never succeeds
    assert t.refreshed(1301.0) == 1601.0
    assert t.fire(1868.9) == "refresh"


def test_non_refresher_expiry_uses_lesser_of_32_and_a_third() -> None:
    assert SessionTimer(1800, we_refresh=False).start(0) == 1768.0
    assert SessionTimer(90, we_refresh=False).start(0) == 60.0
    assert SessionTimer(600, we_refresh=False, early_hangup=5).start(0) == 563.0


def test_update_segment_and_from_config() -> None:
    cfg = SessionTimerConfig(update_segment=3, early_hangup=2)
    t = SessionTimer.from_config(900, True, cfg)
    assert t.start(0) == 300.0
    t.fire(300.0)
    assert t.next_event == (898.0, "expire")


def test_expiry_stops_and_stop_makes_fire_a_noop() -> None:
    t = SessionTimer(90, we_refresh=False)
    t.start(0)
    assert t.fire(60.0) == "expire"
    assert not t.active and t.fire(61.0) is None
    s = SessionTimer(90, we_refresh=True)
    s.start(0)
    s.stop()
    assert s.fire(45.0) is None and s.next_deadline is None
    assert s.refreshed(50.0) is None  # a late 2xx for an ended call does not resurrect it


def test_refreshed_can_switch_roles_and_interval() -> None:
    t = SessionTimer(600, we_refresh=True)
    t.start(0)
    assert t.refreshed(100, interval=1800, we_refresh=False) == 1868.0
    assert t.next_event == (1868.0, "expire")


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        SessionTimer(0, True)
    with pytest.raises(ValueError):
        SessionTimer(90, True, update_segment=1)


@settings(max_examples=200, deadline=None)
@given(
    interval=st.integers(10, 86400),
    we_refresh=st.booleans(),
    segment=st.floats(1.5, 4.0),
    start=st.floats(0, 1e6),
)
def test_refresh_always_precedes_expiry(
    interval: int, we_refresh: bool, segment: float, start: float
) -> None:
    t = SessionTimer(interval, we_refresh, update_segment=segment)
    first = t.start(start)
    assert start < first <= start + interval
    event = t.next_event
    assert event is not None
    assert event[1] == ("refresh" if we_refresh else "expire")
    assert t.expire_at is not None and t.expire_at <= start + interval
    if we_refresh:
        assert t.refresh_at is not None and t.refresh_at <= t.expire_at
