"""Which extractors ``[extractor] kind`` runs, per document kind."""

from __future__ import annotations

from invoicesync.config import ExtractorKind, ExtractorSettings
from invoicesync.errors import ConfigError
from invoicesync.extract.base import Extractor, ExtractorChain
from invoicesync.extract.einvoice import EInvoiceExtractor
from invoicesync.extract.offline import OfflineExtractor

__all__ = ["ExtractorSelection"]


class ExtractorSelection:
    """Maps a document kind (``pdf`` or ``xml``) to the extractor chain for it.

    ``auto`` tries the e-invoice XML first (exact, no model call), then the offline
    heuristics. XML documents only ever go to the e-invoice extractor.
    """

    def __init__(self, settings: ExtractorSettings) -> None:
        einvoice = EInvoiceExtractor()
        if settings.kind is ExtractorKind.OPENAI:
            raise ConfigError(
                "the openai extractor is not available in this version", key="extractor.kind"
            )
        pdf: list[Extractor]
        if settings.kind is ExtractorKind.EINVOICE:
            pdf = [einvoice]
        elif settings.kind is ExtractorKind.OFFLINE:
            pdf = [OfflineExtractor()]
        else:
            pdf = [einvoice, OfflineExtractor()]
        self._chains: dict[str, Extractor] = {
            "pdf": ExtractorChain(pdf),
            "xml": einvoice,
        }

    def for_kind(self, kind: str) -> Extractor:
        return self._chains[kind]
