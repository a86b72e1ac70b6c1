"""What a blob of bytes is, judged by its first bytes (never by a name or a Content-Type)."""

from __future__ import annotations

__all__ = ["PDF_MAGIC", "is_pdf"]

PDF_MAGIC = b"%PDF-"


def is_pdf(data: bytes) -> bool:
    """True when the bytes start like a PDF (allowing the few junk bytes readers accept)."""
    return PDF_MAGIC in data[:1024]
