"""The text layer: PDFium's text, checked by pypdf first, safe from several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from invoicesync.errors import BadDocumentError
from invoicesync.extract.pdf import pdf_text

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
PDFS = sorted(CORPUS.glob("*/*.pdf"))


def test_text_has_page_markers_plain_line_breaks_and_hyphens() -> None:
    """Every page is marked; PDFium's CRLF and its U+0002 line-break hyphen are normalised."""
    texts = {path.name: pdf_text(path.read_bytes()) for path in PDFS}
    assert len(texts) >= 30
    assert all(text.startswith("--- page 1 ---\n") for text in texts.values())
    assert not any("\r" in text or "\x02" in text for text in texts.values())
    assert "Rechnung" in texts["XR_EN16931_Einfach.pdf"]
    assert "471102" in texts["XR_EN16931_Einfach.pdf"]  # the invoice number printed on it


def test_max_pages_cuts_the_text() -> None:
    longest = max(PDFS, key=lambda path: pdf_text(path.read_bytes()).count("--- page "))
    whole = pdf_text(longest.read_bytes())
    assert whole.count("--- page ") >= 2
    first = pdf_text(longest.read_bytes(), max_pages=1)
    assert first.count("--- page ") == 1 and whole.startswith(first)


def test_threads_get_the_same_text_as_one_after_another() -> None:
    """PDFium is not thread-safe: calls from several threads must still give exact results."""
    datas = [path.read_bytes() for path in PDFS] * 3
    serial = [pdf_text(data) for data in datas]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(pdf_text, datas)) == serial


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_files_are_refused_before_reading_text(cut: float) -> None:
    data = (CORPUS / "invoice2data" / "saeco.pdf").read_bytes()
    with pytest.raises(BadDocumentError):
        pdf_text(data[: int(len(data) * cut)])
