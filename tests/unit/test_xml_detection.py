"""Bare XML e-invoices in mail: found by the MIME walker whatever the part's type, read exactly."""

from __future__ import annotations

import functools
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from invoicesync.extract.einvoice import EInvoiceExtractor, parse_einvoice
from invoicesync.mail.mime import parse_mail
from invoicesync.models import Attachment, Invoice

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "zugferd-corpus"
# Every standalone UBL and CII invoice of the corpus (the ground truth of its Factur-X PDFs).
EINVOICES = sorted(
    path.name for pattern in ("*.ubl.xml", "*.cii.xml") for path in CORPUS.glob(pattern)
)

# How the file is attached: (Content-Type written, or None for no header; filename or None).
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "application/xml": ("application/xml", "invoice.xml"),
    "text/xml": ("text/xml", "invoice.xml"),
    "application/octet-stream": ("application/octet-stream", "invoice.xml"),
    "no Content-Type": (None, "invoice.xml"),
    "application/octet-stream, no filename": ("application/octet-stream", None),
    "no Content-Type, no filename": (None, None),
}

PAIN_001 = b"""\
<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">
  <CstmrCdtTrfInitn>
    <GrpHdr>
      <MsgId>MSG-20240311-1</MsgId>
      <CreDtTm>2024-03-11T08:55:00</CreDtTm>
      <NbOfTxs>1</NbOfTxs>
      <CtrlSum>529.87</CtrlSum>
      <InitgPty><Nm>Strukan GmbH</Nm></InitgPty>
    </GrpHdr>
    <PmtInf>
      <PmtInfId>PMT-20240311-1</PmtInfId>
      <PmtMtd>TRF</PmtMtd>
      <NbOfTxs>1</NbOfTxs>
      <CtrlSum>529.87</CtrlSum>
      <ReqdExctnDt>2024-03-12</ReqdExctnDt>
      <Dbtr><Nm>Strukan GmbH</Nm></Dbtr>
      <DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct>
      <ChrgBr>SLEV</ChrgBr>
      <CdtTrfTxInf>
        <PmtId><EndToEndId>RE-471102</EndToEndId></PmtId>
        <Amt><InstdAmt Ccy="EUR">529.87</InstdAmt></Amt>
        <Cdtr><Nm>Lieferant GmbH</Nm></Cdtr>
        <CdtrAcct><Id><IBAN>DE02120300000000202051</IBAN></Id></CdtrAcct>
        <RmtInf><Ustrd>Rechnung 471102</Ustrd></RmtInf>
      </CdtTrfTxInf>
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>
"""

XMLDSIG = b"""\
<?xml version="1.0" encoding="UTF-8"?>
<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Id="sig-invoice-471102">
  <ds:SignedInfo>
    <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
    <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
    <ds:Reference URI="invoice.xml">
      <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
      <ds:DigestValue>47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=</ds:DigestValue>
    </ds:Reference>
  </ds:SignedInfo>
  <ds:SignatureValue>bm90IGEgcmVhbCBzaWduYXR1cmU=</ds:SignatureValue>
</ds:Signature>
"""

NOT_INVOICES = {"SEPA pain.001": PAIN_001, "XML-DSig signature": XMLDSIG}


@functools.cache
def _file(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@functools.cache
def _truth(name: str) -> Invoice:
    invoice = parse_einvoice(_file(name))
    assert invoice is not None, name
    return invoice


def _mail(subject: str = "Rechnung 471102") -> EmailMessage:
    msg = EmailMessage(policy=policy.default)
    msg["From"] = "Lieferant GmbH <rechnung@lieferant.example>"
    msg["To"] = "buchhaltung@strukan.example"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 05 Mar 2024 10:00:00 +0100"
    msg["Message-ID"] = "<471102@lieferant.example>"
    msg.set_content("Guten Tag,\n\nanbei die Rechnung als XML.")
    return msg


def _attach(msg: EmailMessage, data: bytes, content_type: str | None, filename: str | None) -> None:
    """Attach ``data`` base64-encoded; ``content_type=None`` leaves the part without the header."""
    maintype, subtype = (content_type or "application/octet-stream").split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    *_, part = msg.iter_attachments()
    assert isinstance(part, EmailMessage)
    if filename is None:
        del part["Content-Disposition"]
        part["Content-Disposition"] = "attachment"
    if content_type is None:
        del part["Content-Type"]


def _raw(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=policy.default)


def _only_xml(raw: bytes) -> Attachment:
    parsed = parse_mail(raw)
    assert parsed.skipped == []
    [attachment] = parsed.attachments
    assert attachment.kind == "xml"
    return attachment


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", EINVOICES)
def test_bare_einvoice_is_found_and_read(name: str, variant: str) -> None:
    """A corpus UBL/CII file attached under each type is one XML document, read exactly."""
    content_type, filename = VARIANTS[variant]
    msg = _mail()
    _attach(msg, _file(name), content_type, filename)
    attachment = _only_xml(_raw(msg))
    assert attachment.data == _file(name)
    assert attachment.filename == filename
    assert attachment.content_type == (content_type or "application/octet-stream")
    assert attachment.nested is False
    assert EInvoiceExtractor().extract(attachment.data, filename=filename) == _truth(name)


@pytest.mark.parametrize("name", EINVOICES)
def test_forwarded_einvoice_is_found_nested(name: str) -> None:
    """A corpus UBL/CII file inside a forwarded message/rfc822 is found, marked nested."""
    original = _mail()
    _attach(original, _file(name), "application/xml", name)
    forward = _mail(subject="Fwd: Rechnung 471102")
    forward.add_attachment(original)
    attachment = _only_xml(_raw(forward))
    assert (attachment.filename, attachment.nested) == (name, True)
    assert attachment.data == _file(name)
    assert EInvoiceExtractor().extract(attachment.data) == _truth(name)


@pytest.mark.parametrize("name", EINVOICES)
def test_8bit_text_xml_in_a_crlf_mail(name: str) -> None:
    """Unencoded text/xml in a CRLF mail (as IMAP delivers it) gives the same invoice."""
    body = _file(name).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    raw = (
        b"From: rechnung@lieferant.example\r\nSubject: Rechnung\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nanbei die Rechnung\r\n"
        b"--b\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b'Content-Disposition: attachment; filename="'
        + name.encode()
        + b'"\r\n\r\n'
        + body
        + b"\r\n--b--\r\n"
    )
    attachment = _only_xml(raw)
    assert attachment.data == body  # the line ends are the mail's, the XML is the same
    assert EInvoiceExtractor().extract(attachment.data) == _truth(name)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("label", list(NOT_INVOICES))
def test_non_invoice_xml_is_found_but_no_invoice(label: str, variant: str) -> None:
    """A SEPA pain.001 file or an XML-DSig signature is an XML document with no invoice in it."""
    content_type, filename = VARIANTS[variant]
    data = NOT_INVOICES[label]
    msg = _mail(subject=label)
    _attach(msg, data, content_type, filename)
    attachment = _only_xml(_raw(msg))
    assert attachment.data == data
    assert parse_einvoice(attachment.data) is None
    assert EInvoiceExtractor().extract(attachment.data) is None


def test_the_corpus_has_both_syntaxes() -> None:
    """The parametrisation covers every UBL and CII file (14 of each at the time of writing)."""
    assert sum(name.endswith(".ubl.xml") for name in EINVOICES) >= 14
    assert sum(name.endswith(".cii.xml") for name in EINVOICES) >= 14
