"""IMAP, socket, TLS and OAuth token-endpoint failures, translated into the error tree.

``translate_imap_errors`` wraps every call into imapclient / imaplib: it maps the
foreign exception to the *most specific* class of ``invoicesync.errors`` and chains
the original as ``__cause__``. ``classify_oauth_error`` does the same for an
OAuth2 token endpoint's error answer (RFC 6749 §5.2), from plain values.

Messages name the operation and the host and may quote the server's text, but never
a credential: anything after ``LOGIN`` / ``AUTHENTICATE`` in an echoed command, a
``Bearer`` token or a ``password=``-style pair is cut out first. The chained
``__cause__`` keeps the raw text: log ``str(error)``, not the cause's traceback.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import ssl
from collections.abc import Iterator

from imapclient.exceptions import CapabilityError, LoginError

from invoicesync.errors import (
    AuthError,
    ConfigError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    ProtocolError,
    QuotaError,
    RateLimitedError,
    ServerError,
)

__all__ = ["classify_oauth_error", "translate_imap_errors"]

_STAGE = "mail"
_MAX_TEXT = 200

# Lower-case substrings of server answers, checked in this order (see _classify_imap).
_THROTTLED = (
    "too many simultaneous connections",  # Gmail, at LOGIN
    "[throttled]",
    "account exceeded command or bandwidth limits",  # Gmail, hours-long but temporary
    "server unavailable. 15",  # Exchange Online / Office 365 throttling
)
_UNAVAILABLE = ("[unavailable]", "[inuse]")  # RFC 5530: try again later
_AUTH_FAILED = (
    "authenticationfailed",
    "authorizationfailed",
    "invalid credentials",
    "login failed",
    "authentication failed",
)
_QUOTA = ("[overquota]", "[limit]")

_SECRETS = (
    # An echoed command: its arguments are the user name and password or SASL blob.
    (re.compile(r"\b(LOGIN|AUTHENTICATE)\b.*", re.IGNORECASE | re.DOTALL), r"\1 [redacted]"),
    (re.compile(r"\b(Bearer)\s+\S+", re.IGNORECASE), r"\1 [redacted]"),
    (
        re.compile(
            r"\b(password|passwd|access_token|refresh_token|client_secret)\s*[=:]\s*\S+",
            re.IGNORECASE,
        ),
        r"\1=[redacted]",
    ),
)


@contextlib.contextmanager
def translate_imap_errors(operation: str, *, host: str) -> Iterator[None]:
    """Translate any IMAP, socket or TLS exception raised inside the block.

    ``operation`` (``"login"``, ``"fetch"`` …) and ``host`` go into the message.
    Wrap only the IMAP call itself: every ``OSError`` inside the block is taken
    for a network failure. Errors of the project's own tree pass through untouched.
    """
    try:
        yield
    except (OSError, imaplib.IMAP4.error) as exc:
        raise _classify(exc, operation, host) from exc


def _classify(exc: OSError | imaplib.IMAP4.error, operation: str, host: str) -> InvoiceSyncError:
    where = f"imap {operation} on {host}"
    # Order matters: the checks go from subclass to base class (socket.timeout and
    # SSLError are OSErrors; abort and readonly are IMAP4.errors).
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return OperationTimeout(f"imap {operation} timed out on {host}", stage=_STAGE)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Fatal: retrying cannot make an untrusted certificate trusted.
        detail = getattr(exc, "verify_message", None) or _os_text(exc)
        return ProtocolError(
            f"{where}: TLS certificate not trusted ({detail}); fix the server's certificate"
            " or set ca_file to the CA that issued it (tls_verify = false only for testing)",
            stage=_STAGE,
        )
    if isinstance(exc, ssl.SSLError):
        return NetworkError(f"{where}: TLS error ({_os_text(exc)})", stage=_STAGE)
    if isinstance(exc, socket.gaierror):
        return NetworkError(f"{where}: cannot resolve host ({_os_text(exc)})", stage=_STAGE)
    if isinstance(exc, OSError):  # refused, reset, unreachable, broken pipe
        return NetworkError(f"{where}: connection failed ({_os_text(exc)})", stage=_STAGE)
    if isinstance(exc, imaplib.IMAP4.readonly):  # a subclass of abort, yet not transient
        return ProtocolError(f"{where}: mailbox is read-only ({_server_text(exc)})", stage=_STAGE)
    if isinstance(exc, imaplib.IMAP4.abort):  # also imapclient's IMAPClientAbortError
        return NetworkError(f"{where}: connection dropped ({_server_text(exc)})", stage=_STAGE)
    return _classify_imap(exc, where)


def _classify_imap(exc: imaplib.IMAP4.error, where: str) -> InvoiceSyncError:
    raw = _raw_text(exc).lower()
    text = _server_text(exc)
    # Throttling and "unavailable" come before the auth check: servers send them as
    # the answer to LOGIN (so imapclient raises LoginError) and as response codes they
    # are more reliable than free text, e.g. Dovecot's
    # "[UNAVAILABLE] Temporary authentication failure".
    if _has(raw, _THROTTLED):
        return RateLimitedError(f"{where}: throttled by the server ({text})", stage=_STAGE)
    if _has(raw, _UNAVAILABLE):
        return ServerError(f"{where}: server temporarily unavailable ({text})", stage=_STAGE)
    if isinstance(exc, LoginError) or _has(raw, _AUTH_FAILED):
        return AuthError(
            f"{where}: credentials rejected ({text}); check the user name and password,"
            " or re-authorise the account's OAuth grant",
            stage=_STAGE,
        )
    if _has(raw, _QUOTA):
        return QuotaError(f"{where}: quota or server limit reached ({text})", stage=_STAGE)
    if isinstance(exc, CapabilityError):
        return ProtocolError(f"{where}: server lacks a needed capability ({text})", stage=_STAGE)
    return ProtocolError(f"{where}: unexpected server answer ({text})", stage=_STAGE)


def classify_oauth_error(
    status: int,
    error: str | None,
    description: str | None,
    *,
    retry_after: float | None = None,
) -> InvoiceSyncError:
    """The error for a failed OAuth2 token request (RFC 6749 §5.2), not raised.

    ``status`` is the HTTP status, ``error`` / ``description`` the JSON fields
    ``error`` / ``error_description`` when present; ``retry_after`` (seconds) is
    carried into a ``RateLimitedError``. Transient answers (429, 5xx,
    ``temporarily_unavailable``) win over error codes: stopping an account on a
    misread outage costs more than a few retries. Revoked or expired grants and
    rejected clients are ``AuthError``; a malformed request, scope or grant type is
    ``ConfigError``; any other 4xx is ``AuthError``, anything else ``ProtocolError``.
    The caller chains the HTTP exception, if any, with ``raise … from``.
    """
    code = (error or "").strip().lower()
    said = f"{code or 'no error code'}" + (f": {_clean(description)}" if description else "")
    where = f"oauth token endpoint answered HTTP {status} ({said})"
    if status == 429:
        return RateLimitedError(where, retry_after=retry_after, stage=_STAGE)
    if status >= 500 or code in {"temporarily_unavailable", "server_error"}:
        return ServerError(where, stage=_STAGE)
    if code in {"invalid_request", "invalid_scope", "unsupported_grant_type"}:
        return ConfigError(f"{where}; check the OAuth client id, scopes and token URL")
    if code in {"invalid_grant", "invalid_client", "unauthorized_client"} or 400 <= status < 500:
        # invalid_grant: the refresh token was revoked or expired; other 4xx codes
        # (access_denied, consent_required …) also need a person to sign in again.
        return AuthError(
            f"{where}; the refresh token or client was refused: re-authorise the account"
            " and store the new refresh token",
            stage=_STAGE,
        )
    return ProtocolError(where, stage=_STAGE)


def _has(text: str, needles: tuple[str, ...]) -> bool:
    return any(needle in text for needle in needles)


def _raw_text(exc: BaseException) -> str:
    """The exception's text; imaplib often passes the server's answer as bytes."""
    first = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(first, bytes):
        return first.decode("utf-8", "replace")
    text = str(exc)
    # str(IMAP4.error(b"...")) passed through another str() gives "b'...'".
    quoted = re.fullmatch(r"b(['\"])(.*)\1", text, re.DOTALL)
    return quoted.group(2) if quoted else text


def _os_text(exc: OSError) -> str:
    """An OSError's own words: OpenSSL's reason, else strerror, else the class name."""
    text = getattr(exc, "reason", None) or exc.strerror or str(exc)
    return _clean(str(text)) or type(exc).__name__


def _server_text(exc: BaseException) -> str:
    return _clean(_raw_text(exc)) or type(exc).__name__


def _clean(text: str) -> str:
    """Credentials cut out, whitespace collapsed, at most ``_MAX_TEXT`` characters."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
