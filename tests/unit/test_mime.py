"""The MIME walker: documents, filenames, sniffing, nesting, links, headers, malformed mail."""

from __future__ import annotations

import base64
import datetime as dt
from email import policy
from email.message import EmailMessage
from email.parser import BytesFeedParser, BytesParser
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoicesync.errors import InvoiceSyncError, MalformedMailError
from invoicesync.mail import mime
from invoicesync.mail.mime import MAX_DEPTH, MAX_PARTS, _payload, parse_mail

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
OTHER_PDF = PDF.replace(b"1.4", b"1.7")
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<rsm:CrossIndustryInvoice xmlns:rsm="urn:x"/>\n'
HEADERS = (
    b"From: Lieferant GmbH <rechnung@lieferant.example>\n"
    b"To: buchhaltung@example.com\n"
    b"Subject: Rechnung 4711\n"
    b"Date: Tue, 05 Mar 2024 10:00:00 +0100\n"
    b"Message-ID: <4711@lieferant.example>\n"
)


def _mail(body: str = "Guten Tag, anbei die Rechnung.") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Lieferant GmbH <rechnung@lieferant.example>"
    msg["Subject"] = "Rechnung 4711"
    msg["Date"] = "Tue, 05 Mar 2024 10:00:00 +0100"
    msg["Message-ID"] = "<4711@lieferant.example>"
    msg.set_content(body)
    return msg


def _part(headers: str, body: bytes) -> bytes:
    return headers.strip().encode() + b"\n\n" + body


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


def _multipart(*parts: bytes, headers: bytes = HEADERS) -> bytes:
    body = b"".join(b"--BOUND\n" + part + b"\n" for part in parts) + b"--BOUND--\n"
    return (
        headers + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="BOUND"\n\n' + body
    )


def _pdf_part(headers: str, data: bytes = PDF) -> bytes:
    return _part(headers + "\nContent-Transfer-Encoding: base64", _b64(data))


# ---------------------------------------------------------------- documents


def test_pdf_attachment_is_found() -> None:
    """An application/pdf attachment comes back with its name, type and bytes."""
    msg = _mail()
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="rechnung.pdf")
    parsed = parse_mail(msg.as_bytes())
    [attachment] = parsed.attachments
    assert attachment.filename == "rechnung.pdf"
    assert (attachment.kind, attachment.content_type) == ("pdf", "application/pdf")
    assert attachment.data == PDF
    assert attachment.nested is False
    assert parsed.skipped == []


def test_inline_pdf_is_found() -> None:
    """A PDF with Content-Disposition inline counts like an attachment."""
    raw = _multipart(
        _part("Content-Type: text/plain", b"siehe unten"),
        _pdf_part("Content-Type: application/pdf\nContent-Disposition: inline; filename=r.pdf"),
    )
    assert [a.filename for a in parse_mail(raw).attachments] == ["r.pdf"]


def test_single_part_pdf_mail_is_found() -> None:
    """A mail whose whole body is the PDF is found too."""
    raw = HEADERS + _pdf_part("Content-Type: application/pdf; name=invoice.pdf")
    assert [a.data for a in parse_mail(raw).attachments] == [PDF]


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Type: application/octet-stream; name=rechnung.pdf",
        "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=r.PDF",
        "Content-Type: image/jpeg; name=scan.pdf",
        "Content-Disposition: attachment; filename=rechnung.pdf",
    ],
    ids=["octet-stream-name", "octet-stream-filename", "other-type", "no-type"],
)
def test_pdf_named_part_of_any_type_is_found(headers: str) -> None:
    """Parts of any (or no) type named *.pdf are PDFs when their bytes are."""
    [attachment] = parse_mail(_multipart(_pdf_part(headers))).attachments
    assert attachment.kind == "pdf"
    assert attachment.data == PDF


def test_unnamed_octet_stream_pdf_is_sniffed() -> None:
    """An unnamed application/octet-stream part whose bytes are a PDF counts as a PDF."""
    raw = _multipart(_pdf_part("Content-Type: application/octet-stream"))
    [attachment] = parse_mail(raw).attachments
    assert attachment.filename is None
    assert (attachment.kind, attachment.content_type) == ("pdf", "application/octet-stream")


def test_unnamed_octet_stream_other_bytes_are_ignored() -> None:
    """An unnamed binary part that is neither PDF nor XML is silently not a document."""
    raw = _multipart(_pdf_part("Content-Type: application/octet-stream", b"PK\x03\x04zip"))
    parsed = parse_mail(raw)
    assert (parsed.attachments, parsed.skipped) == ([], [])


def test_rfc2231_filename_is_decoded() -> None:
    """filename*=UTF-8''... (RFC 2231) is decoded."""
    headers = (
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=UTF-8''Rechnung_M%C3%A4rz.pdf"
    )
    [attachment] = parse_mail(_multipart(_pdf_part(headers))).attachments
    assert attachment.filename == "Rechnung_März.pdf"


def test_rfc2231_continuation_in_latin1_is_decoded() -> None:
    """RFC 2231 continuations in another charset are joined and decoded."""
    headers = (
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*0*=iso-8859-1''Geb%FChren_; "
        'filename*1="2024.pdf"'
    )
    [attachment] = parse_mail(_multipart(_pdf_part(headers))).attachments
    assert attachment.filename == "Gebühren_2024.pdf"


@pytest.mark.parametrize(
    "headers",
    [
        'Content-Type: application/pdf; name="=?UTF-8?B?UmVjaG51bmdfTcOkcnoucGRm?="',
        "Content-Type: application/pdf\nContent-Disposition: attachment;\n"
        ' filename="=?utf-8?q?Rechnung=5FM=C3=A4rz.pdf?="',
        "Content-Type: application/pdf\nContent-Disposition: attachment;"
        " filename==?utf-8?q?Rechnung=5FM=C3=A4rz.pdf?=",
    ],
    ids=["b-in-name", "q-in-filename", "unquoted"],
)
def test_rfc2047_filename_is_decoded(headers: str) -> None:
    """Encoded-word (RFC 2047) names, quoted or not, are decoded."""
    [attachment] = parse_mail(_multipart(_pdf_part(headers))).attachments
    assert attachment.filename == "Rechnung_März.pdf"


def test_directories_are_stripped_from_filenames() -> None:
    """A name with path components keeps only its last component."""
    headers = 'Content-Type: application/pdf; name="..\\\\..\\\\evil/../rechnung.pdf"'
    [attachment] = parse_mail(_multipart(_pdf_part(headers))).attachments
    assert attachment.filename == "rechnung.pdf"


def test_claimed_pdf_that_is_html_is_skipped_with_reason() -> None:
    """A part claiming to be a PDF whose bytes are not is skipped, with a readable reason."""
    page = b"<html><body>Session expired</body></html>"
    raw = _multipart(_pdf_part("Content-Type: application/pdf; name=rechnung.pdf", page))
    parsed = parse_mail(raw)
    assert parsed.attachments == []
    assert parsed.skipped == ["rechnung.pdf: not a PDF (starts with '<html')"]


def test_claimed_pdf_that_is_empty_is_skipped() -> None:
    """An empty PDF-typed part without a name is skipped and described."""
    parsed = parse_mail(_multipart(_part("Content-Type: application/pdf", b"")))
    assert parsed.skipped == ["unnamed application/pdf part: not a PDF (empty)"]


def test_same_document_twice_is_listed_once() -> None:
    """The same bytes attached twice (under any names) are one document."""
    msg = _mail()
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="a.pdf")
    msg.add_attachment(PDF, maintype="application", subtype="octet-stream", filename="b.pdf")
    msg.add_attachment(OTHER_PDF, maintype="application", subtype="pdf", filename="c.pdf")
    parsed = parse_mail(msg.as_bytes())
    assert [a.filename for a in parsed.attachments] == ["a.pdf", "c.pdf"]


# ------------------------------------------------------------------- nesting


def _forwarded(depth: int) -> bytes:
    inner = _mail("original")
    inner.add_attachment(PDF, maintype="application", subtype="pdf", filename="deep.pdf")
    for level in range(depth):
        outer = _mail(f"Fwd level {level}")
        outer.add_attachment(inner)
        inner = outer
    return inner.as_bytes()


def test_pdf_in_forwarded_mail_at_depth_two_is_nested() -> None:
    """A PDF inside a message/rfc822 inside a message/rfc822 is found and marked nested."""
    [attachment] = parse_mail(_forwarded(2)).attachments
    assert (attachment.filename, attachment.nested) == ("deep.pdf", True)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """Attached messages nested exactly MAX_DEPTH deep are still walked."""
    assert len(parse_mail(_forwarded(MAX_DEPTH)).attachments) == 1


def test_nesting_beyond_the_limit_is_malformed() -> None:
    """Nesting deeper than MAX_DEPTH makes the mail malformed."""
    with pytest.raises(MalformedMailError, match="nested deeper"):
        parse_mail(_forwarded(MAX_DEPTH + 1))


def test_base64_encoded_forwarded_message_is_walked() -> None:
    """A message/rfc822 part that was itself base64-encoded is decoded and walked."""
    inner = HEADERS + _pdf_part("Content-Type: application/pdf; name=fwd.pdf")
    raw = _multipart(
        _part("Content-Type: message/rfc822\nContent-Transfer-Encoding: base64", _b64(inner))
    )
    [attachment] = parse_mail(raw).attachments
    assert (attachment.filename, attachment.nested) == ("fwd.pdf", True)


def test_forwarded_eml_file_is_walked() -> None:
    """A forwarded mail sent as an octet-stream *.eml file is walked as a nested message."""
    inner = HEADERS + _pdf_part("Content-Type: application/pdf; name=in-eml.pdf")
    raw = _multipart(_pdf_part("Content-Type: application/octet-stream; name=fwd.eml", inner))
    [attachment] = parse_mail(raw).attachments
    assert (attachment.filename, attachment.nested) == ("in-eml.pdf", True)


def test_too_many_parts_is_malformed() -> None:
    """More than MAX_PARTS parts (the root and containers count) makes the mail malformed."""
    part = _part("Content-Type: text/plain", b"x")
    parse_mail(_multipart(*[part] * (MAX_PARTS - 1)))  # root + 199 = the limit
    with pytest.raises(MalformedMailError, match="too many MIME parts"):
        parse_mail(_multipart(*[part] * MAX_PARTS))


# ----------------------------------------------------------------------- XML


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Type: application/xml; name=factur-x.xml",
        "Content-Type: text/xml",
        "Content-Type: application/octet-stream; name=xrechnung.XML",
        "Content-Type: application/octet-stream",
        "Content-Disposition: attachment",
    ],
    ids=["application-xml", "text-xml", "named", "octet-stream-sniffed", "no-type-sniffed"],
)
def test_xml_documents_are_found(headers: str) -> None:
    """XML parts (by type, by name, or sniffed from generic parts) come back as kind xml."""
    [attachment] = parse_mail(_multipart(_pdf_part(headers, XML))).attachments
    assert (attachment.kind, attachment.data) == ("xml", XML)


def test_xml_without_declaration_is_sniffed() -> None:
    """A generic part starting with a namespaced tag (after a BOM) is XML."""
    data = b"\xef\xbb\xbf\n<ubl:Invoice xmlns:ubl='urn:x'>1</ubl:Invoice>"
    raw = _multipart(_pdf_part("Content-Type: application/octet-stream", data))
    [attachment] = parse_mail(raw).attachments
    assert attachment.kind == "xml"


def test_html_in_generic_part_is_not_xml() -> None:
    """An HTML page in an octet-stream part is not taken for an e-invoice."""
    data = b"<html><body>hi</body></html>"
    parsed = parse_mail(_multipart(_pdf_part("Content-Type: application/octet-stream", data)))
    assert parsed.attachments == []


def test_claimed_xml_that_is_not_xml_is_skipped() -> None:
    """A part named *.xml whose bytes are not XML is skipped with a reason."""
    raw = _multipart(_pdf_part("Content-Type: application/xml; name=rechnung.xml", b"hello"))
    assert parse_mail(raw).skipped == ["rechnung.xml: not XML (starts with 'hello')"]


# ------------------------------------------------------------------- headers


def test_headers_are_decoded() -> None:
    """Message-ID, an RFC 2047 subject, the sender and a tz-aware date are returned."""
    raw = HEADERS.replace(b"Rechnung 4711", b"=?utf-8?q?Rechnung_f=C3=BCr_M=C3=A4rz?=")
    parsed = parse_mail(raw + b"\nbody\n")
    assert parsed.message_id == "<4711@lieferant.example>"
    assert parsed.subject == "Rechnung für März"
    assert parsed.sender == "Lieferant GmbH <rechnung@lieferant.example>"
    assert parsed.date == dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.UTC)
    assert parsed.date is not None and parsed.date.tzinfo is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Tue, 05 Mar 2024 10:00:00 -0000", dt.datetime(2024, 3, 5, 10, 0, tzinfo=dt.UTC)),
        (b"gestern", None),
        (b"Tue, 99 Foo 2024 99:99:99 +0100", None),
    ],
)
def test_dates_are_tz_aware_or_none(value: bytes, expected: dt.datetime | None) -> None:
    """-0000 dates become UTC; unparseable dates become None without failing the mail."""
    raw = HEADERS.replace(b"Tue, 05 Mar 2024 10:00:00 +0100", value)
    assert parse_mail(raw + b"\nbody\n").date == expected


def test_broken_header_falls_back_to_none() -> None:
    """A header the email package cannot parse is None; the rest of the mail is read."""
    raw = HEADERS.replace(b"Lieferant GmbH <rechnung@lieferant.example>", b"<")
    raw = raw.replace(b"<4711@lieferant.example>", b"<@>")
    parsed = parse_mail(_multipart(_pdf_part("Content-Type: application/pdf"), headers=raw))
    assert parsed.sender is None
    assert parsed.message_id == "<@>"  # kept as written: it still identifies the mail
    assert parsed.subject == "Rechnung 4711"
    assert len(parsed.attachments) == 1


def test_non_utf8_header_bytes_are_replaced() -> None:
    """Raw 8-bit header bytes that are not UTF-8 do not leak surrogates into the result."""
    raw = HEADERS.replace(b"Rechnung 4711", b"Rechnung \xe4 4711")
    subject = parse_mail(raw + b"\nbody\n").subject
    assert subject is not None and subject.startswith("Rechnung")
    subject.encode("utf-8")  # no lone surrogates


# --------------------------------------------------------------------- links


def test_bare_urls_in_plain_text() -> None:
    """http(s) URLs in text are collected without trailing punctuation; other schemes are not."""
    text = (
        "Ihre Rechnung: https://billing.example.com/inv/1.pdf. Konto (https://a.example/k) "
        "oder http://b.example/x?y=1, mailto:x@y.example ftp://f.example/r.pdf "
        "https://en.example/wiki/Foo_(bar) https://billing.example.com/inv/1.pdf"
    )
    assert parse_mail(_mail(text).as_bytes()).links == [
        "https://billing.example.com/inv/1.pdf",
        "https://a.example/k",
        "http://b.example/x?y=1",
        "https://en.example/wiki/Foo_(bar)",
    ]


def test_html_links_decode_entities_and_skip_scripts() -> None:
    """href targets are entity-decoded; javascript:, mailto: and script text are ignored."""
    html = (
        '<p><a href="https://billing.example.com/d?id=1&amp;fmt=pdf">Download</a>'
        '<a href="&#104;ttps://b.example/&quot;q&quot;">x</a>'
        '<a href="javascript:alert(1)">no</a><a href="mailto:a@b.example">no</a>'
        "<area href=' https://c.example/map '>Text link: https://d.example/t</p>"
        '<script>var u = "https://tracker.example/js";</script>'
    )
    msg = _mail()
    msg.add_alternative(html, subtype="html")
    assert parse_mail(msg.as_bytes()).links == [
        "https://billing.example.com/d?id=1&fmt=pdf",
        'https://b.example/"q"',
        "https://c.example/map",
        "https://d.example/t",
    ]


def test_quoted_printable_html_links_are_joined() -> None:
    """Quoted-printable soft line breaks and =3D inside an href are decoded."""
    body = (
        b'<a href=3D"https://billing.example.com/invoices/INV-2024-=\n'
        b'001.pdf?a=3D1&amp;b=3D2">Rechnung</a>\n'
    )
    raw = _multipart(
        _part(
            "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
            body,
        )
    )
    assert parse_mail(raw).links == [
        "https://billing.example.com/invoices/INV-2024-001.pdf?a=1&b=2"
    ]


def test_links_in_any_charset_are_deduplicated_in_order() -> None:
    """Text in another charset (or an unknown one) is decoded; links keep first-seen order once."""
    latin1 = "Räumung: https://a.example/räumung und https://b.example/".encode("latin-1")
    raw = _multipart(
        _part("Content-Type: text/plain; charset=iso-8859-1", latin1),
        _part("Content-Type: text/html; charset=x-unknown", b'<a href="https://b.example/">b</a>'),
        _part("Content-Type: text/plain", b"again https://a.example/r\xc3\xa4umung"),
    )
    assert parse_mail(raw).links == ["https://a.example/räumung", "https://b.example/"]


# ------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "no headers"),
        (b"\x8b\x00\x17binary junk\nmore junk\n", "no header section"),
        (b"just a line of text without a colon\n\nbody", "no header section"),
        (b"From: <\n\nbody", "no header can be read"),
    ],
    ids=["empty", "binary", "text", "only-broken-header"],
)
def test_bytes_that_are_not_a_mail_are_malformed(raw: bytes, reason: str) -> None:
    """Input without a (readable) header section raises MalformedMailError with the reason."""
    with pytest.raises(MalformedMailError, match=reason):
        parse_mail(raw)


def test_undecodable_base64_in_pdf_part_is_malformed() -> None:
    """A PDF part whose base64 body cannot be decoded makes the mail malformed."""
    part = _part(
        "Content-Type: application/pdf; name=scan.pdf\nContent-Transfer-Encoding: base64",
        b"%%% damaged by the gateway %%%\n###@@@!!!\n",
    )
    with pytest.raises(MalformedMailError, match=r"scan\.pdf: base64 body cannot be decoded"):
        parse_mail(_multipart(part))


def test_undecodable_base64_in_image_is_ignored() -> None:
    """Bad base64 in a part that is no document candidate does not fail the mail."""
    part = _part("Content-Type: image/png\nContent-Transfer-Encoding: base64", b"!!!x")
    assert parse_mail(_multipart(part)).attachments == []


def test_unpadded_base64_pdf_is_accepted() -> None:
    """Missing base64 padding alone is tolerated when the bytes are a PDF."""
    body = base64.b64encode(PDF + b"x").rstrip(b"=")
    part = _part("Content-Type: application/pdf\nContent-Transfer-Encoding: base64", body)
    assert [a.data for a in parse_mail(_multipart(part)).attachments] == [PDF + b"x"]


def test_email_package_failure_becomes_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception escaping the email package is translated, with the cause chained."""

    def explode(self: object, data: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(BytesFeedParser, "feed", explode)
    with pytest.raises(MalformedMailError, match="RecursionError") as info:
        parse_mail(HEADERS + b"\nbody")
    assert isinstance(info.value.__cause__, RecursionError)


# ------------------------------------------------------------------ property


def _sample() -> bytes:
    msg = _mail("Rechnung: https://billing.example.com/r.pdf")
    msg.add_alternative('<a href="https://x.example/?a=1&amp;b=2">x</a>', subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="Rechnung_März.pdf")
    msg.add_attachment(XML, maintype="application", subtype="xml", filename="factur-x.xml")
    inner = _mail("forwarded")
    inner.add_attachment(OTHER_PDF, maintype="application", subtype="octet-stream")
    msg.add_attachment(inner)
    return msg.as_bytes()


SAMPLE = _sample()
TOKENS = [
    b"\n",
    b"\n\n",
    b"--",
    b":",
    b";",
    b'"',
    b"=?utf-8?b?",
    b"?=",
    b"filename*=",
    b"Content-Type: message/rfc822\n",
    b"Content-Type: multipart/mixed; boundary=",
    b"Content-Transfer-Encoding: base64\n",
    b"%PDF-",
    b"<",
    b"\x00",
    b"\xff",
]


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """The sample mail with a few bytes deleted, replaced, inserted or cut off."""
    data = bytearray(SAMPLE)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        chunk = draw(st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=8)))
        if action == "insert":
            data[at:at] = chunk
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            del data[at:]
    return bytes(data)


@settings(
    max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.one_of(st.binary(max_size=2048), mutated_samples()))
def test_parse_mail_raises_only_project_errors(raw: bytes) -> None:
    """On arbitrary and mutated bytes parse_mail returns a result or raises an InvoiceSyncError."""
    try:
        parsed = parse_mail(raw)
    except InvoiceSyncError:
        return
    for attachment in parsed.attachments:
        assert attachment.kind in ("pdf", "xml")
    assert all(link.startswith(("http://", "https://")) for link in parsed.links)


def test_the_sample_mail_parses_completely() -> None:
    """The unmutated property-test sample yields every kind of document and link."""
    parsed = parse_mail(SAMPLE)
    assert [(a.filename, a.kind, a.nested) for a in parsed.attachments] == [
        ("Rechnung_März.pdf", "pdf", False),
        ("factur-x.xml", "xml", False),
        (None, "pdf", True),
    ]
    assert parsed.links == ["https://billing.example.com/r.pdf", "https://x.example/?a=1&b=2"]


def _large_base64_mail(body: bytes) -> bytes:
    return (
        b"From: a@example.com\nSubject: gross\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nHallo\n'
        b'--b\nContent-Type: application/pdf; name="gross.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + body + b"\n--b--\n"
    )


_LARGE_PDF = b"%PDF-1.7\n" + bytes(range(256)) * 6000  # 1.5 MB: over the large-payload cut


@pytest.mark.parametrize(
    "body",
    [
        base64.encodebytes(_LARGE_PDF),
        base64.encodebytes(_LARGE_PDF).replace(b"\n", b"\r\n"),
        base64.b64encode(_LARGE_PDF)[:-2] + b"\n",  # padding cut off
        base64.encodebytes(_LARGE_PDF).replace(b"AAEC", b"AA!EC", 3),  # stray characters
        base64.encodebytes(_LARGE_PDF)[:-200] + "Grüße\n".encode(),  # not even ASCII
    ],
    ids=["valid", "CRLF", "no padding", "stray characters", "8bit"],
)
def test_large_base64_bodies_decode_as_the_email_package_does(body: bytes) -> None:
    """A body over 1 MB is decoded with fewer copies, to the same bytes and the same verdict."""
    raw = _large_base64_mail(body)
    part = BytesParser(policy=policy.compat32).parsebytes(raw).get_payload()[1]
    assert _payload(part) == part.get_payload(decode=True)
    try:
        outcome: object = [(a.filename, a.data) for a in parse_mail(raw).attachments]
    except MalformedMailError as exc:
        outcome = str(exc)
    if body == base64.encodebytes(_LARGE_PDF):
        assert outcome == [("gross.pdf", _LARGE_PDF)]
    assert outcome == _outcome_via_the_email_package(raw)


def _outcome_via_the_email_package(raw: bytes) -> object:
    with mock.patch.object(mime, "_LARGE_PAYLOAD", 10**12):  # every body the email package's way
        try:
            return [(a.filename, a.data) for a in parse_mail(raw).attachments]
        except MalformedMailError as exc:
            return str(exc)


@pytest.mark.parametrize(
    "header", ["Content-Disposition: attachment; filename", "X-Ignored: x; name"]
)
def test_raw_utf8_filenames_are_kept(header: str) -> None:
    """Some clients write the filename as raw UTF-8 bytes: it is stored as written."""
    raw = (
        (
            "From: a@example.com\nSubject: x\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="b"\n\n'
            "--b\nContent-Type: text/plain\n\nHallo\n"
            '--b\nContent-Type: application/pdf; name="Rëchnung_März.pdf"\n'
            f'{header}="Rëchnung_März.pdf"\nContent-Transfer-Encoding: base64\n\n'
        ).encode()
        + base64.encodebytes(b"%PDF-1.4\n%%EOF\n")
        + b"--b--\n"
    )
    [attachment] = parse_mail(raw).attachments
    assert attachment.filename == "Rëchnung_März.pdf"
