"""Which extractors ``[extractor] kind`` runs, per document kind."""

from __future__ import annotations

import threading

from invoicesync.config import ExtractorKind, OpenAISettings, Settings
from invoicesync.errors import ConfigError
from invoicesync.extract.base import Extractor, ExtractorChain
from invoicesync.extract.einvoice import EInvoiceExtractor
from invoicesync.extract.offline import OfflineExtractor
from invoicesync.models import Invoice
from invoicesync.resilience.retry import RetryPolicy

__all__ = ["ExtractorSelection"]


class _Bounded:
    """At most ``limit`` calls in flight (the model endpoint's ``max_concurrency``)."""

    def __init__(self, extractor: Extractor, limit: int) -> None:
        self._extractor = extractor
        self._slots = threading.BoundedSemaphore(limit)
        self.name = extractor.name

    def extract(self, data: bytes, *, filename: str | None = None) -> Invoice | None:
        with self._slots:
            return self._extractor.extract(data, filename=filename)

    def close(self) -> None:
        _close(self._extractor)


def _close(extractor: object) -> None:
    """Close an extractor that holds resources (only the model client does)."""
    close = getattr(extractor, "close", None)
    if close is not None:
        close()


def _openai(settings: OpenAISettings, root: Settings, cancel: threading.Event) -> Extractor:
    from invoicesync.extract.openai import OpenAIExtractor  # the SDK is heavy: only when used

    assert settings.api_key is not None
    extractor = OpenAIExtractor(
        api_key=settings.api_key.get_secret_value(),
        model=settings.model,
        base_url=settings.base_url or None,
        timeout=root.timeouts.openai,
        max_pages=settings.max_pages,
        retry=RetryPolicy(root.retries, stage="openai", cancel=cancel),
    )
    return _Bounded(extractor, settings.max_concurrency)


class ExtractorSelection:
    """Maps a document kind (``pdf`` or ``xml``) to the extractor chain for it.

    ``auto`` tries the e-invoice XML first (exact, no model call), then OpenAI when
    an API key is configured, else the offline heuristics. XML documents only ever
    go to the e-invoice extractor.
    """

    def __init__(self, settings: Settings, *, cancel: threading.Event | None = None) -> None:
        kind = settings.extractor.kind
        has_key = settings.openai.api_key is not None
        if kind is ExtractorKind.OPENAI and not has_key:
            raise ConfigError(
                "kind = openai needs an API key: set OPENAI_API_KEY or [openai] api_key_env",
                key="extractor.kind",
            )
        einvoice = EInvoiceExtractor()
        pdf: list[Extractor]
        if kind is ExtractorKind.EINVOICE:
            pdf = [einvoice]
        elif kind is ExtractorKind.OFFLINE:
            pdf = [OfflineExtractor()]
        elif has_key:
            pdf = [einvoice, _openai(settings.openai, settings, cancel or threading.Event())]
        else:
            pdf = [einvoice, OfflineExtractor()]
        self.uses_model = any(e.name == "openai" for e in pdf)
        self._chains: dict[str, Extractor] = {"pdf": ExtractorChain(pdf), "xml": einvoice}
        self._without_model = ExtractorChain([e for e in pdf if e.name != "openai"])
        self._all = pdf

    def close(self) -> None:
        """Release what the extractors hold open (the model client's connections)."""
        for extractor in self._all:
            _close(extractor)

    def for_kind(self, kind: str, *, model: bool = True) -> Extractor:
        """The chain for ``kind``; ``model=False`` leaves the model out (it refused us)."""
        if kind == "pdf" and not model:
            return self._without_model
        return self._chains[kind]
