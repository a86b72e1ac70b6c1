"""The e-invoice extractor: picks the embedded invoice XML by name and dispatches by syntax."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from pypdf import PdfWriter

from invoicesync.errors import BadDocumentError, UnsafeXmlError
from invoicesync.extract.base import Extractor
from invoicesync.extract.einvoice import (
    INVOICE_XML_NAMES,
    EInvoiceExtractor,
    find_invoice_xml,
    parse_einvoice,
)
from invoicesync.extract.pdf import embedded_files

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ZUGFERD = CORPUS / "zugferd-corpus"
EINVOICE_PDFS = sorted(ZUGFERD.glob("*.pdf"))
PLAIN_PDFS = sorted((CORPUS / "invoice2data").glob("*.pdf"))
EINFACH_CII = (ZUGFERD / "XR_EN16931_Einfach.cii.xml").read_bytes()


def _readme_table() -> dict[str, list[str]]:
    """tests/corpus/README.md "Files" table, zugferd-corpus rows: PDF stem → cells.

    Cells after the PDF: pages, text chars, embedded files, ground truth, invoice no.,
    issue date, type code, currency, grand total, lines, profile.
    """
    rows: dict[str, list[str]] = {}
    for line in (CORPUS / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| zugferd-corpus/"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[Path(cells[0]).stem] = cells[1:]
    return rows


README_TABLE = _readme_table()


def _ground_truth(pdf: Path) -> Path:
    """The XML the README names as the PDF's embedded invoice."""
    if pdf.stem == "XR_XRECHNUNG_Einfach":
        return pdf.with_name(f"{pdf.stem}.embedded.xml")
    if pdf.stem.startswith("XR_"):
        return pdf.with_name(f"{pdf.stem}.cii.xml")
    return pdf.with_name(f"{pdf.stem}.xml")


def _pdf_with(*attachments: tuple[str, bytes]) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    for name, data in attachments:
        writer.add_attachment(name, data)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_extractor_protocol() -> None:
    """EInvoiceExtractor is an Extractor named ``einvoice``."""
    extractor: Extractor = EInvoiceExtractor()
    assert extractor.name == "einvoice"


# ---------------------------------------------------------------- corpus PDFs


@pytest.mark.parametrize("pdf", EINVOICE_PDFS, ids=lambda path: path.name)
def test_pdf_equals_its_ground_truth_xml(pdf: Path) -> None:
    """Each Factur-X/ZUGFeRD PDF gives exactly the model of its embedded XML file."""
    from_pdf = EInvoiceExtractor().extract(pdf.read_bytes(), filename=pdf.name)
    assert from_pdf is not None
    assert from_pdf == parse_einvoice(_ground_truth(pdf).read_bytes())
    assert from_pdf.provenance.extractor == "einvoice"


def test_readme_covers_every_einvoice_pdf() -> None:
    """The README's table lists every e-invoice PDF of the corpus."""
    assert sorted(README_TABLE) == [pdf.stem for pdf in EINVOICE_PDFS]


@pytest.mark.parametrize("pdf", EINVOICE_PDFS, ids=lambda path: path.name)
def test_pdf_matches_the_readme_table(pdf: Path) -> None:
    """Number, date, type, currency, total, line count and profile are the README's."""
    number, issued, type_code, currency, total, lines, profile = README_TABLE[pdf.stem][4:]
    invoice = EInvoiceExtractor().extract(pdf.read_bytes())
    assert invoice is not None
    assert invoice.invoice_number == number
    assert invoice.issue_date == dt.date.fromisoformat(issued)
    assert (invoice.type_code, invoice.currency) == (type_code, currency)
    assert str(invoice.gross_total) == total
    assert len(invoice.line_items) == int(lines)
    assert invoice.provenance.einvoice_profile == profile


def test_invoice_xml_found_behind_other_attachments() -> None:
    """Elektron embeds a PNG and a PDF before factur-x.xml; the XML is still the one read."""
    pdf = (ZUGFERD / "XR_EN16931_Elektron.pdf").read_bytes()
    assert embedded_files(pdf)[0][0] == "EN16931_Elektron_Aufmass.png"
    invoice = EInvoiceExtractor().extract(pdf)
    assert invoice is not None
    assert invoice.invoice_number == "181301674"
    # Only the invoice XML is read: never a large scan or image beside it.
    wanted = embedded_files(pdf, names=INVOICE_XML_NAMES)
    assert [name for name, _ in wanted] == ["factur-x.xml"]
    assert wanted == [item for item in embedded_files(pdf) if item[0] == "factur-x.xml"]


@pytest.mark.parametrize("pdf", PLAIN_PDFS, ids=lambda path: path.name)
def test_pdf_without_embedded_xml_gives_none(pdf: Path) -> None:
    """A PDF with no embedded invoice XML gives None."""
    assert EInvoiceExtractor().extract(pdf.read_bytes()) is None


def test_truncated_pdf_is_bad_document() -> None:
    """A PDF cut in half raises BadDocumentError."""
    data = (ZUGFERD / "XR_EN16931_Einfach.pdf").read_bytes()
    with pytest.raises(BadDocumentError):
        EInvoiceExtractor().extract(data[: len(data) // 2])


# ----------------------------------------------------------- choice by name


def test_choice_is_by_name_not_position() -> None:
    """Logistics XML and images before the invoice are skipped; names match case-insensitively."""
    files = [
        ("additional_data-logistics-invoice-1.0-unique.xml", b"<logistics/>"),
        ("Aufmass.png", b"\x89PNG"),
        ("ZUGFeRD-invoice.xml", b"<invoice/>"),
    ]
    assert find_invoice_xml(files) == b"<invoice/>"
    assert find_invoice_xml(files[:2]) is None


def test_factur_x_name_is_preferred() -> None:
    """With several invoice names present, factur-x.xml wins over the ZUGFeRD 2.0 name."""
    files = [("zugferd-invoice.xml", b"<old/>"), ("FACTUR-X.XML", b"<new/>")]
    assert find_invoice_xml(files) == b"<new/>"


def test_invoice_under_another_name_is_ignored() -> None:
    """A valid invoice XML attached as notes.xml is not read."""
    assert EInvoiceExtractor().extract(_pdf_with(("notes.xml", EINFACH_CII))) is None


@pytest.mark.parametrize("name", ["factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml"])
def test_invoice_under_a_standard_name_is_read(name: str) -> None:
    """Each standard attachment name is read, also after another XML attachment."""
    pdf = _pdf_with(("other.xml", b"<other/>"), (name, EINFACH_CII))
    assert EInvoiceExtractor().extract(pdf) == parse_einvoice(EINFACH_CII)


def test_hostile_embedded_xml_is_refused() -> None:
    """An XXE payload in factur-x.xml raises UnsafeXmlError."""
    payload = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    with pytest.raises(UnsafeXmlError):
        EInvoiceExtractor().extract(_pdf_with(("factur-x.xml", payload)))


# ------------------------------------------------------------ standalone XML


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf", b"\n  "], ids=["plain", "bom", "blank"])
def test_standalone_xml_is_parsed(prefix: bytes) -> None:
    """XML bytes (after a BOM or blank lines) go straight to parse_einvoice."""
    data = (ZUGFERD / "XR_EN16931_Einfach.ubl.xml").read_bytes()
    invoice = EInvoiceExtractor().extract(prefix + data.lstrip(b"\xef\xbb\xbf"))
    assert invoice is not None
    assert invoice == parse_einvoice(data)


@pytest.mark.parametrize(
    "document",
    [
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">'
        b"<CstmrCdtTrfInitn><GrpHdr><MsgId>1</MsgId></GrpHdr></CstmrCdtTrfInitn></Document>",
        b'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/>'
        b"</ds:Signature>",
        b'<CrossIndustryInvoice xmlns="urn:example:not-cii"/>',
        b"<Invoice/>",
    ],
    ids=["sepa-pain", "xmldsig", "foreign-namespace", "no-namespace"],
)
def test_other_xml_gives_none(document: bytes) -> None:
    """Well-formed XML that is not a UBL/CII/ZUGFeRD 1 invoice gives None."""
    assert parse_einvoice(document) is None
    assert EInvoiceExtractor().extract(document) is None


def test_non_document_bytes_give_none() -> None:
    """Bytes that are neither PDF nor XML (an image) give None."""
    assert EInvoiceExtractor().extract(b"\x89PNG\r\n\x1a\n" + bytes(64)) is None


def test_every_corpus_xml_is_an_invoice_of_its_syntax() -> None:
    """Every corpus XML file parses, with the syntax its name announces."""
    expected = {"ubl": "UBL", "ZF1": "ZUGFeRD1"}
    for path in sorted(ZUGFERD.glob("*.xml")):
        invoice = parse_einvoice(path.read_bytes())
        assert invoice is not None, path.name
        kind = "ubl" if path.name.endswith(".ubl.xml") else path.name.split("_")[0]
        assert invoice.provenance.syntax == expected.get(kind, "CII"), path.name
