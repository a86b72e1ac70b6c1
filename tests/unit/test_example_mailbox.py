"""The sample Maildir in examples/: reproducible, and each mail walks as documented."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from invoicesync.errors import MalformedMailError, UnsafeXmlError
from invoicesync.extract.einvoice import EInvoiceExtractor, find_invoice_xml, parse_einvoice
from invoicesync.extract.pdf import embedded_files, open_pdf, pdf_text
from invoicesync.mail.local import LOCAL_FOLDER, open_local_source
from invoicesync.mail.mime import parse_mail
from invoicesync.models import ParsedMail

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MAILBOX = EXAMPLES / "mailbox"
DOCUMENTS = EXAMPLES / "documents"
CORPUS = ROOT / "tests" / "corpus"
# The one file in documents/ that is not a corpus copy: derived from it (see examples/README.md).
RENDERING = "XR_EN16931_Rechnungskorrektur_rendering.pdf"
RENDERING_OF = "XR_EN16931_Rechnungskorrektur.pdf"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _mails() -> list[bytes]:
    return [path.read_bytes() for path in sorted((MAILBOX / "cur").iterdir())]


def _parsed(number: int) -> ParsedMail:
    return parse_mail(_mails()[number - 1])


def test_build_script_regenerates_the_mailbox_byte_for_byte(tmp_path: Path) -> None:
    """Running examples/build_mailbox.py into a fresh directory reproduces examples/mailbox."""
    out = tmp_path / "mailbox"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "build_mailbox.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    rebuilt, committed = _tree(out), _tree(MAILBOX)
    assert sorted(rebuilt) == sorted(committed)
    assert [name for name in committed if rebuilt[name] != committed[name]] == []


def test_documents_are_unmodified_corpus_copies() -> None:
    """Every file in examples/documents/ except the derived rendering equals its corpus original."""
    documents = sorted(path for path in DOCUMENTS.iterdir() if path.name != RENDERING)
    assert [path.suffix for path in documents].count(".pdf") == 11
    assert [path.suffix for path in documents].count(".xml") == 4
    assert len(documents) == 15
    for document in documents:
        [original] = list(CORPUS.glob(f"*/{document.name}"))
        assert document.read_bytes() == original.read_bytes(), document.name


def test_rendering_pdf_is_its_original_without_the_xml() -> None:
    """The derived rendering PDF has no embedded files, the same pages and the same text."""
    original = (CORPUS / "zugferd-corpus" / RENDERING_OF).read_bytes()
    rendering = (DOCUMENTS / RENDERING).read_bytes()
    assert [name for name, _ in embedded_files(original)] == ["factur-x.xml"]
    assert embedded_files(rendering) == []
    before, after = open_pdf(original), open_pdf(rendering)
    assert len(after.pages) == len(before.pages) == 4
    assert "/AF" not in after.root_object and "/Names" not in after.root_object
    for old_page, new_page in zip(before.pages, after.pages, strict=True):
        old, new = old_page.get_contents(), new_page.get_contents()
        assert old is not None and new is not None
        assert new.get_data() == old.get_data()  # the page content streams are untouched
    text = pdf_text(rendering)
    assert text == pdf_text(original)
    assert "RK21012345" in text


def test_maildir_source_lists_every_sample_mail() -> None:
    """The sample Maildir yields 24 distinct messages (the .gitkeep files are skipped)."""
    source = open_local_source("sample", MAILBOX)
    refs = list(source.scan(LOCAL_FOLDER))
    assert len({ref.key for ref in refs}) == len(refs) == 24
    assert source.fetch(refs[0]) == _mails()[0]


@pytest.mark.parametrize(
    ("number", "filename"),
    [
        (1, "saeco.pdf"),
        (2, "AmazonWebServices.pdf"),
        (3, "QualityHosting.pdf"),
        (4, "NetpresseInvoice.pdf"),
        (5, "XR_EN16931_Einfach.pdf"),
        (6, "ZF20_BASIC_Taxifahrt.pdf"),
        (7, "ZF1_COMFORT_Einfach.pdf"),
        (10, "saeco.pdf"),
    ],
)
def test_invoice_mails_carry_the_corpus_pdf(number: int, filename: str) -> None:
    """Mails 1-7 and the reminder carry their PDF unchanged, once."""
    [attachment] = _parsed(number).attachments
    assert attachment.filename == filename
    assert attachment.data == (DOCUMENTS / filename).read_bytes()


def test_encoded_filenames_are_decoded() -> None:
    """Mail 8 (RFC 2047 name) and mail 9 (octet-stream, RFC 2231 name) are PDFs with their names."""
    [facture] = _parsed(8).attachments
    [rechnung] = _parsed(9).attachments
    assert facture.filename == "Facture électronique FA-2017-0010.pdf"
    assert (rechnung.filename, rechnung.content_type) == (
        "Rechnung_März.pdf",
        "application/octet-stream",
    )
    assert rechnung.kind == "pdf"


def test_forwarded_invoice_is_nested() -> None:
    """Mail 11 holds free_fiber.pdf inside a forwarded message/rfc822."""
    [attachment] = _parsed(11).attachments
    assert (attachment.filename, attachment.nested) == ("free_fiber.pdf", True)


def test_decoys() -> None:
    """Newsletter, terms PDF, truncated PDF and HTML-as-PDF come out as documented."""
    newsletter = _parsed(12)
    assert newsletter.attachments == []
    assert "https://www.nordwind.example/newsletter/abmelden?id=4711&t=x9" in newsletter.links
    [terms] = _parsed(13).attachments
    assert "not an invoice" in pdf_text(terms.data)
    [broken] = _parsed(14).attachments
    assert (broken.filename, len(broken.data)) == ("invoice-broken.pdf", 3000)
    html = _parsed(15)
    assert html.attachments == []
    assert html.skipped == ["invoice.pdf: not a PDF (starts with '<html')"]


def test_download_link_is_recorded() -> None:
    """Mail 16 has no attachment but the invoice link."""
    parsed = _parsed(16)
    assert parsed.attachments == []
    assert parsed.links[0] == "https://billing.example.com/invoices/INV-2024-001.pdf"


@pytest.mark.parametrize(
    ("number", "reason"),
    [(17, r"scan_0001\.pdf: base64 body cannot be decoded"), (18, "not a mail")],
)
def test_malformed_mails_fail_with_reason(number: int, reason: str) -> None:
    """Mails 17 and 18 raise MalformedMailError with a reason."""
    with pytest.raises(MalformedMailError, match=reason):
        _parsed(number)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (19, [("E2018092011804.xml", "application/xml", "xml", "XR_EN16931_OEPNV.ubl.xml")]),
        (
            20,
            [
                ("Rechnungskorrektur_RK21012345.pdf", "application/pdf", "pdf", RENDERING),
                (
                    "Rechnungskorrektur_RK21012345.xml",
                    "text/xml",
                    "xml",
                    "XR_EN16931_Rechnungskorrektur.cii.xml",
                ),
            ],
        ),
        (
            21,
            [
                (
                    "RK21012345.xml",
                    "application/octet-stream",
                    "xml",
                    "XR_EN16931_Rechnungskorrektur.ubl.xml",
                )
            ],
        ),
        (
            22,
            [
                (
                    "R87654321012345.pdf",
                    "application/pdf",
                    "pdf",
                    "ZF20_EXTENDED_Warenrechnung.pdf",
                ),
                # No Content-Type header on the part: reported as unknown binary, sniffed as XML.
                (
                    "zugferd-invoice.xml",
                    "application/octet-stream",
                    "xml",
                    "ZF20_EXTENDED_Warenrechnung.xml",
                ),
            ],
        ),
    ],
)
def test_einvoice_mails_carry_their_documents(
    number: int, expected: list[tuple[str, str, str, str]]
) -> None:
    """Mails 19-22 carry their XML (and PDF) unchanged, each typed and named as documented."""
    parsed = _parsed(number)
    assert parsed.skipped == []
    found = [(a.filename, a.content_type, a.kind, a.data) for a in parsed.attachments]
    assert found == [
        (filename, ctype, kind, (DOCUMENTS / name).read_bytes())
        for filename, ctype, kind, name in expected
    ]


def _xml_invoices(number: int) -> list[tuple[str, Decimal, str, str]]:
    found = []
    for attachment in _parsed(number).attachments:
        invoice = EInvoiceExtractor().extract(attachment.data)
        if invoice is not None:
            assert invoice.gross_total is not None and invoice.provenance.syntax is not None
            found.append(
                (
                    invoice.invoice_number or "",
                    invoice.gross_total,
                    invoice.document_type.value,
                    invoice.provenance.syntax,
                )
            )
    return found


def test_einvoice_mails_give_the_documented_invoices() -> None:
    """The e-invoice extractor reads the invoices the README lists for mails 19-22 from XML."""
    assert _xml_invoices(19) == [("E2018092011804", Decimal("9.00"), "invoice", "UBL")]
    # Mail 20: the rendering PDF has no XML; the invoice comes from the CII file beside it.
    assert _xml_invoices(20) == [("RK21012345", Decimal("-8.79"), "corrected", "CII")]
    assert _xml_invoices(21) == [("RK21012345", Decimal("-8.79"), "corrected", "UBL")]
    # Mail 22: the PDF embeds exactly the bytes of the bare XML, so both give one invoice.
    assert _xml_invoices(22) == [("R87654321012345", Decimal("518.99"), "invoice", "CII")] * 2


def test_resent_ubl_is_the_same_invoice_as_the_cii() -> None:
    """Mail 21 (UBL) and mail 20 (CII) agree on everything but syntax and profile."""
    [_, cii] = _parsed(20).attachments
    [ubl] = _parsed(21).attachments
    first, second = parse_einvoice(cii.data), parse_einvoice(ubl.data)
    assert first is not None and second is not None
    assert first.provenance.syntax == "CII" and second.provenance.syntax == "UBL"
    assert first.model_dump(exclude={"provenance"}) == second.model_dump(exclude={"provenance"})


def test_facturx_pdf_embeds_the_attached_xml() -> None:
    """In mail 22 the bare XML is byte-identical to the PDF's embedded zugferd-invoice.xml."""
    pdf, xml = _parsed(22).attachments
    assert find_invoice_xml(embedded_files(pdf.data)) == xml.data


def test_non_invoice_xml_gives_no_invoice() -> None:
    """Mail 23's SEPA pain.001 file is found as XML but is no e-invoice."""
    [attachment] = _parsed(23).attachments
    assert (attachment.filename, attachment.kind) == ("sepa-payment.xml", "xml")
    assert b"urn:iso:std:iso:20022:tech:xsd:pain.001.001.03" in attachment.data
    assert parse_einvoice(attachment.data) is None
    assert EInvoiceExtractor().extract(attachment.data) is None


def test_billion_laughs_is_refused_unexpanded() -> None:
    """Mail 24's nested-entity XML is found, then refused as unsafe before any expansion."""
    [attachment] = _parsed(24).attachments
    assert (attachment.filename, attachment.kind) == ("invoice.xml", "xml")
    assert attachment.data.count(b"<!ENTITY") == 10
    assert len(attachment.data) < 2000
    with pytest.raises(UnsafeXmlError, match="DOCTYPE declaration refused"):
        EInvoiceExtractor().extract(attachment.data)
