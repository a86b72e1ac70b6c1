"""The corpus's e-invoice PDFs, attachments stripped, reach the model as their text.

Every ``zugferd-corpus`` PDF carries its own answer as embedded XML, so the pipeline
never asks a model about it. Stripped of its attachments, the same PDF takes the model
path: these tests prove the strip (the e-invoice extractor finds nothing any more) and
then check, against the loopback OpenAI server, that the request holds the document's
text between the prompt's markers, including the invoice number that the embedded XML
(the ground truth) states, and no file part.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from typing import Any

import pytest
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, NameObject

from invoicesync.config import RetrySettings
from invoicesync.extract.einvoice import EInvoiceExtractor, find_invoice_xml, parse_einvoice
from invoicesync.extract.openai import OpenAIExtractor
from invoicesync.extract.pdf import embedded_files, pdf_text
from invoicesync.extract.prompt import BEGIN_DOCUMENT, END_DOCUMENT
from invoicesync.models import Invoice
from invoicesync.resilience.retry import RetryPolicy
from tests.conftest import CORPUS
from tests.openai_server import OpenAIServer, invoice_reply

API_KEY = "sk-test-0123456789abcdefSECRET"
MODEL = "gpt-test"
# More pages than any corpus PDF has, so that the whole text layer goes to the model.
MAX_PAGES = 10
# The extractor's own rule: fewer characters than this, page markers aside, is no text layer.
_MIN_TEXT = 50
_PAGE_MARKER = re.compile(r"^--- page \d+ ---$", re.MULTILINE)
_SURROGATE = re.compile("[\ud800-\udfff]")

# PDFs that do not print their XML's invoice number verbatim (tests/corpus/README.md): the
# ZF1 insurance samples print only the policy number "00.123.456.7", while the XML's BT-1 is
# "00.123.456.7-2014-1". For these the request is checked for the printed policy number and
# the seller's name instead. The list is exact: a PDF that prints its number must not be here.
NUMBER_PRINTED_DIFFERENTLY = {
    "zugferd-corpus/ZF1_COMFORT_Kraftfahrversicherung_Bruttopreise.pdf": "00.123.456.7",
    "zugferd-corpus/ZF1_COMFORT_Sachversicherung_berechneter_Steuersatz.pdf": "00.123.456.7",
}


def strip_attachments(data: bytes) -> bytes:
    """The PDF rewritten without embedded files: catalog /Names /EmbeddedFiles and /AF,
    page-level /AF and file attachment annotations.

    The references are removed on the reader before the document is cloned: cloning
    copies only what the catalog still reaches, so the file streams themselves are gone
    from the new bytes, not just unreferenced.
    """
    reader = PdfReader(io.BytesIO(data))
    root = reader.root_object
    names = root.get("/Names")
    if names is not None:
        names = names.get_object()
        names.pop("/EmbeddedFiles", None)
        if not names:
            del root["/Names"]
    root.pop("/AF", None)
    for page in reader.pages:
        page.pop("/AF", None)
        annots = page.get("/Annots")
        if annots is None:
            continue
        kept = [
            annot
            for annot in annots.get_object()
            if annot.get_object().get("/Subtype") != "/FileAttachment"
        ]
        if kept:
            page[NameObject("/Annots")] = ArrayObject(kept)
        else:
            del page["/Annots"]
    writer = PdfWriter(clone_from=reader)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _has_text_layer(data: bytes) -> bool:
    return len(_PAGE_MARKER.sub("", pdf_text(data)).strip()) >= _MIN_TEXT


def _has_invoice_xml(data: bytes) -> bool:
    return find_invoice_xml(embedded_files(data)) is not None


def _without_surrogates(text: str) -> str:
    """The text without surrogates and U+FFFD (what pdf_text puts for a lone one)."""
    return _SURROGATE.sub("", text).replace("\ufffd", "")


ALL_PDFS = sorted(path.relative_to(CORPUS).as_posix() for path in CORPUS.rglob("*.pdf"))
# Computed from the files: every corpus PDF with a text layer and an embedded invoice XML.
MODEL_PDFS = [
    name
    for name in ALL_PDFS
    if _has_invoice_xml(data := (CORPUS / name).read_bytes()) and _has_text_layer(data)
]


@functools.cache
def _original(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@functools.cache
def _stripped(name: str) -> bytes:
    return strip_attachments(_original(name))


@functools.cache
def _ground_truth_numbers(name: str) -> frozenset[str | None]:
    """The invoice numbers of the PDF's ground-truth XML files listed in MANIFEST.csv."""
    with (CORPUS / "MANIFEST.csv").open(newline="", encoding="utf-8") as manifest:
        rows = list(csv.DictReader(manifest))
    folder, pdf = name.rsplit("/", 1)
    files = [
        row["file"]
        for row in rows
        if row["role"] == "ground_truth"
        and row["ground_truth_for"] == pdf
        and row["file"].startswith(folder + "/")
        and row["file"].endswith(".xml")
    ]
    assert files, f"no ground-truth XML for {name} in MANIFEST.csv"
    invoices = [parse_einvoice((CORPUS / file).read_bytes()) for file in files]
    return frozenset(invoice.invoice_number if invoice else None for invoice in invoices)


def _extractor(server: OpenAIServer) -> OpenAIExtractor:
    policy = RetryPolicy(RetrySettings(time_scale=0), stage="extract", attempts=1)
    return OpenAIExtractor(
        api_key=API_KEY,
        model=MODEL,
        base_url=server.url,
        timeout=5.0,
        max_pages=MAX_PAGES,
        retry=policy,
    )


def _message_text(content: Any) -> tuple[str, list[Any]]:
    """A message's text, and its parts that are not text (for list-of-parts content)."""
    if isinstance(content, str):
        return content, []
    assert isinstance(content, list), content
    texts = [part["text"] for part in content if part.get("type") == "text"]
    return "\n".join(texts), [part for part in content if part.get("type") != "text"]


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_the_corpus_has_text_pdfs_with_embedded_xml() -> None:
    """The parametrized list below is not silently empty or tiny."""
    assert len(MODEL_PDFS) >= 10, MODEL_PDFS
    assert set(NUMBER_PRINTED_DIFFERENTLY) <= set(MODEL_PDFS)


@pytest.mark.parametrize("name", ALL_PDFS)
def test_strip_removes_the_e_invoice(name: str) -> None:
    """After the strip, no e-invoice is found; the text layer is unchanged."""
    original, stripped = _original(name), _stripped(name)
    if _has_invoice_xml(original):
        assert isinstance(EInvoiceExtractor().extract(original), Invoice)
    assert embedded_files(stripped) == []
    # pypdf writes object dictionaries uncompressed: no file specification or file stream is left.
    assert b"/EmbeddedFile" not in stripped and b"/Filespec" not in stripped
    assert EInvoiceExtractor().extract(stripped) is None
    assert pdf_text(stripped) == pdf_text(original)


@pytest.mark.parametrize("name", MODEL_PDFS)
def test_stripped_pdf_reaches_the_model_as_text(name: str, openai_server: OpenAIServer) -> None:
    """The request carries the PDF's text between the markers, with its invoice number."""
    truth = EInvoiceExtractor().extract(_original(name))
    assert truth is not None and truth.invoice_number
    assert _ground_truth_numbers(name) == {truth.invoice_number}
    stripped = _stripped(name)
    assert EInvoiceExtractor().extract(stripped) is None
    text = pdf_text(stripped)
    assert len(PdfReader(io.BytesIO(stripped)).pages) <= MAX_PAGES

    openai_server.script(invoice_reply())
    extractor = _extractor(openai_server)
    try:
        invoice = extractor.extract(stripped, filename=name.rsplit("/", 1)[-1])
    finally:
        extractor.close()
    assert invoice is not None and invoice.provenance.extractor == "openai"

    [request] = openai_server.requests
    messages = request["messages"]
    assert [message["role"] for message in messages] == ["system", "user"]
    user, other_parts = _message_text(messages[1]["content"])
    assert user.count(BEGIN_DOCUMENT) == 1 and user.count(END_DOCUMENT) == 1
    body = user.split(BEGIN_DOCUMENT, 1)[1].split(END_DOCUMENT, 1)[0]
    # The whole text layer, inside the data block, encodable (no lone surrogates).
    assert _without_surrogates(text) in _without_surrogates(body)
    body.encode("utf-8")

    number = truth.invoice_number
    printed = NUMBER_PRINTED_DIFFERENTLY.get(name)
    if number in text:
        assert printed is None, f"{name} prints {number!r}: drop it from the fallback list"
        assert number in body
    else:
        assert printed is not None, f"{name} does not print {number!r}: explain and list it"
        assert truth.seller is not None and truth.seller.name
        assert printed in body
        assert _squash(truth.seller.name) in _squash(body)

    # A text PDF goes as text only: no file or image part, no base64 of the PDF.
    assert other_parts == []
    for message in messages:
        assert _message_text(message["content"])[1] == []
    dump = json.dumps(request)
    assert "file_data" not in dump and "image_url" not in dump
    assert "base64" not in dump and "JVBERi0" not in dump  # JVBERi0 = base64 of "%PDF-"
