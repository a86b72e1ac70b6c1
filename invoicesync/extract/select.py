"""Which extractors ``[extractor] kind`` runs, per document kind."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from invoicesync.config import ExtractorKind, Settings
from invoicesync.errors import ConfigError
from invoicesync.extract.base import Extractor, ExtractorChain
from invoicesync.extract.cached import CachedReader, ResultStore
from invoicesync.extract.einvoice import EInvoiceExtractor
from invoicesync.extract.local import LocalPlan
from invoicesync.extract.offline import OfflineExtractor
from invoicesync.resilience.breaker import Breakers
from invoicesync.resilience.rate_limit import RateLimiter
from invoicesync.resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from invoicesync.extract.openai import OpenAIExtractor

__all__ = ["ExtractorSelection"]


def _openai(
    settings: Settings, cancel: threading.Event, breakers: Breakers | None
) -> OpenAIExtractor:
    from invoicesync.extract.openai import OpenAIExtractor  # the SDK is heavy: only when used

    config = settings.openai
    assert config.api_key is not None
    return OpenAIExtractor(
        api_key=config.api_key.get_secret_value(),
        model=config.model,
        base_url=config.base_url or None,
        timeout=settings.timeouts.openai,
        max_pages=config.max_pages,
        retry=RetryPolicy(
            settings.retries, stage="openai", attempts=settings.retries.openai, cancel=cancel
        ),
        max_concurrency=config.max_concurrency,
        limiter=RateLimiter(
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            cancel=cancel,
        ),
        breakers=breakers,
        scanned_pdfs=config.scanned_pdfs,
    )


class ExtractorSelection:
    """Maps a document kind (``pdf`` or ``xml``) to the extractor chain for it.

    ``auto`` tries the e-invoice XML first (exact, no model call), then OpenAI when
    an API key is configured, else the offline heuristics. XML documents only ever
    go to the e-invoice extractor. With a ``cache`` store the model's readings are
    looked up there first; with ``breakers`` the model endpoint has one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        cancel: threading.Event | None = None,
        breakers: Breakers | None = None,
        cache: ResultStore | None = None,
    ) -> None:
        kind = settings.extractor.kind
        has_key = settings.openai.api_key is not None
        if kind is ExtractorKind.OPENAI and not has_key:
            raise ConfigError(
                "kind = openai needs an API key: set OPENAI_API_KEY or [openai] api_key_env",
                key="extractor.kind",
            )
        einvoice = EInvoiceExtractor()
        #: The model extractor and its cache, when the model is used (for the run summary).
        self.model: OpenAIExtractor | None = None
        self.cache: CachedReader | None = None
        pdf: list[Extractor]
        #: Local steps per kind, for ``plan`` (run in a worker by ``extract.local``).
        self._steps: dict[str, tuple[str, ...]] = {"xml": ("einvoice",)}
        self._max_pages = settings.openai.max_pages
        self._scanned_pdfs = settings.openai.scanned_pdfs
        if kind is ExtractorKind.EINVOICE:
            pdf = [einvoice]
        elif kind is ExtractorKind.OFFLINE:
            pdf = [OfflineExtractor()]
        elif has_key:
            self.model = _openai(settings, cancel or threading.Event(), breakers)
            model: Extractor = self.model
            if cache is not None:
                from invoicesync.extract.prompt import PROMPT_VERSION

                self.cache = CachedReader(self.model, cache, prompt_version=PROMPT_VERSION)
                model = self.cache
            pdf = [einvoice, model]
        else:
            pdf = [einvoice, OfflineExtractor()]
        self.uses_model = self.model is not None
        self._steps["pdf"] = tuple(e.name for e in pdf if e.name != "openai")
        self._chains: dict[str, Extractor] = {"pdf": ExtractorChain(pdf), "xml": einvoice}
        self._without_model = ExtractorChain([e for e in pdf if e.name != "openai"])

    def close(self) -> None:
        """Release what the extractors hold open (the model client's connections)."""
        if self.model is not None:
            self.model.close()

    def plan(self, kind: str, *, model: bool = True) -> LocalPlan:
        """What a worker does with a document of ``kind`` (``model=False``: leave it out)."""
        with_model = model and self.uses_model and kind == "pdf"
        return LocalPlan(
            steps=self._steps[kind],
            model_pages=self._max_pages if with_model else None,
            scanned_pdfs=self._scanned_pdfs,
        )

    @property
    def model_reader(self) -> CachedReader | OpenAIExtractor | None:
        """The model, behind its cache when there is one."""
        return self.cache if self.cache is not None else self.model

    def for_kind(self, kind: str, *, model: bool = True) -> Extractor:
        """The chain for ``kind``; ``model=False`` leaves the model out (it refused us)."""
        if kind == "pdf" and not model:
            return self._without_model
        return self._chains[kind]
