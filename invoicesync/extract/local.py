"""Everything done with a document's bytes, in one call meant for a worker process.

``read_document`` runs the local extractors a ``LocalPlan`` names (e-invoice XML,
offline heuristics) and prepares the model's input, so that no byte of a stranger's
file is parsed in the run's own process (``resilience.processes``). A layer that
cannot be read (a broken embedded XML) does not fail the document: it is handed on
to the next extractor, and its error is kept in case none of them finds an invoice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invoicesync.errors import BadInputError
from invoicesync.extract.einvoice import EInvoiceExtractor
from invoicesync.extract.model_input import ModelInput, model_input
from invoicesync.extract.offline import OfflineExtractor
from invoicesync.models import DocumentType, Invoice

__all__ = ["LocalPlan", "LocalReading", "prepare_model_input", "read_document"]

#: Modules a worker should have imported before its first document (fork server preload).
PRELOAD = ("invoicesync.extract.local", "pypdf", "pypdfium2", "lxml.etree")


@dataclass(frozen=True)
class LocalPlan:
    """What to do with a document: the local ``steps`` in order, then the model's input."""

    steps: tuple[str, ...]
    #: Pages of model input to prepare when no step finds an invoice; None: no model.
    model_pages: int | None = None
    scanned_pdfs: str = "file"


@dataclass
class LocalReading:
    """What the local steps made of a document."""

    invoice: Invoice | None = None
    #: The model's input, when the plan has a model and no step found an invoice.
    model_input: ModelInput | None = None
    #: The error of a layer that could not be read, handed on to the next extractor.
    error: BadInputError | None = None


def _extractor(step: str) -> EInvoiceExtractor | OfflineExtractor:
    return EInvoiceExtractor() if step == "einvoice" else OfflineExtractor()


def read_document(path: str, filename: str | None, plan: LocalPlan) -> LocalReading:
    """Run ``plan`` on the file at ``path``; raises only errors of the error tree."""
    data = Path(path).read_bytes()
    reading = LocalReading()
    for index, step in enumerate(plan.steps):
        more = index + 1 < len(plan.steps) or plan.model_pages is not None
        try:
            invoice = _extractor(step).extract(data, filename=filename)
        except BadInputError as exc:
            if not more:
                raise
            reading.error = reading.error or exc  # a broken embedded XML: read the page
            continue
        if invoice is not None and invoice.document_type is not DocumentType.OTHER:
            reading.invoice = invoice
            return reading
    if plan.model_pages is not None:
        reading.model_input = model_input(
            data, max_pages=plan.model_pages, scanned_pdfs=plan.scanned_pdfs
        )
    elif reading.error is not None:
        raise reading.error  # nothing read the document, and a layer of it is broken
    return reading


def prepare_model_input(path: str, pages: int, scanned_pdfs: str) -> ModelInput:
    """The model's input of ``pages`` pages (a shorter one, after a context-too-long answer)."""
    return model_input(Path(path).read_bytes(), max_pages=pages, scanned_pdfs=scanned_pdfs)
