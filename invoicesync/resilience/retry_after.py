"""Parse a server's requested wait (``Retry-After``, ``retry-after-ms``) into seconds.

Pure functions, no I/O: the HTTP and OpenAI adapters call them with the headers of
a 429 or 503 answer and put the result in ``RateLimitedError.retry_after``. Values
are *not* clamped here; ``RetryPolicy.delay`` clamps to ``[retries] retry_after_max``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after", "retry_after_from_headers"]

# RFC 9110 §10.2.3 allows only a non-negative integer; fractions are accepted
# because some servers send them and the meaning is unambiguous.
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value.

    ``value`` is either delta-seconds (``"120"``, ``"1.5"``) or an HTTP-date in
    any form ``email.utils.parsedate_to_datetime`` reads (IMF-fixdate, the obsolete
    RFC 850 and asctime forms). A date is turned into seconds from ``now``
    (default: the current UTC time; a naive ``now`` or date is taken as UTC, as
    HTTP-dates always are). Returns ``None`` for a missing, empty or unreadable
    value, and never a negative number: a date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    reference = now if now is not None else datetime.now(UTC)
    delta = (_as_utc(when) - _as_utc(reference)).total_seconds()
    return max(0.0, delta)


def retry_after_from_headers(
    headers: Mapping[str, str], now: datetime | None = None
) -> float | None:
    """Seconds to wait according to a response's headers, or ``None``.

    Prefers OpenAI's ``retry-after-ms`` (milliseconds, more precise) and falls
    back to ``retry-after`` (see ``parse_retry_after``). Header names match
    case-insensitively whatever mapping is passed (a plain ``dict`` included);
    an unreadable ``retry-after-ms`` is ignored in favour of ``retry-after``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = lowered.get("retry-after-ms", "").strip()
    if _DELTA_SECONDS.fullmatch(millis):
        seconds = float(millis) / 1000.0
        if math.isfinite(seconds):
            return seconds
    return parse_retry_after(lowered.get("retry-after"), now=now)


def _as_utc(moment: datetime) -> datetime:
    # parsedate_to_datetime returns a naive datetime for asctime and "-0000" dates.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
