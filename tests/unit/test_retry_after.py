"""Retry-After and retry-after-ms parsing: delta-seconds, HTTP-dates, garbage, header lookup."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from invoicesync.resilience.retry_after import parse_retry_after, retry_after_from_headers

# One minute before the dates used below (RFC 9110's example date).
NOW = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("  7 ", 7.0),
        ("86400", 86400.0),  # no clamping here: the retry policy clamps
    ],
)
def test_delta_seconds(value: str, seconds: float) -> None:
    """Delta-seconds, integral or fractional, are returned as float seconds."""
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # IMF-fixdate
        "Wednesday, 21-Oct-15 07:28:00 GMT",  # obsolete RFC 850 form
        "Wed Oct 21 07:28:00 2015",  # obsolete asctime form, implicitly GMT
        "Wed, 21 Oct 2015 09:28:00 +0200",  # a numeric zone is honoured
    ],
)
def test_http_date_in_the_future(value: str) -> None:
    """An HTTP-date one minute after ``now`` gives 60 seconds, in every accepted form."""
    assert parse_retry_after(value, now=NOW) == pytest.approx(60.0)


def test_http_date_in_the_past_is_zero() -> None:
    """A date already past means "retry now": 0.0, never a negative wait."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=NOW) == 0.0


def test_naive_now_is_taken_as_utc() -> None:
    """A naive ``now`` is read as UTC, like the HTTP-date itself."""
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=naive) == pytest.approx(90.0)


def test_default_now_is_the_current_time() -> None:
    """Without ``now``, a date far in the past gives 0.0 and one far ahead a large wait."""
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0
    ahead = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT")
    assert ahead is not None and ahead > 1e9


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "-5", "1e3", "nan", "inf", "12 seconds", "Wed, 99 Foo 2015"],
)
def test_garbage_is_none(value: str | None) -> None:
    """Missing, empty, negative or unreadable values give None, never an exception."""
    assert parse_retry_after(value, now=NOW) is None


@given(st.text(max_size=60))
def test_never_raises_and_never_negative(value: str) -> None:
    """Any text gives None or a finite, non-negative number of seconds."""
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"RETRY-AFTER": "3"}, 3.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 60.0),
        ({"retry-after-ms": "soon", "Retry-After": "4"}, 4.0),
        ({"retry-after-ms": "-1", "Retry-After": "4"}, 4.0),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
    ],
)
def test_headers_prefer_milliseconds(headers: dict[str, str], seconds: float | None) -> None:
    """``retry-after-ms`` wins over ``retry-after``; names match case-insensitively."""
    assert retry_after_from_headers(headers, NOW) == seconds


def test_headers_from_the_http_libraries() -> None:
    """requests' and httpx2's header mappings work as well as a plain dict."""
    assert retry_after_from_headers(CaseInsensitiveDict({"Retry-After": "5"})) == 5.0
    assert retry_after_from_headers(httpx2.Headers({"Retry-After-MS": "20"})) == 0.02
