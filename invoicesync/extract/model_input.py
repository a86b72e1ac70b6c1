"""What the model is sent for a PDF: its text layer, or for a scan its first pages as a file.

Parsing the PDF happens here, in a worker process (``extract.local``); the model
request itself is made in the run's process from the ``ModelInput``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from invoicesync.errors import BadDocumentError
from invoicesync.extract.pdf import first_pages, pdf_text

__all__ = ["ModelInput", "model_input"]

# Fewer characters of text than this (page markers aside) means there is no text layer.
_MIN_TEXT = 50
_PAGE_MARKER = re.compile(r"^--- page \d+ ---$", re.MULTILINE)


@dataclass(frozen=True)
class ModelInput:
    """The text layer of ``pages`` pages, or (``scan``) a PDF of a scan's first ``pages``."""

    text: str
    pages: int
    scan: bytes | None = None


def model_input(data: bytes, *, max_pages: int, scanned_pdfs: str) -> ModelInput:
    """The model's input for ``data``: at most ``max_pages`` pages of text, or of a scan.

    A PDF without a text layer is cut to ``max_pages`` pages for file input when
    ``scanned_pdfs`` is ``"file"``, else refused with ``BadDocumentError``.
    """
    text = pdf_text(data, max_pages=max_pages)
    if len(_PAGE_MARKER.sub("", text).strip()) >= _MIN_TEXT:
        return ModelInput(text=text, pages=len(_PAGE_MARKER.findall(text)))
    if scanned_pdfs != "file":
        raise BadDocumentError(
            "no text layer (scanned PDF), and [openai] scanned_pdfs = skip", stage="extract"
        )
    pdf, pages = first_pages(data, max_pages)
    return ModelInput(text=text, pages=pages, scan=pdf)
