"""IMAP, OAuth, requests and OpenAI exceptions translated into the project's error tree.

Every case builds a real exception of the library (or gets one from a loopback
socket) and checks the translated class, its fatal/transient family, the chained
cause, and that no credential reaches the message.
"""

from __future__ import annotations

import http.server
import imaplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx2
import imapclient
import openai
import pytest
import requests
import urllib3.exceptions
from hypothesis import given
from hypothesis import strategies as st
from imapclient.exceptions import (
    CapabilityError,
    IllegalStateError,
    IMAPClientAbortError,
    LoginError,
)

from invoicesync.errors import (
    AuthError,
    BadInputError,
    ConfigError,
    FatalError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    ProtocolError,
    QuotaError,
    RateLimitedError,
    ServerError,
    TransientError,
)
from invoicesync.extract.openai import ContextTooLongError, translate_openai_errors
from invoicesync.fetch.http import raise_for_status, redact_url, translate_requests_errors
from invoicesync.mail.errors import classify_oauth_error, translate_imap_errors

HOST = "imap.example.com"
CERT_FAILED = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"


def translated(
    context: Callable[[], AbstractContextManager[None]], exc: BaseException
) -> InvoiceSyncError:
    """Raise ``exc`` inside the translating context manager and return what comes out."""
    with pytest.raises(InvoiceSyncError) as caught, context():
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


def family(error: InvoiceSyncError) -> str:
    assert isinstance(error, FatalError) != isinstance(error, TransientError)
    return "fatal" if isinstance(error, FatalError) else "transient"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------- IMAP

IMAP_CASES = [
    (socket.timeout("timed out"), OperationTimeout),  # noqa: UP041 - the alias imaplib raises
    (TimeoutError(), OperationTimeout),
    (ssl.SSLCertVerificationError(1, CERT_FAILED), ProtocolError),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), NetworkError),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), NetworkError),
    (socket.gaierror(-2, "Name or service not known"), NetworkError),
    (ConnectionRefusedError(111, "Connection refused"), NetworkError),
    (ConnectionResetError(104, "Connection reset by peer"), NetworkError),
    (BrokenPipeError(32, "Broken pipe"), NetworkError),
    (OSError(113, "No route to host"), NetworkError),
    (imaplib.IMAP4.abort("socket error: EOF"), NetworkError),
    (IMAPClientAbortError("command: FETCH => socket error: EOF"), NetworkError),
    (LoginError("b'[AUTHENTICATIONFAILED] Invalid credentials (Failure)'"), AuthError),
    (imaplib.IMAP4.error("b'[AUTHENTICATIONFAILED] Invalid credentials (Failure)'"), AuthError),
    (imaplib.IMAP4.error(b"[AUTHORIZATIONFAILED] Not allowed"), AuthError),
    (imaplib.IMAP4.error("LOGIN failed."), AuthError),
    (imaplib.IMAP4.error("Authentication failed."), AuthError),
    (LoginError("User is authenticated but not connected."), AuthError),
    (LoginError("[UNAVAILABLE] Temporary authentication failure."), ServerError),
    (imaplib.IMAP4.error("[INUSE] Mailbox is locked by another session"), ServerError),
    (LoginError("[ALERT] Too many simultaneous connections. (Failure)"), RateLimitedError),
    (imaplib.IMAP4.error("[THROTTLED] Slow down"), RateLimitedError),
    (
        imaplib.IMAP4.error("Account exceeded command or bandwidth limits. (Failure)"),
        RateLimitedError,
    ),
    (LoginError("Server Unavailable. 15"), RateLimitedError),
    (imaplib.IMAP4.error("[OVERQUOTA] Mailbox is full"), QuotaError),
    (imaplib.IMAP4.error("[LIMIT] Too many flags"), QuotaError),
    (imaplib.IMAP4.readonly("INBOX is not writable"), ProtocolError),
    (CapabilityError("Server does not support IDLE"), ProtocolError),
    (IllegalStateError("command FETCH illegal in state AUTH"), ProtocolError),
    (imaplib.IMAP4.error("FETCH command error: BAD [b'Invalid messageset']"), ProtocolError),
]


@pytest.mark.parametrize(("exc", "expected"), IMAP_CASES, ids=lambda v: repr(v)[:60])
def test_imap_errors_are_translated(exc: BaseException, expected: type[InvoiceSyncError]) -> None:
    """Each IMAP/socket/TLS failure maps to the most specific class, naming operation and host."""
    error = translated(lambda: translate_imap_errors("login", host=HOST), exc)
    assert type(error) is expected
    assert HOST in str(error) and "login" in str(error)
    assert error.stage == "mail"


@pytest.mark.parametrize(
    ("exc", "expected_family"),
    [
        (TimeoutError(), "transient"),
        (ssl.SSLCertVerificationError(1, CERT_FAILED), "fatal"),
        (LoginError("[AUTHENTICATIONFAILED] Invalid credentials"), "fatal"),
        (LoginError("[UNAVAILABLE] Temporary authentication failure."), "transient"),
        (imaplib.IMAP4.abort("socket error: EOF"), "transient"),
        (imaplib.IMAP4.error("[OVERQUOTA] Mailbox is full"), "fatal"),
    ],
)
def test_imap_families(exc: BaseException, expected_family: str) -> None:
    """Fatal versus transient follows what retrying could change."""
    assert family(translated(lambda: translate_imap_errors("fetch", host=HOST), exc)) == (
        expected_family
    )


def test_imap_timeout_message() -> None:
    """A timeout says which operation timed out on which host."""
    error = translated(lambda: translate_imap_errors("fetch", host=HOST), TimeoutError())
    assert str(error) == f"imap fetch timed out on {HOST}"


def test_certificate_message_suggests_the_settings() -> None:
    """A rejected certificate points at ca_file / tls_verify."""
    error = translated(
        lambda: translate_imap_errors("connect", host=HOST),
        ssl.SSLCertVerificationError(1, CERT_FAILED),
    )
    assert "ca_file" in str(error) and "tls_verify" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        imaplib.IMAP4.error("b'a001 BAD Invalid command: LOGIN alice@example.com hunter2'"),
        imaplib.IMAP4.error(b"BAD [CLIENTBUG] login alice@example.com hunter2"),
        LoginError("[AUTHENTICATIONFAILED] failed: AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI="),
        imaplib.IMAP4.abort("unexpected response: b'* BAD LOGIN alice hunter2'"),
        imaplib.IMAP4.error("NO token Bearer ya29.hunter2 refused"),
        imaplib.IMAP4.error("NO bad request password=hunter2"),
    ],
)
def test_imap_messages_never_carry_credentials(exc: BaseException) -> None:
    """A LOGIN/AUTHENTICATE echo, a bearer token or a password pair is cut from the message."""
    message = str(translated(lambda: translate_imap_errors("login", host=HOST), exc))
    for secret in ("hunter2", "AGFsaWNlAGh1bnRlcjI=", "ya29"):
        assert secret not in message
    assert "[redacted]" in message


def test_bytes_repr_is_unwrapped() -> None:
    """The server's text is quoted without imaplib's b'...' wrapping."""
    error = translated(
        lambda: translate_imap_errors("login", host=HOST),
        LoginError("b'[AUTHENTICATIONFAILED] Invalid credentials (Failure)'"),
    )
    assert "([AUTHENTICATIONFAILED] Invalid credentials (Failure))" in str(error)


def test_own_errors_and_bugs_pass_through() -> None:
    """Errors of the project's tree and non-I/O bugs are not re-translated."""
    own = ServerError("already translated")
    with pytest.raises(ServerError) as caught, translate_imap_errors("fetch", host=HOST):
        raise own
    assert caught.value is own
    with pytest.raises(KeyError), translate_imap_errors("fetch", host=HOST):
        raise KeyError("bug")


@pytest.fixture
def fake_imap() -> Iterator[int]:
    """A one-connection IMAP server on loopback that refuses LOGIN, echoing its arguments."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, conn.makefile("rwb") as stream:
            stream.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
            stream.flush()
            for line in stream:
                tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                if rest.upper().startswith("CAPABILITY"):
                    stream.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                else:  # a careless server quoting the whole command back
                    stream.write(f"{tag} NO [AUTHENTICATIONFAILED] Bad {rest}\r\n".encode())
                    stream.flush()
                    return
                stream.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    server.close()
    thread.join(5)


def test_real_login_refusal(fake_imap: int) -> None:
    """imapclient's real LoginError becomes AuthError, without the echoed password."""
    client = imapclient.IMAPClient("127.0.0.1", port=fake_imap, ssl=False, timeout=5)
    with pytest.raises(AuthError) as caught, translate_imap_errors("login", host="127.0.0.1"):
        client.login("alice", "hunter2")
    assert isinstance(caught.value.__cause__, LoginError)
    assert "hunter2" not in str(caught.value) and "AUTHENTICATIONFAILED" in str(caught.value)
    client.shutdown()


def test_real_connection_refused() -> None:
    """Connecting to a closed port is a transient NetworkError."""
    with pytest.raises(NetworkError), translate_imap_errors("connect", host="127.0.0.1"):
        imapclient.IMAPClient("127.0.0.1", port=free_port(), ssl=False, timeout=5)


def test_real_greeting_timeout() -> None:
    """A server that accepts but never greets times out as OperationTimeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = int(silent.getsockname()[1])
        with pytest.raises(OperationTimeout), translate_imap_errors("connect", host="127.0.0.1"):
            imapclient.IMAPClient("127.0.0.1", port=port, ssl=False, timeout=0.2)


# ------------------------------------------------------------------------ OAuth


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_grant", AuthError),
        (401, "invalid_client", AuthError),
        (400, "unauthorized_client", AuthError),
        (400, "access_denied", AuthError),
        (400, "invalid_request", ConfigError),
        (400, "invalid_scope", ConfigError),
        (400, "unsupported_grant_type", ConfigError),
        (429, None, RateLimitedError),
        (503, None, ServerError),
        (500, "server_error", ServerError),
        (400, "temporarily_unavailable", ServerError),
        (200, None, ProtocolError),
    ],
)
def test_oauth_token_errors(status: int, code: str | None, expected: type[Exception]) -> None:
    """RFC 6749 §5.2 error answers map to auth, config, rate-limit or server errors."""
    error = classify_oauth_error(status, code, "Token has been expired or revoked.")
    assert type(error) is expected
    assert f"HTTP {status}" in str(error)


def test_oauth_revoked_grant_asks_to_reauthorise() -> None:
    """A revoked refresh token tells the operator to re-authorise; it is fatal."""
    error = classify_oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
    assert "re-authorise" in str(error) and family(error) == "fatal"


def test_oauth_rate_limit_carries_retry_after() -> None:
    """A 429 from the token endpoint carries the caller's Retry-After."""
    error = classify_oauth_error(429, "rate_limit_exceeded", None, retry_after=12.0)
    assert isinstance(error, RateLimitedError) and error.retry_after == 12.0


def test_oauth_description_is_scrubbed() -> None:
    """A description echoing a token does not put it in the message."""
    error = classify_oauth_error(400, "invalid_grant", "bad refresh_token=1//0gSECRET")
    assert "SECRET" not in str(error)


# ------------------------------------------------------------------- HTTP links

SECRET_URL = "https://bob:pa55word@files.example.com/inv/42.pdf?token=t0ps3cret#page=2"
SECRETS = ("bob", "pa55word", "t0ps3cret", "page=2")


def _max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, "/inv/42.pdf?token=t0ps3cret", reason)  # type: ignore[arg-type]


REQUESTS_CASES = [
    (requests.ConnectTimeout(), OperationTimeout),
    (requests.ReadTimeout(), OperationTimeout),
    (requests.Timeout(), OperationTimeout),
    (
        requests.exceptions.SSLError(
            _max_retry(urllib3.exceptions.SSLError(ssl.SSLCertVerificationError(1, CERT_FAILED)))
        ),
        ProtocolError,
    ),
    (
        requests.exceptions.SSLError(
            _max_retry(urllib3.exceptions.SSLError(ssl.SSLError(1, "[SSL] record layer failure")))
        ),
        NetworkError,
    ),
    (
        requests.ConnectionError(
            _max_retry(
                urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")  # type: ignore[arg-type]
            )
        ),
        NetworkError,
    ),
    (
        requests.ConnectionError(
            urllib3.exceptions.ReadTimeoutError(None, SECRET_URL, "Read timed out.")  # type: ignore[arg-type]
        ),
        OperationTimeout,
    ),
    (
        requests.exceptions.ChunkedEncodingError(
            urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(10 bytes read)")
        ),
        NetworkError,
    ),
    (requests.exceptions.ProxyError("Unable to connect to proxy"), NetworkError),
    (requests.TooManyRedirects("Exceeded 30 redirects."), BadInputError),
    (requests.exceptions.InvalidURL(f"Invalid URL {SECRET_URL!r}"), BadInputError),
    (requests.exceptions.MissingSchema("No scheme supplied"), BadInputError),
    (requests.exceptions.InvalidSchema("No connection adapters were found"), BadInputError),
    (
        requests.exceptions.ContentDecodingError("Received response with content-encoding: gzip"),
        NetworkError,
    ),
    (requests.exceptions.RetryError("too many 500 error responses"), NetworkError),
]


@pytest.mark.parametrize(("exc", "expected"), REQUESTS_CASES, ids=lambda v: repr(v)[:60])
def test_requests_errors_are_translated(exc: BaseException, expected: type[Exception]) -> None:
    """Each requests failure maps to the most specific class, with a redacted URL."""
    error = translated(lambda: translate_requests_errors("download", url=SECRET_URL), exc)
    assert type(error) is expected
    assert "download https://files.example.com/inv/42.pdf?…#…" in str(error)
    assert not any(secret in str(error) for secret in SECRETS)
    assert error.stage == "fetch"


def make_response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    """A real requests.Response, as a download would get it."""
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.url = SECRET_URL
    response.reason = http.HTTPStatus(status).phrase
    response._content = b""
    return response


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (429, {"Retry-After": "120"}, RateLimitedError, 120.0),
        (429, {"retry-after-ms": "1500", "Retry-After": "2"}, RateLimitedError, 1.5),
        (429, {}, RateLimitedError, None),
        (429, {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, RateLimitedError, 0.0),
        (503, {"Retry-After": "30"}, RateLimitedError, 30.0),
        (503, {}, ServerError, None),
        (500, {}, ServerError, None),
        (502, {"Retry-After": "30"}, ServerError, None),
        (408, {}, OperationTimeout, None),
        (401, {}, AuthError, None),
        (403, {}, AuthError, None),
        (404, {}, BadInputError, None),
        (410, {}, BadInputError, None),
        (400, {}, BadInputError, None),
    ],
)
def test_error_statuses(
    status: int, headers: dict[str, str], expected: type[Exception], retry_after: float | None
) -> None:
    """4xx/5xx answers map by status; 429 and 503-with-Retry-After carry retry_after."""
    with pytest.raises(InvoiceSyncError) as caught:
        raise_for_status(make_response(status, headers), operation="download")
    error = caught.value
    assert type(error) is expected
    assert getattr(error, "retry_after", None) == retry_after
    assert f"HTTP {status}" in str(error)
    assert not any(secret in str(error) for secret in SECRETS)


@pytest.mark.parametrize("status", [200, 204, 301, 304])
def test_success_statuses_do_not_raise(status: int) -> None:
    """Anything below 400 is left to the caller."""
    raise_for_status(make_response(status), operation="download")


def test_http_error_inside_the_context_is_mapped_by_status() -> None:
    """Response.raise_for_status() inside the block is translated like raise_for_status."""
    response = make_response(404)
    with pytest.raises(BadInputError), translate_requests_errors("download", url=SECRET_URL):
        response.raise_for_status()


@pytest.fixture
def rate_limited_server() -> Iterator[str]:
    """A loopback HTTP server answering every GET with 429 and Retry-After: 7."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(429)
            self.send_header("Retry-After", "7")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/inv.pdf?token=t0ps3cret"
    server.shutdown()
    server.server_close()


def test_real_rate_limited_download(rate_limited_server: str) -> None:
    """A real 429 with Retry-After from a loopback server becomes RateLimitedError(7)."""
    with translate_requests_errors("download", url=rate_limited_server):
        response = requests.get(rate_limited_server, timeout=5)
    with pytest.raises(RateLimitedError) as caught:
        raise_for_status(response, operation="download")
    assert caught.value.retry_after == 7.0 and "t0ps3cret" not in str(caught.value)


def test_real_connection_refused_download() -> None:
    """A real refused connection is a transient NetworkError."""
    url = f"http://127.0.0.1:{free_port()}/inv.pdf"
    with pytest.raises(NetworkError), translate_requests_errors("download", url=url):
        requests.get(url, timeout=5)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://user:pw@host/p?token=x", "https://host/p?…"),
        ("https://files.example.com:8443/a/b.pdf", "https://files.example.com:8443/a/b.pdf"),
        ("http://[::1]:8080/x?y=1#z", "http://[::1]:8080/x?…#…"),
        ("https://host/p#frag", "https://host/p#…"),
        ("HTTPS://Files.Example.COM/P", "https://files.example.com/P"),
        ("https://host:99999/p", "<unparseable url>"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    """Scheme, host, port and path stay; userinfo, query and fragment go."""
    assert redact_url(url) == redacted


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=30))
def test_redact_url_never_leaks(token: str) -> None:
    """Whatever the token, it never survives in userinfo, query or fragment."""
    secret = f"SECRET{token}"
    url = f"https://u{secret}:{secret}@host.example/p?k={secret}&x=1#{secret}"
    assert secret not in redact_url(url)


# ----------------------------------------------------------------------- OpenAI

REQUEST = httpx2.Request("POST", "https://api.example/v1/chat/completions")
KEY = "sk-proj-Abcdefgh1234567890_xyz"


def status_error(
    cls: type[openai.APIStatusError],
    status: int,
    body: object,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    """An SDK status error built the way the client builds it from an answer."""
    response = httpx2.Response(
        status_code=status, request=REQUEST, json={"error": body}, headers=headers
    )
    message = body.get("message") if isinstance(body, dict) else None
    return cls(f"Error code: {status} - {message}", response=response, body=body)


def api_body(
    code: str | None, message: str = "failed", kind: str = "invalid_request_error"
) -> dict[str, object]:
    return {"message": message, "type": kind, "param": None, "code": code}


OPENAI_CASES = [
    (
        status_error(
            openai.AuthenticationError,
            401,
            api_body("invalid_api_key", f"Incorrect API key provided: {KEY}."),
        ),
        AuthError,
    ),
    (status_error(openai.PermissionDeniedError, 403, api_body("unsupported_country")), AuthError),
    (status_error(openai.RateLimitError, 429, api_body("insufficient_quota")), QuotaError),
    (
        status_error(openai.RateLimitError, 429, api_body(None, kind="insufficient_quota")),
        QuotaError,
    ),
    (
        status_error(openai.RateLimitError, 429, {"error": api_body("insufficient_quota")}),
        QuotaError,
    ),
    (status_error(openai.RateLimitError, 429, api_body("rate_limit_exceeded")), RateLimitedError),
    (status_error(openai.NotFoundError, 404, api_body("model_not_found")), ConfigError),
    (
        status_error(openai.BadRequestError, 400, api_body("context_length_exceeded")),
        ContextTooLongError,
    ),
    (status_error(openai.BadRequestError, 400, api_body("invalid_value")), BadInputError),
    (status_error(openai.UnprocessableEntityError, 422, api_body(None)), BadInputError),
    (status_error(openai.ConflictError, 409, api_body(None)), ServerError),
    (
        status_error(openai.InternalServerError, 500, api_body(None, kind="server_error")),
        ServerError,
    ),
    (
        status_error(openai.InternalServerError, 503, api_body(None), {"Retry-After": "10"}),
        ServerError,
    ),
    (status_error(openai.APIStatusError, 418, api_body(None)), BadInputError),
    (openai.APITimeoutError(request=REQUEST), OperationTimeout),
    (openai.APIConnectionError(request=REQUEST), NetworkError),
    (
        openai.APIResponseValidationError(httpx2.Response(200, request=REQUEST, json={}), body={}),
        ServerError,
    ),
    (openai.APIError("stream broke", REQUEST, body=None), ServerError),
    (openai.ContentFilterFinishReasonError(), BadInputError),
    (openai.OpenAIError(f"The api_key client option must be set, not {KEY}"), ConfigError),
]


@pytest.mark.parametrize(("exc", "expected"), OPENAI_CASES, ids=lambda v: repr(v)[:60])
def test_openai_errors_are_translated(exc: BaseException, expected: type[Exception]) -> None:
    """Each SDK error maps to the most specific class; no API key in the message."""
    error = translated(
        lambda: translate_openai_errors(model="gpt-x", endpoint="https://api.example/v1"), exc
    )
    assert type(error) is expected
    assert "gpt-x" in str(error) and "https://api.example/v1" in str(error)
    assert KEY not in str(error) and "Abcdefgh" not in str(error)


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "20"}, 20.0),
        ({}, None),
    ],
)
def test_openai_rate_limit_retry_after(headers: dict[str, str], retry_after: float | None) -> None:
    """A plain 429 carries the wait from retry-after-ms or retry-after."""
    exc = status_error(openai.RateLimitError, 429, api_body("rate_limit_exceeded"), headers)
    error = translated(lambda: translate_openai_errors(model="m", endpoint="https://e"), exc)
    assert isinstance(error, RateLimitedError) and error.retry_after == retry_after


def test_openai_families_and_markers() -> None:
    """Quota and auth stop; rate limits retry; a too-long document is item-level bad input."""
    cases = {
        "insufficient_quota": ("fatal", QuotaError),
        "rate_limit_exceeded": ("transient", RateLimitedError),
    }
    for code, (expected_family, cls) in cases.items():
        exc = status_error(openai.RateLimitError, 429, api_body(code))
        error = translated(lambda: translate_openai_errors(model="m", endpoint="https://e"), exc)
        assert isinstance(error, cls) and family(error) == expected_family
    too_long = status_error(openai.BadRequestError, 400, api_body("context_length_exceeded"))
    error = translated(lambda: translate_openai_errors(model="m", endpoint="https://e"), too_long)
    assert isinstance(error, BadInputError) and error.kind == "context_too_long"


def test_openai_not_found_names_the_model_key() -> None:
    """A 404 is a configuration error on openai.model."""
    exc = status_error(openai.NotFoundError, 404, api_body("model_not_found"))
    error = translated(lambda: translate_openai_errors(model="gpt-nope", endpoint="https://e"), exc)
    assert isinstance(error, ConfigError) and error.key == "openai.model"


def test_openai_endpoint_is_redacted() -> None:
    """Userinfo and query of the endpoint never reach the message."""
    endpoint = f"https://user:{KEY}@proxy.example/v1?api-key=t0ps3cret"
    error = translated(
        lambda: translate_openai_errors(model="m", endpoint=endpoint),
        openai.APIConnectionError(request=REQUEST),
    )
    assert "https://proxy.example/v1" in str(error)
    assert KEY not in str(error) and "t0ps3cret" not in str(error)
