"""Download the invoice PDF behind a link found in a mail body.

``download_pdf`` follows one link with a session from ``fetch.http.make_session``
(whose connections pass the address guard) and says what became of it in a
``LinkResult``. Only a *transient* failure is raised, after the retries: the caller
then leaves the mail pending for a later run. Every other end (refused address,
404, a login page instead of a PDF, too large, a broken URL, a redirect loop) is a
result with its outcome, because trying the same link again cannot change it.

Time: each connect and each read waits at most ``http_connect`` / ``http_read``
seconds, and the whole link, redirects and retries included, at most ``download``
seconds, all capped by the caller's deadline.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urldefrag, urljoin, urlsplit

from invoicesync.config import LinkSettings, RetrySettings, TimeoutSettings
from invoicesync.errors import BadInputError, FatalError, OperationTimeout, TransientError
from invoicesync.fetch.guard import AddressRefusedError
from invoicesync.fetch.http import (
    Response,
    Session,
    TimeLimit,
    raise_for_status,
    redact_url,
    time_limit,
    translate_requests_errors,
)
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline
from invoicesync.sniff import is_pdf

__all__ = ["LinkResult", "Outcome", "download_pdf", "link_retry_policy"]

Outcome = Literal["ok", "not_a_pdf", "refused", "too_large", "failed"]

_STAGE = "fetch"
_CHUNK = 64 * 1024
# is_pdf looks for the magic within the first KiB; decided as soon as that much arrived.
_SNIFF_BYTES = 1024
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class LinkResult:
    """What became of one link. ``data`` holds the PDF when ``outcome == "ok"``."""

    url: str
    """The link, redacted (no userinfo, query or fragment): safe to log and store."""
    host: str
    outcome: Outcome
    reason: str
    data: bytes | None = field(default=None, repr=False)


class _Rejected(BadInputError):
    """The answer arrived but is not a usable PDF; ``outcome`` says why."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message, stage=_STAGE)
        self.outcome = outcome


def link_retry_policy(
    retries: RetrySettings, settings: LinkSettings, *, cancel: threading.Event | None = None
) -> RetryPolicy:
    """The policy ``download_pdf`` expects: ``[links] retries`` extra attempts per link."""
    return RetryPolicy(retries, stage="download", attempts=settings.retries + 1, cancel=cancel)


def download_pdf(
    url: str,
    *,
    session: Session,
    settings: LinkSettings,
    timeouts: TimeoutSettings,
    retry: RetryPolicy,
    deadline: Deadline,
) -> LinkResult:
    """Fetch the PDF behind ``url``; raise only a ``TransientError``, after ``retry`` gave up.

    ``retry`` should come from ``link_retry_policy``. Redirects are followed here,
    up to ``settings.max_redirects``, every hop through the address guard. The body
    is a PDF when its first bytes say so, whatever the Content-Type; it is abandoned
    past ``settings.max_mb`` MB.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return LinkResult(shown, "", "failed", f"download {shown}: not a usable URL")
    if parts.scheme.lower() not in ("http", "https") or not host:
        return LinkResult(shown, host, "failed", f"download {shown}: not an http(s) URL")
    budget = deadline.child(timeouts.download)
    try:
        with time_limit(budget.remaining()) as limit:
            data = retry.call(
                lambda: _attempt(url.strip(), session, settings, timeouts, budget, limit),
                deadline=budget,
            )
    except AddressRefusedError as exc:
        return LinkResult(shown, host, "refused", str(exc))
    except _Rejected as exc:
        return LinkResult(shown, host, exc.outcome, str(exc))
    except FatalError as exc:  # 404, 401/403, redirect loop, untrusted certificate …
        return LinkResult(shown, host, "failed", str(exc))
    return LinkResult(shown, host, "ok", f"{len(data)} bytes of PDF", data)


def _attempt(
    url: str,
    session: Session,
    settings: LinkSettings,
    timeouts: TimeoutSettings,
    budget: Deadline,
    limit: TimeLimit,
) -> bytes:
    """One try: follow the redirects, then read and check the body."""
    try:
        response = _follow(url, session, settings, timeouts, budget)
        try:
            raise_for_status(response, operation="download")
            return _read_pdf(response, settings, budget, limit)
        finally:
            response.close()
    except TransientError as exc:
        # A cut socket fails as a "connection reset": say what really happened.
        if limit.expired or budget.expired:
            raise _timed_out(url, timeouts) from exc
        raise


def _follow(
    url: str, session: Session, settings: LinkSettings, timeouts: TimeoutSettings, budget: Deadline
) -> Response:
    """GET ``url``, following redirects ourselves so that loops and hops stay in view."""
    current = url
    seen = {urldefrag(url).url}
    for _ in range(settings.max_redirects + 1):
        if budget.expired:
            raise _timed_out(url, timeouts)
        timeout = (budget.timeout(timeouts.http_connect), budget.timeout(timeouts.http_read))
        with translate_requests_errors("download", url=current):
            response = session.get(current, stream=True, timeout=timeout, allow_redirects=False)
        location = session.get_redirect_target(response)
        if location is None:
            return response
        response.close()
        target = urldefrag(urljoin(response.url or current, location)).url
        where = f"download {redact_url(url)}: redirect to {redact_url(target)}"
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            raise BadInputError(f"{where} is not an http(s) URL", stage=_STAGE)
        if target in seen:
            raise BadInputError(f"{where} is a redirect loop", stage=_STAGE)
        seen.add(target)
        current = target
    raise BadInputError(
        f"download {redact_url(url)}: more than {settings.max_redirects} redirects", stage=_STAGE
    )


def _read_pdf(
    response: Response, settings: LinkSettings, budget: Deadline, limit: TimeLimit
) -> bytes:
    """The body, streamed under the size cap and the time limit, if it is a PDF."""
    host = urlsplit(response.url).hostname or "?"
    cap = int(settings.max_mb * 1024 * 1024)
    too_large = f"{host} sent more than the {settings.max_mb:g} MB limit"
    declared = response.headers.get("Content-Length", "").strip()
    if _DIGITS.fullmatch(declared) and int(declared) > cap:  # not isdigit(): "²" is a digit
        raise _Rejected("too_large", f"{too_large} ({int(declared)} bytes announced)")
    body = bytearray()
    sniffed = False
    with translate_requests_errors("download", url=response.url):
        for chunk in response.iter_content(chunk_size=_CHUNK):
            body += chunk
            if len(body) > cap:
                raise _Rejected("too_large", too_large)
            if limit.expired or budget.expired:
                raise OperationTimeout(f"download from {host}: time limit reached", stage=_STAGE)
            if not sniffed and len(body) >= _SNIFF_BYTES:
                sniffed = True  # a login page is recognised without downloading all of it
                _require_pdf(body, response, host)
    if limit.expired:  # the cut socket may have looked like the end of the body
        raise OperationTimeout(f"download from {host}: time limit reached", stage=_STAGE)
    _require_pdf(body, response, host)
    return bytes(body)


def _require_pdf(body: bytearray, response: Response, host: str) -> None:
    if is_pdf(bytes(body[:_SNIFF_BYTES])):
        return
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no Content-Type"
    start = f"starting with {bytes(body[:8]).decode('latin-1')!r}" if body else "with no body"
    raise _Rejected("not_a_pdf", f"{host} answered {kind} {start}, not a PDF")


def _timed_out(url: str, timeouts: TimeoutSettings) -> OperationTimeout:
    return OperationTimeout(
        f"download {redact_url(url)}: no complete answer within the time limit "
        f"({timeouts.download:g} s per link, or the run's deadline)",
        stage=_STAGE,
    )
