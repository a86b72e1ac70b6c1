"""PDF access: text layer (PDFium), embedded files and page cuts (pypdf).

pypdf opens every file first and decides what is broken, truncated or locked by
a password. The text is then read by PDFium (pypdfium2): 13 times faster than
pypdf's text extraction, with exactly the same fields right on the corpus for
the offline extractor (``bench/README.md``).

Every failure on hostile or broken input becomes a ``BadDocumentError``: pypdf
raises a wide range of exception types on malformed files (its own
``PdfReadError`` but also ``ValueError``, ``KeyError``, ``RecursionError`` ...),
so the translation here is deliberately broad.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from invoicesync.errors import BadDocumentError

if TYPE_CHECKING:
    from pypdf import PdfReader
from invoicesync.sniff import PDF_MAGIC, is_pdf

__all__ = ["PDF_MAGIC", "embedded_files", "first_pages", "is_pdf", "open_pdf", "pdf_text"]

# pypdf logs every recoverable oddity at WARNING; in a mail pipeline these are noise.
logging.getLogger("pypdf").setLevel(logging.ERROR)
_log = logging.getLogger(__name__)
# PDFium is not thread-safe, not even for different documents: one call at a time.
_PDFIUM = threading.Lock()
# PDFium marks a hyphen at a line break as U+0002; pypdf and people write "-".
_PDFIUM_TEXT = str.maketrans({"\x02": "-"})


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except BadDocumentError:
        raise
    except Exception as exc:  # pypdf raises many types on broken input; see module docstring
        raise BadDocumentError(f"{what}: {type(exc).__name__}: {exc}", stage="extract") from exc


def open_pdf(data: bytes) -> PdfReader:
    """Open a PDF, refusing files that are not PDFs, are broken, or need a password."""
    if not is_pdf(data):
        raise BadDocumentError("not a PDF (no %PDF- header)", stage="extract")
    from pypdf import PdfReader  # imported by the first PDF: a run with none starts faster

    with _translated("broken PDF"):
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise BadDocumentError("encrypted PDF (password required)", stage="extract")
        _ = len(reader.pages)  # forces the page tree to load: catches truncated files early
    return reader


def _opens_without_password(reader: PdfReader) -> bool:
    # Many "encrypted" PDFs only restrict printing and open with the empty user password.
    try:
        return bool(reader.decrypt(""))
    except Exception:
        return False


def pdf_text(data: bytes, *, max_pages: int | None = None) -> str:
    """The text layer, one ``--- page N ---`` marker before each page."""
    pages = len(open_pdf(data).pages)
    if max_pages is not None:
        pages = min(pages, max_pages)
    import pypdfium2  # imported by the first PDF: a run with none starts faster

    parts: list[str] = []
    with _translated("unreadable PDF text"), _PDFIUM:
        document = pypdfium2.PdfDocument(data)
        try:
            for index in range(min(pages, len(document))):
                page = document[index]
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_bounded()
                finally:
                    textpage.close()
                    page.close()
                text = text.replace("\r\n", "\n").translate(_PDFIUM_TEXT)
                parts.append(f"--- page {index + 1} ---\n{_valid_unicode(text)}")
        finally:
            document.close()
    return "\n".join(parts)


def _valid_unicode(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD and split pairs joined.

    Some fonts' ToUnicode maps yield half of a surrogate pair (icons in the
    private use area); such a string cannot be encoded as UTF-8 for a request.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def first_pages(data: bytes, count: int) -> tuple[bytes, int]:
    """A PDF of the first ``count`` pages of ``data``, and how many pages it has.

    ``data`` itself when it has no more pages than that; otherwise a new file of
    only those pages (without the rest's content, attachments or metadata).
    """
    reader = open_pdf(data)
    total = len(reader.pages)
    if total <= count:
        return data, total
    from pypdf import PdfWriter

    with _translated("unreadable PDF pages"):
        writer = PdfWriter()
        for page in reader.pages[:count]:
            writer.add_page(page)
        out = io.BytesIO()
        writer.write(out)
    return out.getvalue(), count


def embedded_files(data: bytes, names: Collection[str] | None = None) -> list[tuple[str, bytes]]:
    """Files embedded in the PDF (name, content), in document order.

    With ``names`` (lowercase), only files of those names (any directory, any case) are
    read: a PDF may embed a 20 MB scan archive next to a 20 KB invoice XML.

    An entry that cannot be read (a file spec without its stream, a broken stream, a
    damaged name tree from there on) is left out, never an error: the embedded files are
    an extra, and the pages of such a PDF may still be read. Raises ``BadDocumentError``
    only for a PDF that cannot be opened at all (``open_pdf``).
    """
    reader = open_pdf(data)
    found = []
    entries = reader.attachment_list
    while True:
        try:  # pypdf walks the name tree lazily: any step of it may meet the damage
            attachment = next(entries)
        except StopIteration:
            break
        except Exception as exc:  # pypdf raises many types on broken input; see module docstring
            _log.info("embedded files: name tree unreadable, %s: %s", type(exc).__name__, exc)
            break
        try:
            name = attachment.name
            if names is not None and name.rsplit("/", 1)[-1].strip().lower() not in names:
                continue
            content = attachment.content
        except Exception as exc:
            _log.info("embedded file skipped, %s: %s", type(exc).__name__, exc)
            continue
        if content:
            found.append((name, content))
    return found
