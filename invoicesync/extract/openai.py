"""The OpenAI extractor, and OpenAI failures translated into the error tree.

The only module that imports ``openai``. ``OpenAIExtractor`` sends a document's
text layer to a chat model with structured outputs (``llm_schema.LlmInvoice``) and
converts the answer into ``models.Invoice``. ``translate_openai_errors`` wraps every
SDK call and maps the SDK's exceptions to the *most specific* class of
``invoicesync.errors``, chaining the original as ``__cause__``.

Messages name the model and the endpoint and quote the SDK's message (useful: it
says which limit or parameter), with anything shaped like an API key
(``sk-…``) cut out first, and the endpoint stripped of userinfo, query and fragment.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import openai
import pydantic

from invoicesync.errors import (
    AuthError,
    BadInputError,
    ConfigError,
    FatalError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    QuotaError,
    RateLimitedError,
    SchemaMismatch,
    ServerError,
)
from invoicesync.extract import prompt
from invoicesync.extract.llm_schema import LlmInvoice, to_invoice
from invoicesync.extract.model_input import ModelInput, model_input
from invoicesync.models import Invoice
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.retry_after import retry_after_from_headers
from invoicesync.resilience.timeouts import Deadline

__all__ = ["ContextTooLongError", "OpenAIExtractor", "Reading", "translate_openai_errors"]

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from invoicesync.resilience.breaker import Breakers
    from invoicesync.resilience.rate_limit import RateLimiter

log = logging.getLogger(__name__)

_STAGE = "extract"
_MAX_TEXT = 300
_API_KEY = re.compile(r"sk-[A-Za-z0-9_-]{8,}")
# A 429 with one of these codes is an empty account, not a burst: waiting won't help.
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
# Tokens budgeted for an answer before its real usage is known (rate limiting only).
_ANSWER_TOKENS = 1000


class ContextTooLongError(BadInputError):
    """The document's text does not fit the model's context window.

    A ``BadInputError`` (this request will never succeed as it is), distinguishable
    so that the extractor can retry once with a shortened text before giving up.
    """

    kind = "context_too_long"


@dataclass
class Reading:
    """What the model made of one document, and what that cost."""

    invoice: Invoice | None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OpenAIExtractor:
    """Reads an invoice from a PDF with an OpenAI chat model.

    Text first: the first ``max_pages`` pages of the text layer go to the model in
    one structured-output request. A PDF without a text layer (a scan) is sent as a
    file input of its first ``max_pages`` pages when ``scanned_pdfs`` is ``"file"``,
    else refused as ``BadDocumentError``. A document the model calls ``other`` gives
    ``None``. A refusal is ``BadInputError``; an answer that doesn't match the schema
    is asked again once with the validation error, then ``BadInputError``; a
    document too long for the context is sent again once with half the pages.

    Each request waits for the rate ``limiter`` and one of ``max_concurrency``
    slots, runs under ``timeout`` (capped by the caller's deadline) with the SDK's
    own retries off: ``retry`` decides, honouring Retry-After, all under the
    endpoint's circuit breaker from ``breakers``. ``calls`` and the token counters add up over all
    threads for the run summary. The API key lives only inside the SDK client.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout: float,
        max_pages: int,
        retry: RetryPolicy,
        max_concurrency: int | None = None,
        limiter: RateLimiter | None = None,
        breakers: Breakers | None = None,
        scanned_pdfs: str = "file",
    ) -> None:
        self.model = model
        self.max_pages = max_pages
        self.retry = retry
        self.timeout = timeout
        self.scanned_pdfs = scanned_pdfs
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self._endpoint = str(self._client.base_url)
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._limiter = limiter
        self._breaker = breakers.for_endpoint(f"openai {self.endpoint}") if breakers else None
        self._lock = threading.Lock()
        self._first = threading.Lock()
        self._proven = False
        self._refused: FatalError | None = None
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def endpoint(self) -> str:
        """The API base URL, without credentials: the circuit breaker's key."""
        return _safe_endpoint(self._endpoint)

    def __repr__(self) -> str:
        return f"OpenAIExtractor(model={self.model!r}, endpoint={self.endpoint!r})"

    def close(self) -> None:
        """Close the SDK client's connection pool."""
        self._client.close()

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None:
        return self.read(data, filename=filename, deadline=deadline).invoice

    def read(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Reading:
        """The document's invoice (or None), with the requests and tokens it took.

        Parses ``data`` in this process; the pipeline parses in a worker and calls
        ``read_input`` instead.
        """
        return self.read_input(
            lambda pages: model_input(data, max_pages=pages, scanned_pdfs=self.scanned_pdfs),
            filename=filename,
            deadline=deadline,
        )

    def read_input(
        self,
        prepare: Callable[[int], ModelInput],
        *,
        first: ModelInput | None = None,
        filename: str | None = None,
        deadline: Deadline | None = None,
    ) -> Reading:
        """Like ``read``, from ``first`` (else ``prepare(max_pages)``).

        ``prepare(pages)`` gives the input of fewer pages after an answer that the
        context is too long: once for text, halving until one page for a scan.
        """
        reading = Reading(invoice=None)
        limit = deadline or Deadline.never()
        item = first if first is not None else prepare(self.max_pages)
        shortened = False
        while True:
            if item.scan is not None:
                conversation = prompt.file_messages(item.scan, filename=filename)
                estimate = item.pages * 1500
            else:
                conversation = prompt.messages(item.text, filename=filename)
                estimate = len(item.text) // 4
            try:
                reading.invoice = self._extract(conversation, estimate, reading, limit)
                return reading
            except ContextTooLongError:
                if item.pages < 2 or (shortened and item.scan is None):
                    raise
                pages = item.pages // 2
                log.info("openai %s: context too long, retrying with %d pages", self.model, pages)
                item = prepare(pages)
                shortened = True

    def _extract(
        self,
        conversation: list[prompt.Message],
        input_tokens: int,
        reading: Reading,
        deadline: Deadline,
    ) -> Invoice | None:
        estimate = input_tokens + _ANSWER_TOKENS
        try:
            llm = self._ask(conversation, estimate, reading, deadline)
        except SchemaMismatch as first:
            conversation = [*conversation, prompt.schema_retry_message(first.detail)]
            try:
                llm = self._ask(conversation, estimate, reading, deadline)
            except SchemaMismatch as second:
                raise BadInputError(
                    f"openai {self.model}: model output does not match the schema: {second.detail}",
                    stage=_STAGE,
                ) from second
        invoice = to_invoice(llm, model=self.model, prompt_version=prompt.PROMPT_VERSION)
        if invoice is not None:
            invoice.provenance = invoice.provenance.model_copy(
                update={
                    "prompt_tokens": reading.prompt_tokens,
                    "completion_tokens": reading.completion_tokens,
                }
            )
        return invoice

    def _ask(
        self,
        conversation: list[prompt.Message],
        estimate: int,
        reading: Reading,
        deadline: Deadline,
    ) -> LlmInvoice:
        # SchemaMismatch is no TransientError: the policy and the breaker pass it through.
        def attempts() -> LlmInvoice:
            return self.retry.call(
                lambda: self._call(conversation, estimate, reading, deadline), deadline=deadline
            )

        return attempts() if self._breaker is None else self._breaker.call(attempts)

    def _call(
        self,
        conversation: list[prompt.Message],
        estimate: int,
        reading: Reading,
        deadline: Deadline,
    ) -> LlmInvoice:
        """One request; the answer parsed, or ``SchemaMismatch``."""
        self._raise_if_refused()
        if self._limiter is not None:
            self._limiter.acquire(estimate, deadline=deadline)
        with self._until_proven(), self._slots or contextlib.nullcontext():
            self._raise_if_refused()
            timeout = min(self.timeout, deadline.remaining())
            if timeout <= 0:
                raise OperationTimeout(f"openai {self.model}: no time left", stage=_STAGE)
            with self._lock:
                self.calls += 1
            reading.calls += 1
            try:
                with translate_openai_errors(model=self.model, endpoint=self._endpoint):
                    raw = self._client.chat.completions.with_raw_response.parse(
                        model=self.model,
                        messages=cast("list[ChatCompletionMessageParam]", conversation),
                        response_format=LlmInvoice,
                        timeout=timeout,
                    )
            except FatalError as exc:
                if not isinstance(exc, BadInputError):  # the endpoint, not this document
                    self._refused = exc
                raise
            self._proven = True
            with translate_openai_errors(model=self.model, endpoint=self._endpoint):
                used = self._count_tokens(raw.http_response, reading)
                if self._limiter is not None:
                    self._limiter.settle(estimate, used if used is not None else estimate)
                try:
                    completion = raw.parse()
                except pydantic.ValidationError as exc:
                    raise SchemaMismatch(_summary(exc)) from exc
        if not completion.choices:
            raise ServerError(f"openai {self.model}: answer without choices", stage=_STAGE)
        message = completion.choices[0].message
        if message.refusal:
            refusal = _API_KEY.sub("sk-[redacted]", " ".join(message.refusal.split()))
            raise BadInputError(
                f"openai {self.model}: the model refused: {refusal[:_MAX_TEXT]}", stage=_STAGE
            )
        if message.parsed is None:
            raise SchemaMismatch("the answer is empty")
        return message.parsed

    @contextlib.contextmanager
    def _until_proven(self) -> Iterator[None]:
        """One request at a time until an answer has proven the key, model and quota.

        A revoked key then costs one refused request, not max_concurrency of them.
        Threads that queued behind the first request go side by side once it succeeded.
        """
        if not self._proven:
            self._first.acquire()
            if not self._proven:
                try:
                    yield
                finally:
                    self._first.release()
                return
            self._first.release()
        yield

    def _raise_if_refused(self) -> None:
        """After a refused key, quota or model: fail without sending anything."""
        if self._refused is not None:
            raise copy.copy(self._refused)

    def _count_tokens(self, response: Any, reading: Reading) -> int | None:
        """Add the answer's usage to the counters; the total, None when not reported."""
        try:
            body = response.json()
        except ValueError:  # not JSON: parsing the completion will say so
            return None
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return None
        sent, received = usage.get("prompt_tokens"), usage.get("completion_tokens")
        sent = sent if isinstance(sent, int) else 0
        received = received if isinstance(received, int) else 0
        reading.prompt_tokens += sent
        reading.completion_tokens += received
        with self._lock:
            self.prompt_tokens += sent
            self.completion_tokens += received
        return sent + received


def _summary(exc: pydantic.ValidationError) -> str:
    """The validation errors by field, without the input (it may echo the document)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:10]]
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


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
