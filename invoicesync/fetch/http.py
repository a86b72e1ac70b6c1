"""HTTP with requests: failures and error statuses translated into the error tree.

The only module that imports ``requests``. ``translate_requests_errors`` wraps a
request and maps requests' exceptions to the *most specific* class of
``invoicesync.errors``, chaining the original as ``__cause__``;
``raise_for_status`` does the same for an error answer (4xx/5xx).

URLs in messages go through ``redact_url``: a download link often carries a token
in its query string or credentials in its userinfo. requests' own messages repeat
the full URL, so they are never quoted; the chained ``__cause__`` still holds them:
log ``str(error)``, not the cause's traceback.

``make_session`` builds the session for links found in mails, whose every
connection is vetted by ``fetch.guard``: the host is resolved once through the
guard, the socket connects to exactly one of the vetted addresses (no second DNS
lookup that a rebinding server could answer differently), and the peer the socket
actually reached is checked again before a byte is sent. ``time_limit`` bounds a
whole exchange, which per-read socket timeouts cannot do against a slow drip.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.response import HTTPResponse
from urllib3.util.connection import create_connection

from invoicesync.config import LinkSettings, TimeoutSettings
from invoicesync.errors import (
    AuthError,
    BadInputError,
    ConfigError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    ProtocolError,
    RateLimitedError,
    ServerError,
)
from invoicesync.fetch.guard import check_address, check_host
from invoicesync.fetch.redact import redact_url
from invoicesync.resilience.retry_after import retry_after_from_headers

__all__ = [
    "LINK_USER_AGENT",
    "USER_AGENT",
    "FormAnswer",
    "Response",
    "Session",
    "TimeLimit",
    "make_session",
    "post_form",
    "raise_for_status",
    "redact_url",
    "time_limit",
    "translate_requests_errors",
]

# The types callers hold, so that no other module needs to import requests.
Session = requests.Session
Response = requests.Response

_STAGE = "fetch"
# ssl is imported only in invoicesync/mail/, so a certificate failure buried in
# requests' SSLError is recognised by name and by OpenSSL's reason text.
_CERT_ERROR_NAMES = frozenset({"SSLCertVerificationError", "CertificateError"})
_CERT_ERROR_TEXT = "CERTIFICATE_VERIFY_FAILED"


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


# ------------------------------------------------------------- guarded sessions

LINK_USER_AGENT = f"{USER_AGENT} invoice-link-downloader"


def make_session(settings: LinkSettings, timeouts: TimeoutSettings) -> requests.Session:
    """The session for links found in mails: every connection passes the address guard.

    Requests without a ``timeout`` get ``(http_connect, http_read)``; at most
    ``max_redirects`` redirects are followed when a caller lets requests follow
    them (each hop's connection is vetted like the first). Proxies are refused:
    through one, the guard would vet the proxy's address instead of the link's.
    """
    session = requests.Session()
    # No proxy or .netrc from the environment (see above); the caller decides everything.
    session.trust_env = False
    session.max_redirects = settings.max_redirects
    session.headers.update({"User-Agent": LINK_USER_AGENT, "Accept": "application/pdf, */*"})
    adapter = _GuardedAdapter(
        settings.allow_hosts, timeout=(timeouts.http_connect, timeouts.http_read)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class TimeLimit:
    """The sockets one thread uses under ``time_limit``; ``expired`` once they were cut."""

    def __init__(self) -> None:
        self.expired = False
        self._lock = threading.Lock()
        # Sockets, not connections: a connection that will close hands its socket over
        # to the response and forgets it while the body is still being read.
        self._sockets: list[socket.socket] = []

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _cut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _cut(sock)


_active = threading.local()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[TimeLimit]:
    """Cut every guarded connection this thread uses once ``seconds`` have passed.

    Socket timeouts bound each read, not their sum: a server that sends one byte
    per second never trips a 15 s read timeout. A timer thread shuts the sockets
    down, which wakes a blocked read at once. The read then fails, or, for a body
    delimited by the connection's end, looks complete: check ``expired`` after
    reading, and treat the exchange as timed out if it is set.
    """
    limit = TimeLimit()
    previous = getattr(_active, "limit", None)
    _active.limit = limit
    timer = threading.Timer(max(0.0, seconds), limit.expire)
    timer.daemon = True
    timer.start()
    try:
        yield limit
    finally:
        timer.cancel()
        _active.limit = previous


def _cut(sock: socket.socket) -> None:
    # socket.socket's own shutdown: SSLSocket.shutdown would also drop its TLS state
    # under the reading thread's feet. A socket closed meanwhile raises EBADF: fine.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _current_limit() -> TimeLimit | None:
    limit: TimeLimit | None = getattr(_active, "limit", None)
    return limit


class _GuardedHTTPConnection(HTTPConnection):
    """Connects only to vetted addresses and checks the peer it actually reached."""

    def __init__(self, *args: Any, allow: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow = tuple(allow)

    def _new_conn(self) -> socket.socket:
        limit = _current_limit()
        error: OSError | None = None
        for address in check_host(self.host, self.allow):
            if limit is not None and limit.expired:
                break
            try:
                sock = create_connection(
                    (str(address), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:  # the next address may answer
                error = exc
                continue
            try:
                check_address(sock.getpeername()[0], self.allow, host=self.host)
            except BaseException:
                sock.close()
                raise
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if error is None or isinstance(error, TimeoutError):  # None: the time limit struck
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from error
        raise NewConnectionError(self, f"cannot connect to {self.host}: {error}") from error

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        # Registered here, for new and reused connections alike: the answer is what may drip.
        limit = _current_limit()
        if limit is not None and isinstance(self.sock, socket.socket):
            limit.watch(self.sock)
        return super().getresponse()


class _GuardedHTTPSConnection(_GuardedHTTPConnection, HTTPSConnection):
    """TLS on top: SNI and certificate checks use the host name, the socket the vetted IP."""


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedPoolManager(PoolManager):
    def __init__(self, *args: Any, allow: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self.allow = allow

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        # Passed here rather than in connection_pool_kw, whose keys must be pool-key fields.
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        context["allow"] = self.allow  # the pool hands unknown keywords to its connections
        return super()._new_pool(scheme, host, port, context)


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, allow: Sequence[str], *, timeout: tuple[float, float]) -> None:
        self.allow = tuple(allow)  # before super().__init__, which builds the pool manager
        self.timeout = timeout
        super().__init__(max_retries=0)  # retrying is RetryPolicy's job

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _GuardedPoolManager(
            num_pools=connections, maxsize=maxsize, block=block, allow=self.allow, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise ConfigError("link downloads cannot use a proxy: the address guard must see the peer")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)
