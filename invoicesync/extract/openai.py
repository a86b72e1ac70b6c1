"""OpenAI failures translated into the error tree.

The only module that imports ``openai``. ``translate_openai_errors`` wraps every
SDK call and maps the SDK's exceptions to the *most specific* class of
``invoicesync.errors``, chaining the original as ``__cause__``.

Messages name the model and the endpoint and quote the SDK's message (useful: it
says which limit or parameter), with anything shaped like an API key
(``sk-…``) cut out first, and the endpoint stripped of userinfo, query and fragment.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import openai

from invoicesync.errors import (
    AuthError,
    BadInputError,
    ConfigError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    QuotaError,
    RateLimitedError,
    ServerError,
)
from invoicesync.resilience.retry_after import retry_after_from_headers

__all__ = ["ContextTooLongError", "translate_openai_errors"]

_STAGE = "extract"
_MAX_TEXT = 300
_API_KEY = re.compile(r"sk-[A-Za-z0-9_-]{8,}")
# A 429 with one of these codes is an empty account, not a burst: waiting won't help.
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})


class ContextTooLongError(BadInputError):
    """The document's text does not fit the model's context window.

    A ``BadInputError`` (this request will never succeed as it is), distinguishable
    so that the extractor can retry once with a shortened text before giving up.
    """

    kind = "context_too_long"


@contextlib.contextmanager
def translate_openai_errors(*, model: str, endpoint: str) -> Iterator[None]:
    """Translate any ``openai`` exception raised inside the block.

    ``model`` and ``endpoint`` (the API base URL) go into the message. 401/403 →
    ``AuthError``; 429 → ``QuotaError`` when the code says the quota is used up,
    else ``RateLimitedError`` with ``retry_after`` from ``retry-after-ms`` /
    ``Retry-After``; 404 → ``ConfigError(key="openai.model")``; 400 →
    ``ContextTooLongError`` for ``context_length_exceeded``, else ``BadInputError``;
    422 and other 4xx → ``BadInputError``; 409, 5xx and a response that doesn't
    match the schema → ``ServerError``; timeouts → ``OperationTimeout``; other
    connection failures → ``NetworkError``. The SDK's client-side refusals (a
    completion cut at the token limit or by the content filter) are
    ``BadInputError``; any other SDK error (a missing key, a bad client option)
    is ``ConfigError``. Errors of the project's own tree pass through untouched.
    """
    try:
        yield
    except openai.OpenAIError as exc:
        raise _classify(exc, f"openai {model} at {_safe_endpoint(endpoint)}") from exc


def _classify(exc: openai.OpenAIError, where: str) -> InvoiceSyncError:
    text = _message(exc)
    # Most specific first: APITimeoutError is an APIConnectionError, and every
    # status class is an APIStatusError, itself an APIError.
    if isinstance(exc, openai.APITimeoutError):
        return OperationTimeout(f"{where}: timed out", stage=_STAGE)
    if isinstance(exc, openai.APIConnectionError):
        return NetworkError(f"{where}: connection failed ({text})", stage=_STAGE)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return AuthError(
            f"{where}: API key refused (HTTP {exc.status_code}: {text}); check the key"
            " and its project's access to this model",
            stage=_STAGE,
        )
    if isinstance(exc, openai.RateLimitError):
        if _codes(exc) & _QUOTA_CODES:
            return QuotaError(f"{where}: quota exhausted ({text})", stage=_STAGE)
        retry_after = retry_after_from_headers(exc.response.headers)
        return RateLimitedError(
            f"{where}: rate limited ({text})", retry_after=retry_after, stage=_STAGE
        )
    if isinstance(exc, openai.NotFoundError):
        return ConfigError(f"model or endpoint not found: {where} ({text})", key="openai.model")
    if isinstance(exc, openai.BadRequestError) and "context_length_exceeded" in _codes(exc):
        return ContextTooLongError(
            f"{where}: document too long for the model ({text})", stage=_STAGE
        )
    if isinstance(exc, openai.ConflictError):
        return ServerError(f"{where}: conflict, try again ({text})", stage=_STAGE)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return ServerError(f"{where}: server error {exc.status_code} ({text})", stage=_STAGE)
        if 400 <= exc.status_code < 500:  # 400, 422 and the rest
            return BadInputError(
                f"{where}: request refused {exc.status_code} ({text})", stage=_STAGE
            )
        return ServerError(f"{where}: unexpected status {exc.status_code}", stage=_STAGE)
    if isinstance(exc, openai.APIError):  # e.g. an answer that doesn't match the schema
        return ServerError(f"{where}: unusable answer ({text})", stage=_STAGE)
    if isinstance(exc, openai.LengthFinishReasonError | openai.ContentFilterFinishReasonError):
        return BadInputError(f"{where}: {text}", stage=_STAGE)
    return ConfigError(f"{where}: {text}", key="openai")


def _codes(exc: openai.APIError) -> set[str]:
    """``code`` and ``type`` of the error, from the SDK's fields and from the body.

    The SDK unwraps ``{"error": {...}}`` into ``body`` itself; a body that is still
    wrapped (another SDK version, a proxy) is read as well.
    """
    found = {value for value in (exc.code, exc.type) if isinstance(value, str)}
    body = exc.body
    for layer in (body, body.get("error") if isinstance(body, dict) else None):
        if isinstance(layer, dict):
            found.update(v for k in ("code", "type") if isinstance(v := layer.get(k), str))
    return found


def _message(exc: openai.OpenAIError) -> str:
    """The SDK's message, without API keys, on one line, at most ``_MAX_TEXT`` characters."""
    text = exc.message if isinstance(exc, openai.APIError) else str(exc)
    text = " ".join(_API_KEY.sub("sk-[redacted]", text).split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _safe_endpoint(endpoint: str) -> str:
    # Without userinfo, query and fragment. fetch.http.redact_url does the same, but
    # stage packages don't import each other (and that module imports requests).
    try:
        parts = urlsplit(endpoint)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable endpoint>"
    safe = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    return _API_KEY.sub("sk-[redacted]", safe)
