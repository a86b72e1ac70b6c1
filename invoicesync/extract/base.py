"""The extractor protocol, and a chain of extractors tried in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from invoicesync.models import Invoice
from invoicesync.resilience.timeouts import Deadline

__all__ = ["Extractor", "ExtractorChain"]


class Extractor(Protocol):
    """Turns one stored document into an invoice.

    ``extract`` returns ``None`` when this extractor has nothing to say about the
    document (no embedded XML, not an invoice); it raises ``BadInputError`` when the
    document can never be read and ``TransientError`` when a later attempt may work.
    Extractors that wait on a network stay within ``deadline`` (the account's).
    """

    name: str

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None: ...


class ExtractorChain:
    """Tries extractors in order; the first one that returns an invoice wins."""

    def __init__(self, extractors: Sequence[Extractor]) -> None:
        self.extractors = list(extractors)
        self.name = "+".join(e.name for e in self.extractors)

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None:
        for extractor in self.extractors:
            invoice = extractor.extract(data, filename=filename, deadline=deadline)
            if invoice is not None:
                return invoice
        return None
