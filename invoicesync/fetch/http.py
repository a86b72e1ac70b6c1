"""HTTP with requests: failures and error statuses translated into the error tree.

The only module that imports ``requests``. ``translate_requests_errors`` wraps a
request and maps requests' exceptions to the *most specific* class of
``invoicesync.errors``, chaining the original as ``__cause__``;
``raise_for_status`` does the same for an error answer (4xx/5xx).

URLs in messages go through ``redact_url``: a download link often carries a token
in its query string or credentials in its userinfo. requests' own messages repeat
the full URL, so they are never quoted; the chained ``__cause__`` still holds them:
log ``str(error)``, not the cause's traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from invoicesync.errors import (
    AuthError,
    BadInputError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    ProtocolError,
    RateLimitedError,
    ServerError,
)
from invoicesync.resilience.retry_after import retry_after_from_headers

__all__ = [
    "FormAnswer",
    "post_form",
    "raise_for_status",
    "redact_url",
    "translate_requests_errors",
]

_STAGE = "fetch"
# ssl is imported only in invoicesync/mail/, so a certificate failure buried in
# requests' SSLError is recognised by name and by OpenSSL's reason text.
_CERT_ERROR_NAMES = frozenset({"SSLCertVerificationError", "CertificateError"})
_CERT_ERROR_TEXT = "CERTIFICATE_VERIFY_FAILED"


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string and fragment, safe for messages and logs.

    Scheme, host, port and path are kept; a dropped query or fragment shows as
    ``?…`` / ``#…``: ``https://user:pw@host/p?token=x`` → ``https://host/p?…``.
    A URL too broken to parse gives ``"<unparseable url>"``.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # bad IPv6 literal or port
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    redacted = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else f"{host}{parts.path}"
    if parts.query:
        redacted += "?…"
    if parts.fragment:
        redacted += "#…"
    return redacted


@contextlib.contextmanager
def translate_requests_errors(operation: str, *, url: str) -> Iterator[None]:
    """Translate any ``requests`` exception raised inside the block.

    ``operation`` (``"download"`` …) and the redacted ``url`` go into the message.
    Wrap the body reads too (``iter_content``): a connection break or read timeout
    while streaming is raised there, not by ``get``. An ``HTTPError`` from
    ``Response.raise_for_status`` is mapped by its status, as in ``raise_for_status``.
    Other exceptions pass through untouched.
    """
    try:
        yield
    except requests.RequestException as exc:
        raise _classify(exc, operation, url) from exc


def _classify(exc: requests.RequestException, operation: str, url: str) -> InvoiceSyncError:
    where = f"{operation} {redact_url(url)}"
    # Most specific first: ConnectTimeout is both a ConnectionError and a Timeout,
    # SSLError is a ConnectionError.
    if isinstance(exc, requests.Timeout):
        phase = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
        return OperationTimeout(f"{where}: timed out ({phase})", stage=_STAGE)
    if isinstance(exc, requests.exceptions.SSLError):
        if any(_is_certificate_failure(cause) for cause in _chain(exc)):
            # Fatal: retrying cannot make an untrusted certificate trusted.
            return ProtocolError(f"{where}: TLS certificate not trusted", stage=_STAGE)
        return NetworkError(f"{where}: TLS error", stage=_STAGE)
    if isinstance(exc, requests.ConnectionError) and any(
        isinstance(cause, TimeoutError) or type(cause).__name__ == "ReadTimeoutError"
        for cause in _chain(exc)
    ):
        # A read timeout while streaming the body surfaces as a ConnectionError.
        return OperationTimeout(f"{where}: timed out (read)", stage=_STAGE)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return NetworkError(f"{where}: connection failed ({type(exc).__name__})", stage=_STAGE)
    if isinstance(exc, requests.TooManyRedirects):
        return BadInputError(f"{where}: too many redirects", stage=_STAGE)
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.URLRequired,
    ):
        return BadInputError(f"{where}: not a usable URL ({type(exc).__name__})", stage=_STAGE)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _status_error(exc.response, operation)
    return NetworkError(f"{where}: request failed ({type(exc).__name__})", stage=_STAGE)


def raise_for_status(response: requests.Response, *, operation: str) -> None:
    """Raise the project's error for a 4xx/5xx ``response``; return for anything else.

    429 → ``RateLimitedError`` with ``retry_after`` (seconds, from ``retry-after-ms``
    or ``Retry-After``, ``None`` if absent). 503 *with* a Retry-After is also a
    ``RateLimitedError``, so that ``RetryPolicy`` honours the server's wait (it only
    reads ``retry_after`` there); without one it is a ``ServerError``, like every
    other 5xx. 408 → ``OperationTimeout``; 401/403 → ``AuthError``; other 4xx
    (404, 410 …) → ``BadInputError``.
    """
    if response.status_code >= 400:
        raise _status_error(response, operation)


def _status_error(response: requests.Response, operation: str) -> InvoiceSyncError:
    status = response.status_code
    reason = " ".join(str(response.reason or "").split())[:80]
    where = f"{operation} {redact_url(response.url or '')}: HTTP {status}" + (
        f" {reason}" if reason else ""
    )
    if status == 429 or status == 503:
        retry_after = retry_after_from_headers(response.headers)
        if status == 429 or retry_after is not None:
            return RateLimitedError(where, retry_after=retry_after, stage=_STAGE)
    if status >= 500:
        return ServerError(where, stage=_STAGE)
    if status == 408:
        return OperationTimeout(where, stage=_STAGE)
    if status in (401, 403):
        return AuthError(where, stage=_STAGE)
    return BadInputError(where, stage=_STAGE)


def _is_certificate_failure(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & _CERT_ERROR_NAMES) or _CERT_ERROR_TEXT in str(exc)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception wrapped in it, each once.

    requests wraps urllib3's ``MaxRetryError``, whose ``reason`` wraps urllib3's
    ``SSLError``, whose ``args`` hold the ``ssl`` exception: follow all of them.
    """
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(current.args)
        pending.extend((getattr(current, "reason", None), current.__cause__, current.__context__))


@dataclass(frozen=True, slots=True)
class FormAnswer:
    """An HTTP answer, whatever its status: the caller interprets error bodies (OAuth)."""

    status: int
    headers: dict[str, str]
    body: bytes


USER_AGENT = "invoicesync (+https://github.com/invoicesync/invoicesync)"


def post_form(url: str, form: dict[str, str], *, timeout: float) -> FormAnswer:
    """POST an urlencoded form (an OAuth2 token request); transport failures are translated."""
    with translate_requests_errors("token request", url=url), requests.Session() as session:
        response = session.post(
            url,
            data=form,
            timeout=(min(timeout, 10.0), timeout),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            allow_redirects=False,
        )
        return FormAnswer(response.status_code, dict(response.headers), response.content)
