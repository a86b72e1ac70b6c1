"""The sample Maildir in examples/: reproducible, and each mail walks as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from invoicesync.errors import MalformedMailError
from invoicesync.extract.pdf import pdf_text
from invoicesync.mail.local import LOCAL_FOLDER, open_local_source
from invoicesync.mail.mime import parse_mail
from invoicesync.models import ParsedMail

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MAILBOX = EXAMPLES / "mailbox"
CORPUS = ROOT / "tests" / "corpus"


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
    """Each file in examples/documents/ is byte-identical to its tests/corpus original."""
    documents = sorted((EXAMPLES / "documents").glob("*.pdf"))
    assert len(documents) == 10
    for document in documents:
        [original] = list(CORPUS.glob(f"*/{document.name}"))
        assert document.read_bytes() == original.read_bytes(), document.name


def test_maildir_source_lists_every_sample_mail() -> None:
    """The sample Maildir yields 18 distinct messages (the .gitkeep files are skipped)."""
    source = open_local_source("sample", MAILBOX)
    refs = list(source.scan(LOCAL_FOLDER))
    assert len({ref.key for ref in refs}) == len(refs) == 18
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
    assert attachment.data == (EXAMPLES / "documents" / filename).read_bytes()


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
