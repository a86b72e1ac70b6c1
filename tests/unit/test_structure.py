"""Selective IMAP fetch: BODYSTRUCTURE → plan → fetched sections → a mail parse_mail reads alike.

No server here, but real BODYSTRUCTURE data: each test mail is rendered as the FETCH response
line a server would send (RFC 3501 §7.4.2, literals included) and parsed by imapclient's own
response parser. Hand-written Dovecot/Gmail responses and two captured from Dovecot 2.3.19 check
that rendering (it was compared byte for byte with Dovecot's for the sample mails and 500
generated ones). The IMAP fetch is simulated by cutting sections out of the raw message by
section number, as the server does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import Parser
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from invoicesync.errors import InvoiceSyncError, MalformedMailError, ProtocolError
from invoicesync.mail.mime import parse_mail
from invoicesync.mail.structure import (
    SNIFF_BYTES,
    FetchPlan,
    Section,
    assemble,
    is_document_prefix,
    plan_fetch,
)
from invoicesync.models import ParsedMail

MAILBOX = Path(__file__).resolve().parents[2] / "examples" / "mailbox" / "cur"
LIMIT = 25 * 1024 * 1024
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<rsm:CrossIndustryInvoice xmlns:rsm="urn:x"/>\n'
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 8
)
IDENTITY = ("7bit", "8bit", "binary")


# ------------------------------------------------- raw sections, as a server cuts them


@dataclass
class Raw:
    """One MIME entity as raw bytes: what an IMAP server addresses by a section number."""

    header: bytes  # with its closing blank line: BODY[n.MIME], or BODY[HEADER] of a message
    body: bytes  # still transfer-encoded: BODY[n]
    fields: Message  # the header parsed with compat32, which keeps raw values as a server does
    children: list[Raw] = field(default_factory=list)
    inner: Raw | None = None  # the encapsulated message of a message/rfc822 part


def split(raw: bytes, default_type: str = "text/plain") -> Raw:
    """Cut a message or body part into header, body and sub-entities (RFC 2045/2046)."""
    blank = re.search(rb"\r?\n\r?\n", raw)
    if raw.startswith((b"\n", b"\r\n")):  # no header fields at all
        end = raw.index(b"\n") + 1
    else:
        end = blank.end() if blank else len(raw)
    header, body = raw[:end], raw[end:]
    # Parsed from text: compat32 would turn 8-bit bytes into replacement characters.
    text = header.decode("utf-8", "surrogateescape")
    fields = Parser(policy=policy.compat32).parsestr(text, headersonly=True)
    fields.set_default_type(default_type)
    entity = Raw(header, body, fields)
    boundary = fields.get_boundary()
    cte = str(fields.get("content-transfer-encoding", "7bit")).strip().lower()
    if fields.get_content_maintype() == "multipart" and boundary:
        child_type = "message/rfc822" if fields.get_content_subtype() == "digest" else "text/plain"
        marks = list(
            re.finditer(rb"(?m)^--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*\r?$", body)
        )
        for start, stop in itertools.pairwise(marks):
            if start.group(1):  # the close delimiter: the rest is epilogue
                break
            begin, finish = start.end() + 1, stop.start() - 1  # the eol before "--" is its own
            finish -= body[finish - 1 : finish] == b"\r"
            entity.children.append(split(body[begin:finish], child_type))
    elif fields.get_content_type() == "message/rfc822" and cte in IDENTITY:
        entity.inner = split(body)
    return entity


def section(root: Raw, number: str) -> Raw:
    """The entity at an IMAP section number (RFC 3501 §6.4.5)."""
    entity, node = root, None
    for index in number.split("."):
        if node is not None:
            entity = node.inner or node
        if entity.children:
            node = entity.children[int(index) - 1]
        else:
            assert index == "1", number  # a non-multipart body is part 1 of its message
            node = entity
    assert node is not None
    return node


# ------------------------------------------------------- BODYSTRUCTURE, as a server renders it


class ImapLiteral(bytes):
    """A string the server sends as ``{n}`` literal (8-bit or control characters)."""


def _nstring(value: str | None) -> bytes:
    if value is None:
        return b"NIL"
    data = value.encode("utf-8", "surrogateescape")
    if all(32 <= byte < 127 for byte in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return ImapLiteral(data)


def _raw_header(fields: Message, name: str) -> str | None:
    for key, value in fields.raw_items():
        if key.lower() == name:
            return re.sub(r"\r?\n[ \t]", " ", str(value)).strip()
    return None


def _params(pairs: list[tuple[str, Any]]) -> list[bytes]:
    if not pairs:
        return [b"NIL"]
    tokens = [b"("]
    for key, value in pairs:
        if isinstance(value, tuple):  # RFC 2231: merged like Dovecot does, still %-encoded
            charset, language, text = value
            encoded = quote(text.encode("latin-1", "surrogateescape"), safe="")
            key, value = f"{key}*", f"{charset or ''}'{language or ''}'{encoded}"
        tokens += [_nstring(key), _nstring(value)]
    return [*tokens, b")"]


def _addresses(fields: Message, name: str, default: list[bytes] | None = None) -> list[bytes]:
    raw = _raw_header(fields, name)
    if raw is None:
        return default or [b"NIL"]
    tokens = [b"("]
    for display, address in getaddresses([raw]):
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        tokens += [b"(", _nstring(display or None), b"NIL", _nstring(mailbox), _nstring(host)]
        tokens.append(b")")
    return [*tokens, b")"] if len(tokens) > 1 else [b"NIL"]


def _envelope(fields: Message) -> list[bytes]:
    sender = _addresses(fields, "from")
    return [
        b"(",
        _nstring(_raw_header(fields, "date")),
        _nstring(_raw_header(fields, "subject")),
        *sender,
        *_addresses(fields, "sender", sender),  # RFC 3501: default to From
        *_addresses(fields, "reply-to", sender),
        *_addresses(fields, "to"),
        *_addresses(fields, "cc"),
        *_addresses(fields, "bcc"),
        _nstring(_raw_header(fields, "in-reply-to")),
        _nstring(_raw_header(fields, "message-id")),
        b")",
    ]


def _lines(data: bytes) -> bytes:
    return str(data.count(b"\n")).encode()  # Dovecot counts line ends, not started lines


# Between the parts of a multipart there is no space: "(...)(...)" (RFC 3501 body-type-mpart).
_TIGHT = b"\x00tight"  # a marker, never sent
# Dovecot does not parse an encoded attached mail, yet fills its slots: these, then lines.
_OPAQUE_MESSAGE = [b"(", *[b"NIL"] * 10, b")", b'("text" "plain" ("charset" "us-ascii") NIL NIL']
_OPAQUE_MESSAGE.append(b'"7bit" 0 0 NIL NIL NIL NIL)')


def body_tokens(entity: Raw, *, in_multipart: bool = False) -> list[bytes]:
    """body (RFC 3501 §7.4.2) of one entity, as tokens; extension data as Dovecot sends it."""
    fields = entity.fields
    disposition = [b"NIL"]
    if fields.get_content_disposition():
        params = fields.get_params(header="content-disposition") or []
        disposition = [b"(", _nstring(fields.get_content_disposition()), *_params(params[1:])]
        disposition.append(b")")
    if entity.children:
        tokens = [b"("]
        for index, child in enumerate(entity.children):
            tokens += [_TIGHT] * bool(index) + body_tokens(child, in_multipart=True)
        subtype = _nstring(fields.get_content_subtype())
        params = (fields.get_params() or [])[1:]
        return [*tokens, subtype, *_params(params), *disposition, b"NIL", b"NIL", b")"]
    maintype = fields.get_content_maintype()
    params = (fields.get_params() or [])[1:]
    if maintype == "text" and "charset" not in [key for key, _ in params]:
        params.append(("charset", "us-ascii"))  # RFC 2045's default, spelled out as Dovecot does
    # IMAP sizes count the message as if every line ended in CRLF.
    size = len(entity.body) + entity.body.count(b"\n") - entity.body.count(b"\r\n")
    lines = _lines(entity.body)
    last_line_open = in_multipart and not entity.body.endswith(b"\n")
    if fields.get_content_type() == "message/rfc822" and last_line_open:
        # Dovecot (seen with 2.3.19) gives the line break after an attached message's last
        # line to that message, not to the delimiter that follows.
        size, lines = size + 2, str(int(lines) + 1).encode()
    tokens = [
        b"(",
        _nstring(maintype),
        _nstring(fields.get_content_subtype()),
        *_params(params),
        _nstring(_raw_header(fields, "content-id")),
        _nstring(_raw_header(fields, "content-description")),
        _nstring(_raw_header(fields, "content-transfer-encoding") or "7bit"),
        str(size).encode(),
    ]
    if entity.inner is not None:
        tokens += [*_envelope(entity.inner.fields), *body_tokens(entity.inner), lines]
    elif fields.get_content_type() == "message/rfc822":
        tokens += [*_OPAQUE_MESSAGE, lines]
    elif maintype == "text":
        tokens.append(lines)
    return [*tokens, b"NIL", *disposition, b"NIL", b"NIL", b")"]


def fetch_response(raw: bytes, uid: int = 7, seq: int = 1) -> list[bytes | tuple[bytes, bytes]]:
    """The untagged FETCH response as imaplib hands it over: literals split into tuples."""
    tokens = [str(seq).encode(), b"(", b"UID", str(uid).encode(), b"BODYSTRUCTURE"]
    tokens += [*body_tokens(split(raw)), b")"]
    records: list[bytes | tuple[bytes, bytes]] = []
    text, previous = b"", b"("
    for token in tokens:
        if token == _TIGHT:
            previous = token
            continue
        tight = previous in (b"(", _TIGHT) or token == b")"
        separator = b"" if tight or (not text and not records) else b" "
        if isinstance(token, ImapLiteral):
            records.append((text + separator + b"{%d}" % len(token), bytes(token)))
            text = b""
        else:
            text += separator + token
        previous = token
    return [*records, text]


def bodystructure(response: list[bytes | tuple[bytes, bytes]]) -> Any:
    """The BODYSTRUCTURE value exactly as ``IMAPClient.fetch`` returns it."""
    [data] = parse_fetch_response(response).values()
    return data[b"BODYSTRUCTURE"]


# ------------------------------------------------------------- the simulated IMAP source


def fetch_and_assemble(raw: bytes, plan: FetchPlan) -> tuple[bytes, int]:
    """Do what the IMAP source does with a plan; returns the mail and the bytes downloaded."""
    root = split(raw)
    parts: list[tuple[Section, bytes, bytes]] = []
    downloaded = len(root.header)
    for planned in plan.sections:
        entity = section(root, planned.number)
        if planned.kind == "sniff":
            downloaded += SNIFF_BYTES
            if not is_document_prefix(entity.body[:SNIFF_BYTES], planned.encoding):
                continue
        mime = b"" if planned.is_body else entity.header
        parts.append((planned, mime, entity.body))
        downloaded += len(mime) + len(entity.body)
    nested = {}
    for number in plan.nested:
        inner = section(root, number).inner
        assert inner is not None
        nested[number] = inner.header
        downloaded += len(inner.header)
    return assemble(root.header, parts, nested), downloaded


def plan_for(raw: bytes, **limits: int) -> FetchPlan:
    return plan_fetch(bodystructure(fetch_response(raw)), max_document_bytes=LIMIT, **limits)


def summary(parsed: ParsedMail) -> dict[str, Any]:
    return {
        "attachments": [
            (a.filename, a.content_type, a.kind, hashlib.sha256(a.data).hexdigest(), a.nested)
            for a in parsed.attachments
        ],
        "links": parsed.links,
        "skipped": parsed.skipped,
        "headers": (parsed.subject, parsed.sender, parsed.message_id, parsed.date),
    }


def assert_round_trip(raw: bytes) -> FetchPlan:
    plan = plan_for(raw)
    assembled, _ = fetch_and_assemble(raw, plan)
    assert summary(parse_mail(assembled)) == summary(parse_mail(raw))
    return plan


# ---------------------------------------------------------------------------- test mails


def _mail(text: str = "Guten Tag, anbei die Rechnung.") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Lieferant GmbH <rechnung@lieferant.example>"
    msg["To"] = "buchhaltung@example.com"
    msg["Subject"] = "Rechnung 4711"
    msg["Date"] = "Tue, 05 Mar 2024 10:00:00 +0100"
    msg["Message-ID"] = "<4711@lieferant.example>"
    msg.set_content(text)
    return msg


# The header fields of _mail(), for mails written by hand.
HEAD = bytes(_mail()).split(b"Content-Type:", 1)[0] + b"MIME-Version: 1.0\n"


def _with(msg: EmailMessage, data: bytes, ctype: str, filename: str | None) -> EmailMessage:
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def _multipart(*parts: bytes) -> bytes:
    """A multipart/mixed mail written by hand, for shapes EmailMessage will not produce."""
    body = b"".join(b"--B\n" + part.rstrip(b"\n") + b"\n" for part in parts)
    return HEAD + b'Content-Type: multipart/mixed; boundary="B"\n\n' + body + b"--B--\n"


def _forward(inner: EmailMessage, text: str = "Weitergeleitet.") -> EmailMessage:
    outer = _mail(text)
    del outer["Message-ID"]
    outer["Message-ID"] = f"<fwd-{len(inner.as_bytes())}@example.com>"
    outer.add_attachment(inner)
    return outer


def _tricky() -> dict[str, bytes]:
    single_pdf = _mail()
    single_pdf.set_content(PDF, maintype="application", subtype="pdf", filename="r.pdf")
    nested_single = _forward(single_pdf)
    html = _mail("Text")
    html.add_alternative('<p><a href="https://billing.example/r/1.pdf">Rechnung</a></p>', "html")
    deep = _forward(_forward(_with(html, PDF, "application/pdf", "tief.pdf")))
    related = _mail("Logo und XML")
    related.add_related(b"\x89PNG\r\n\x1a\n" + bytes(500), maintype="image", subtype="png")
    _with(related, XML, "application/xml", "rechnung.xml")
    inner = bytes(_with(_mail(), PDF, "application/pdf", "enc.pdf"))
    encoded_forward = _multipart(
        b"Content-Type: text/plain\n\nBase64-kodierte Weiterleitung",
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(inner),
    )
    typeless = _multipart(
        b"\nhttps://portal.example/x",  # no header fields: parse_mail sniffs, then scans it
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PDF),
    )
    eight_bit = _multipart(
        b"Content-Type: text/plain\n\nHallo",
        b"Content-Type: application/octet-stream\nContent-Disposition: attachment; "
        b'filename="Rechnung_M\xc3\xa4rz.xml"\nContent-Transfer-Encoding: base64\n\n'
        + base64.encodebytes(XML),
        b"Content-Type: image/jpeg\nContent-Disposition: attachment;\n"
        b" filename*0*=utf-8''Rechnung_%C3%9Cbersicht; filename*1*=.pdf\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PDF),
    )
    return {
        "single text with link": bytes(_mail("Ihre Rechnung: https://portal.example/r/42")),
        "single pdf": bytes(single_pdf),
        "single pdf, CRLF": single_pdf.as_bytes(policy=policy.SMTP),
        "forwarded single pdf": bytes(nested_single),
        "forwarded twice, html link": bytes(deep),
        "unnamed octet-stream pdf": bytes(_with(_mail(), PDF, "application/octet-stream", None)),
        "unnamed octet-stream jpeg": bytes(_with(_mail(), JPEG, "application/octet-stream", None)),
        "related image, xml": bytes(related),
        "base64 message/rfc822": encoded_forward,
        "forward as .eml file": bytes(
            _with(
                _mail(),
                bytes(_with(_mail(), PDF, "application/pdf", "x.pdf")),
                "application/octet-stream",
                "weiter.eml",
            )
        ),
        "type-less parts": typeless,
        "8-bit and RFC 2231 names": eight_bit,
    }


TRICKY = _tricky()


def _samples() -> list[tuple[str, bytes]]:
    samples = []
    for path in sorted(MAILBOX.iterdir()):
        raw = path.read_bytes()
        try:
            parse_mail(raw)
        except MalformedMailError:
            continue  # the pipeline rejects these before any fetch plan matters
        samples.append((path.name.split(".")[0], raw))
    return samples


SAMPLES = _samples()


def _shape(plan: FetchPlan) -> tuple[list[tuple[Any, ...]], list[str]]:
    """A plan without sizes and encodings, which differ between servers and renderings."""
    sections = [
        (s.number, s.content_type, s.filename, s.kind, s.nested_in, s.is_body)
        for s in plan.sections
    ]
    return sections, plan.nested


# ------------------------------------------------------ real server responses, by hand

# Dovecot 2.3: lowercase as written, extension data md5/disposition/language/location.
DOVECOT_MIXED: list[bytes | tuple[bytes, bytes]] = [
    b'12 (UID 4711 BODYSTRUCTURE ((("text" "plain" ("charset" "utf-8") NIL NIL'
    b' "quoted-printable" 412 14 NIL NIL NIL NIL)("text" "html" ("charset" "utf-8") NIL NIL'
    b' "quoted-printable" 1503 31 NIL NIL NIL NIL) "alternative" ("boundary" "=_alt") NIL NIL'
    b' NIL)("image" "jpeg" ("name" "logo.jpg") "<logo@lieferant.example>" NIL "base64" 2804'
    b' NIL ("inline" ("filename" "logo.jpg")) NIL NIL)("application" "pdf" ("name"'
    b' "Rechnung-2024-0815.pdf") NIL NIL "base64" 68340 NIL ("attachment" ("filename"'
    b' "Rechnung-2024-0815.pdf" "size" "49901")) NIL NIL) "mixed" ("boundary" "=_mixed") NIL'
    b" NIL NIL))"
]
# Gmail: uppercase, no location, RFC 2231 continuations passed through unmerged.
GMAIL_FORWARD: list[bytes | tuple[bytes, bytes]] = [
    b'3 (UID 815 BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "7BIT" 220 6 NIL'
    b' NIL NIL)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 71250 ("Tue, 5 Mar 2024 10:00:00 +0100"'
    b' "Rechnung 4711" (("Lieferant GmbH" NIL "rechnung" "lieferant.example")) (("Lieferant'
    b' GmbH" NIL "rechnung" "lieferant.example")) (("Lieferant GmbH" NIL "rechnung"'
    b' "lieferant.example")) ((NIL NIL "buchhaltung" "example.com")) NIL NIL NIL'
    b' "<4711@lieferant.example>") (("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "7BIT" 150 4'
    b' NIL NIL NIL)("APPLICATION" "PDF" NIL NIL NIL "BASE64" 70100 NIL ("ATTACHMENT"'
    b' ("FILENAME*0*" "utf-8\'\'Rechnung_M%C3%A4" "FILENAME*1*" "rz_2024.pdf")) NIL)'
    b' "MIXED" ("BOUNDARY" "inner") NIL NIL) 950 NIL ("ATTACHMENT" NIL) NIL) "MIXED"'
    b' ("BOUNDARY" "outer") NIL NIL))'
]
# Dovecot, a message that is nothing but a PDF; the 8-bit name arrives as a literal.
DOVECOT_SINGLE: list[bytes | tuple[bytes, bytes]] = [
    (b'7 (UID 42 BODYSTRUCTURE ("application" "pdf" ("name" {17}', "Facture_été.pdf".encode()),
    b') NIL NIL "base64" 40210 NIL NIL NIL NIL))',
]


def _dovecot_mixed_mail() -> bytes:
    msg = _mail("Guten Tag, anbei die Rechnung.")
    msg.add_alternative("<p>Guten Tag, anbei die Rechnung.</p>", subtype="html")
    msg.add_attachment(
        JPEG, maintype="image", subtype="jpeg", filename="logo.jpg", disposition="inline"
    )
    return bytes(_with(msg, PDF, "application/pdf", "Rechnung-2024-0815.pdf"))


def _gmail_forward_mail() -> bytes:
    return bytes(_forward(_with(_mail(), PDF, "application/pdf", "Rechnung_März_2024.pdf")))


def _dovecot_single_mail() -> bytes:
    return HEAD + (
        b'Content-Type: application/pdf; name="Facture_\xc3\xa9t\xc3\xa9.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(PDF)
    )


# Captured from Dovecot 2.3.19 (tests/dovecot.py) for TRICKY mails, appended with CRLF: an
# encoded message/rfc822 gets NIL envelope and an empty text body; 8-bit names are literals.
DOVECOT_CAPTURED_BASE64_FORWARD: list[bytes | tuple[bytes, bytes]] = [
    b'4 (UID 4 BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 29 0 NIL'
    b' NIL NIL NIL)("message" "rfc822" NIL NIL NIL "base64" 1006 (NIL NIL NIL NIL NIL NIL NIL'
    b' NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
    b' 13 NIL NIL NIL NIL) "mixed" ("boundary" "B") NIL NIL NIL))'
]
DOVECOT_CAPTURED_8BIT: list[bytes | tuple[bytes, bytes]] = [
    (
        b'5 (UID 5 BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL'
        b' NIL NIL NIL)("application" "octet-stream" NIL NIL NIL "base64" 118 NIL ("attachment"'
        b' ("filename" {18}',
        b"Rechnung_M\xc3\xa4rz.xml",
    ),
    b')) NIL NIL)("image" "jpeg" NIL NIL NIL "base64" 98 NIL ("attachment" ("filename*"'
    b' "utf-8\'\'Rechnung_%C3%9Cbersicht.pdf")) NIL NIL) "mixed" ("boundary" "B") NIL NIL NIL))',
]

FIXED = {
    "dovecot multipart": (DOVECOT_MIXED, _dovecot_mixed_mail),
    "gmail forward": (GMAIL_FORWARD, _gmail_forward_mail),
    "dovecot single part": (DOVECOT_SINGLE, _dovecot_single_mail),
    "captured base64 forward": (
        DOVECOT_CAPTURED_BASE64_FORWARD,
        lambda: TRICKY["base64 message/rfc822"],
    ),
}


def test_dovecot_multipart_plans_texts_and_pdf_but_not_the_logo() -> None:
    """Dovecot's alternative + inline image + PDF: both texts and the PDF, the logo skipped."""
    value = bodystructure(DOVECOT_MIXED)
    assert value.is_multipart
    plan = plan_fetch(value, max_document_bytes=LIMIT)
    assert _shape(plan) == (
        [
            ("1.1", "text/plain", None, "text", None, False),
            ("1.2", "text/html", None, "text", None, False),
            ("3", "application/pdf", "Rechnung-2024-0815.pdf", "document", None, False),
        ],
        [],
    )
    assert [s.encoding for s in plan.sections] == ["quoted-printable"] * 2 + ["base64"]
    assert plan.sections[2].size == 68340
    assert plan.skipped == ["logo.jpg (image/jpeg, 3 KB): not a document"]


def test_gmail_forward_plans_the_nested_pdf_with_its_rfc2231_name() -> None:
    """Gmail's forwarded message/rfc822: inner parts numbered 2.n, continuations decoded."""
    plan = plan_fetch(bodystructure(GMAIL_FORWARD), max_document_bytes=LIMIT)
    assert _shape(plan) == (
        [
            ("1", "text/plain", None, "text", None, False),
            ("2.1", "text/plain", None, "text", "2", False),
            ("2.2", "application/pdf", "Rechnung_März_2024.pdf", "document", "2", False),
        ],
        ["2"],
    )


def test_dovecot_single_part_pdf_is_the_body_of_part_1() -> None:
    """A message that is only a PDF: section 1, its name read from an IMAP literal."""
    value = bodystructure(DOVECOT_SINGLE)
    assert not value.is_multipart
    plan = plan_fetch(value, max_document_bytes=LIMIT)
    assert _shape(plan) == (
        [("1", "application/pdf", "Facture_été.pdf", "document", None, True)],
        [],
    )


@pytest.mark.parametrize("name", FIXED)
def test_helper_rendering_agrees_with_the_real_server_responses(name: str) -> None:
    """The test helper's BODYSTRUCTURE of an equivalent mail plans like the server's own."""
    response, build = FIXED[name]
    server = plan_fetch(bodystructure(response), max_document_bytes=LIMIT)
    rendered = plan_for(build())
    assert _shape(rendered) == _shape(server)
    assert len(rendered.skipped) == len(server.skipped)


def test_rendering_is_byte_for_byte_what_dovecot_sent() -> None:
    """For a mail with 8-bit and RFC 2231 names the helper renders Dovecot's exact response."""
    raw = TRICKY["8-bit and RFC 2231 names"].replace(b"\n", b"\r\n")
    assert fetch_response(raw, uid=5, seq=5) == DOVECOT_CAPTURED_8BIT


def test_dovecot_base64_forward_is_fetched_whole() -> None:
    """Dovecot fills an encoded message/rfc822's slots with NILs: it is one opaque section."""
    plan = plan_fetch(bodystructure(DOVECOT_CAPTURED_BASE64_FORWARD), max_document_bytes=LIMIT)
    assert [(s.number, s.kind, s.size) for s in plan.sections] == [
        ("1", "text", 29),
        ("2", "message", 1006),
    ]
    assert plan.nested == []


def test_rendering_uses_literals_for_8bit_strings() -> None:
    """An 8-bit filename leaves the helper as a literal, as Dovecot sends it."""
    response = fetch_response(_dovecot_single_mail())
    assert any(isinstance(record, tuple) for record in response)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize(("name", "raw"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_sample_mail_round_trips(name: str, raw: bytes, eol: bytes) -> None:
    """Each accepted sample, in LF as stored or CRLF as IMAP serves it, reads the same."""
    plan = assert_round_trip(raw.replace(b"\n", eol))
    assert plan.sections


def test_all_accepted_samples_are_covered() -> None:
    """22 of the 24 sample mails are accepted; the 2 rejected never reach a fetch plan."""
    assert len(SAMPLES) == 22
    assert {name for name, _ in SAMPLES}.isdisjoint({"1700000017", "1700000018"})


# What parse_mail finds in each: (attachments, of which nested, links); none is trivial.
TRICKY_FINDS = {
    "single text with link": (0, 0, 1),
    "single pdf": (1, 0, 0),
    "single pdf, CRLF": (1, 0, 0),
    "forwarded single pdf": (1, 1, 0),
    "forwarded twice, html link": (1, 1, 1),
    "unnamed octet-stream pdf": (1, 0, 0),
    "unnamed octet-stream jpeg": (0, 0, 0),
    "related image, xml": (1, 0, 0),
    "base64 message/rfc822": (1, 1, 0),
    "forward as .eml file": (1, 1, 0),
    "type-less parts": (1, 0, 1),
    "8-bit and RFC 2231 names": (2, 0, 0),
}


@pytest.mark.parametrize("name", TRICKY)
def test_tricky_mail_round_trips(name: str) -> None:
    """Single parts, nested forwards, sniffed, encoded and type-less parts read the same."""
    parsed = parse_mail(TRICKY[name])
    nested = sum(a.nested for a in parsed.attachments)
    assert (len(parsed.attachments), nested, len(parsed.links)) == TRICKY_FINDS[name]
    assert_round_trip(TRICKY[name])


def test_forwarded_single_part_is_fetched_as_the_inner_body() -> None:
    """A forwarded mail that is just a PDF: section 2.1 is its body, 2's header describes it."""
    plan = plan_for(TRICKY["forwarded single pdf"])
    assert _shape(plan)[0][1] == ("2.1", "application/pdf", "r.pdf", "document", "2", True)
    assert plan.nested == ["2"]


def test_nested_lists_outer_messages_first() -> None:
    """Messages forwarded in forwarded messages: outermost first, each with a selected part."""
    plan = plan_for(TRICKY["forwarded twice, html link"])
    assert plan.nested == ["2", "2.2"]
    assert [s.nested_in for s in plan.sections] == [None, "2", "2.2", "2.2", "2.2"]


def test_forwarded_mail_without_documents_needs_no_header() -> None:
    """A forwarded mail holding only an image contributes neither sections nor a header."""
    inner = _mail("Foto")
    inner.set_content(JPEG, maintype="image", subtype="jpeg", filename="foto.jpg")
    plan = plan_for(bytes(_forward(inner)))
    assert plan.nested == []
    assert [s.number for s in plan.sections] == ["1"]
    assert plan.skipped == ["foto.jpg (image/jpeg, 3 KB): not a document"]


def test_opaque_attached_mails_are_fetched_whole() -> None:
    """A base64 message/rfc822 or an octet-stream .eml is one "message" section."""
    assert plan_for(TRICKY["base64 message/rfc822"]).sections[1].kind == "message"
    assert plan_for(TRICKY["forward as .eml file"]).sections[1].kind == "message"


# -------------------------------------------------------------------- what is fetched


def test_big_image_and_zip_are_never_fetched() -> None:
    """2 MB of image and 2 MB of zip beside a small PDF: under 10 % of the mail is fetched."""
    big = hashlib.sha256(b"seed").digest() * (2 * 1024 * 1024 // 32)
    msg = _with(_mail(), big, "image/jpeg", "foto.jpg")
    _with(msg, big[::-1], "application/zip", "report.zip")
    raw = bytes(_with(msg, PDF, "application/pdf", "rechnung.pdf"))
    plan = plan_for(raw)
    assert [(s.number, s.kind) for s in plan.sections] == [("1", "text"), ("4", "document")]
    assert plan.skipped == [
        "foto.jpg (image/jpeg, 2.7 MB): not a document",
        "report.zip (application/zip, 2.7 MB): not a document",
    ]
    assert sum(s.size for s in plan.sections) < len(raw) / 10
    assembled, downloaded = fetch_and_assemble(raw, plan)
    assert downloaded < len(raw) / 10
    assert summary(parse_mail(assembled)) == summary(parse_mail(raw))


def test_unnamed_octet_stream_is_sniffed_then_fetched_only_if_a_document() -> None:
    """Unnamed octet-stream parts are "sniff": the PDF is kept, the JPEG never fully fetched."""
    for name, kept in (("unnamed octet-stream pdf", 2), ("unnamed octet-stream jpeg", 1)):
        raw = TRICKY[name]
        plan = plan_for(raw)
        assert plan.sections[1].kind == "sniff"
        assert plan.sections[1].filename is None
        assembled, _ = fetch_and_assemble(raw, plan)
        assert len(split(assembled).children) == kept


def test_oversized_document_is_skipped_with_its_reason() -> None:
    """A PDF above max_document_bytes is not fetched; the reason names size and limit."""
    plan = plan_fetch(bodystructure(DOVECOT_MIXED), max_document_bytes=20 * 1024)
    assert [s.number for s in plan.sections] == ["1.1", "1.2"]
    assert plan.skipped[-1] == (
        "Rechnung-2024-0815.pdf (application/pdf): at least 48 KB, over the 20 KB limit"
    )


def test_oversized_text_html_is_skipped_and_plain_text_sniffed() -> None:
    """Text over max_text_bytes: HTML is skipped, text/plain (maybe a type-less PDF) sniffed."""
    plan = plan_fetch(bodystructure(DOVECOT_MIXED), max_document_bytes=LIMIT, max_text_bytes=1000)
    assert [(s.number, s.kind) for s in plan.sections] == [("1.1", "text"), ("3", "document")]
    plan = plan_fetch(bodystructure(DOVECOT_MIXED), max_document_bytes=LIMIT, max_text_bytes=100)
    assert (plan.sections[0].number, plan.sections[0].kind) == ("1.1", "sniff")
    assert "part 1.2 (text/html): 1 KB of text, over the 100 bytes limit" in plan.skipped


def test_is_document_prefix_decodes_base64_and_quoted_printable() -> None:
    """The first transfer-encoded bytes decide: PDF and XML yes, JPEG and HTML no."""
    pdf = base64.encodebytes(PDF + bytes(4000))
    jpeg = base64.encodebytes(JPEG)
    assert is_document_prefix(pdf[:1024], "base64")
    assert is_document_prefix(pdf[:SNIFF_BYTES], "BASE64")
    assert not is_document_prefix(jpeg[:1024], "base64")
    assert not is_document_prefix(jpeg[:SNIFF_BYTES], "base64")
    assert is_document_prefix(b'<?xml version=3D"1.0"?>\n<Invoice/>', "quoted-printable")
    assert not is_document_prefix(b"<html><body>invoice</body></html>", "7bit")
    assert is_document_prefix(pdf[:8], "base64")  # "JVBERi0x" decodes to "%PDF-1"
    assert not is_document_prefix(pdf[:7], "base64")  # "%PD" and a partial quantum
    assert not is_document_prefix(b"\xff\xfe not base64 at all", "base64")


# ------------------------------------------------------------------ hostile input


def test_too_many_parts_is_malformed() -> None:
    """More than 500 parts in a BODYSTRUCTURE is refused before anything is fetched."""
    raw = _multipart(*[b"Content-Type: image/gif\n\nx"] * 500)
    with pytest.raises(MalformedMailError, match="too many MIME parts"):
        plan_for(raw)


def test_nesting_limit_matches_parse_mail() -> None:
    """Ten forwarded levels are planned; eleven are refused, as parse_mail refuses them."""
    mail = _with(_mail(), PDF, "application/pdf", "tief.pdf")
    for _ in range(10):
        mail = _forward(mail)
    plan = assert_round_trip(bytes(mail))
    assert plan.sections[-1].number == "2." * 10 + "2"
    deeper = bytes(_forward(mail))
    with pytest.raises(MalformedMailError, match="deeper than 10"):
        parse_mail(deeper)
    with pytest.raises(MalformedMailError, match="deeper than 10"):
        plan_for(deeper)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"text",
        (),
        (b"text", b"plain"),
        (b"text", b"plain", None, None, None, b"7bit", b"big"),
        ((b"text", b"plain", None, None, None, b"7bit", -1),),
        ([], b"mixed"),
        ([b"not a part"], b"mixed"),
        ((b"text",), b"mixed"),
        ((1, 2), b"plain", None, None, None, b"7bit", 1),
    ],
)
def test_unreadable_bodystructure_is_a_protocol_error(value: object) -> None:
    """Shapes no server sends raise ProtocolError, never TypeError or IndexError."""
    with pytest.raises(ProtocolError):
        plan_fetch(value, max_document_bytes=LIMIT)


def test_absurdly_deep_structure_is_refused_without_recursion_error() -> None:
    """Thousands of nested parentheses end in MalformedMailError, not a RecursionError."""
    value: object = (b"text", b"plain", None, None, None, b"7bit", 1, 1)
    for _ in range(5000):
        value = (value, b"mixed")
    with pytest.raises(MalformedMailError):
        plan_fetch(value, max_document_bytes=LIMIT)


_ATOMS = (
    st.none()
    | st.integers(min_value=-5, max_value=10**9)
    | st.binary(max_size=12)
    | st.sampled_from(
        [
            *(b"text", b"plain", b"html", b"application", b"pdf", b"octet-stream", b"message"),
            *(b"rfc822", b"base64", b"7bit", b"mixed", b"attachment", b"filename", b"name"),
            *(b"filename*", b"filename*0*", b"x.pdf", b"utf-8''%FF.pdf", b"=?utf-8?q?a=2Epdf?="),
        ]
    )
)
# Leaves shaped like body-type-1part, so that walks also get deep before anything breaks.
_LEAVES = st.builds(
    lambda head, size, tail: (*head, size, *tail),
    st.tuples(_ATOMS, _ATOMS, st.lists(_ATOMS, max_size=4).map(tuple), _ATOMS, _ATOMS, _ATOMS),
    st.integers(min_value=0, max_value=10**9),
    st.lists(_ATOMS | st.lists(_ATOMS, max_size=4).map(tuple), max_size=6),
)
_STRUCTURES = st.recursive(
    _ATOMS | _LEAVES,
    lambda inner: st.lists(inner, max_size=14).map(tuple) | st.lists(inner, max_size=5),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(_STRUCTURES)
def test_arbitrary_structures_raise_only_project_errors(value: object) -> None:
    """Whatever nested tuples, lists, bytes and ints arrive, only InvoiceSyncError escapes."""
    try:
        plan = plan_fetch(value, max_document_bytes=LIMIT)
    except InvoiceSyncError:
        return
    assert all(s.kind in ("document", "message", "text", "sniff") for s in plan.sections)


_B64 = "Content-Transfer-Encoding: base64\n"
# Leaf parts for generated mails: header lines, then the body.
_LEAF_PARTS = {
    "pdf": ('Content-Type: application/pdf; name="a.pdf"\n' + _B64, base64.encodebytes(PDF)),
    "octet pdf": ("Content-Type: application/octet-stream\n" + _B64, base64.encodebytes(PDF[1:])),
    "octet jpeg": ("Content-Type: application/octet-stream\n" + _B64, base64.encodebytes(JPEG)),
    "typeless pdf": (_B64, base64.encodebytes(PDF + b"%typeless")),
    "xml": ('Content-Type: text/xml; name="e.xml"\n' + _B64, base64.encodebytes(XML)),
    "image": ('Content-Type: image/png; name="p.png"\n' + _B64, base64.encodebytes(JPEG)),
    "zip": ('Content-Type: application/zip; name="r.zip"\n' + _B64, base64.encodebytes(PDF)),
    "text": ("Content-Type: text/plain\n", b"siehe https://portal.example/t\n"),
    "html": (
        "Content-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n",
        b'<a href=3D"https://portal.example/h?a=3D1">R</a>\n',
    ),
}
_SPECS = st.recursive(
    st.sampled_from(sorted(_LEAF_PARTS)),
    lambda inner: st.tuples(
        st.sampled_from(["mixed", "alternative", "forward"]),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=8,
)


def _entity(spec: Any, path: str) -> bytes:
    """A generated entity: a leaf, a multipart, or a forwarded mail (message/rfc822)."""
    if isinstance(spec, str):
        header, body = _LEAF_PARTS[spec]
        return header.encode() + b"\n" + body
    kind: str = spec[0]
    children: list[Any] = spec[1]
    if kind == "forward":
        inner = HEAD + _entity(("mixed", children), path)
        return b"Content-Type: message/rfc822\n\n" + inner
    boundary = f"=_{path}".encode()
    parts = [_entity(child, f"{path}.{i}") for i, child in enumerate(children, 1)]
    body = b"".join(b"--" + boundary + b"\n" + part.rstrip(b"\n") + b"\n" for part in parts)
    head = b"Content-Type: multipart/" + kind.encode() + b'; boundary="' + boundary + b'"\n\n'
    return head + body + b"--" + boundary + b"--\n"


@settings(max_examples=60, deadline=None)
@given(_SPECS)
def test_generated_mails_round_trip(spec: Any) -> None:
    """Any tree of documents, junk, texts and forwards reads the same after a selective fetch."""
    assert_round_trip(HEAD + _entity(spec, "0"))


# ---------------------------------------------------------------------- assembly


def test_assembled_header_keeps_fields_and_replaces_the_content_type() -> None:
    """Only the MIME content fields (folded lines included) give way to one multipart/mixed."""
    header = (
        b"From: a@example.com\r\nSubject: Rechnung\r\n folded\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/related;\r\n boundary=xyz\r\n"
        b"Content-Transfer-Encoding: 7bit\r\nMessage-ID: <1@x>\r\n\r\n"
    )
    part = Section("2", "application/pdf", "r.pdf", "base64", 100, "document")
    mime = b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assembled = assemble(header, [(part, mime, base64.encodebytes(PDF))], {})
    head = assembled.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"From: a@example.com\r\nSubject: Rechnung\r\n folded\r\n")
    assert b"boundary=xyz" not in head and b"7bit" not in head
    assert head.count(b"MIME-Version") == 1 and head.count(b"Content-Type") == 1
    parsed = parse_mail(assembled)
    assert (parsed.subject, parsed.message_id) == ("Rechnung folded", "<1@x>")
    assert [a.data for a in parsed.attachments] == [PDF]


def test_assemble_is_deterministic_and_its_boundary_is_not_in_the_content() -> None:
    """Same sections, same bytes; the boundary occurs only as delimiter lines."""
    raw = TRICKY["forwarded twice, html link"]
    plan = plan_for(raw)
    first, _ = fetch_and_assemble(raw, plan)
    second, _ = fetch_and_assemble(raw, plan)
    assert first == second
    boundaries = re.findall(rb'boundary="([^"]+)"', first)
    assert len(set(boundaries)) == 3  # the top message and the two forwarded ones
    for boundary in boundaries:
        lines = [line for line in first.splitlines() if boundary in line]
        assert all(line.startswith((b"--" + boundary, b"Content-Type:")) for line in lines)


def test_assemble_without_the_nested_header_is_a_protocol_error() -> None:
    """A part inside a forwarded mail needs that mail's header; missing it is reported."""
    part = Section("2.1", "application/pdf", None, "base64", 10, "document", "2", True)
    with pytest.raises(ProtocolError, match="no header for attached message 2"):
        assemble(b"Subject: x\n\n", [(part, b"", b"JVBERi0=")], {})


def test_assemble_of_nothing_keeps_the_headers() -> None:
    """When every sniffed part proved no document, the headers still parse alone."""
    raw = TRICKY["unnamed octet-stream jpeg"].replace(b"Content-Type: text/plain", b"X-Y: z", 1)
    assembled = assemble(split(raw).header, [], {})
    assert summary(parse_mail(assembled))["headers"] == summary(parse_mail(raw))["headers"]
    assert parse_mail(assembled).attachments == []


@pytest.mark.parametrize("single", [False, True], ids=["attached", "whole body"])
@pytest.mark.parametrize("smtp", [False, True], ids=["LF", "CRLF"])
def test_large_base64_documents_are_rewrapped_into_long_lines(single: bool, smtp: bool) -> None:
    """A 300 KB PDF's base64 arrives in 76-character lines; the assembled mail has few, long
    lines, and parse_mail still takes exactly the same document from it."""
    pdf = PDF + bytes(random.Random(7).getrandbits(8) for _ in range(300_000))
    if single:
        message = _mail()
        message.set_content(pdf, "application", "pdf", filename="gross.pdf")
    else:
        message = _with(_mail(), pdf, "application/pdf", "gross.pdf")
    raw = message.as_bytes(policy=policy.SMTP) if smtp else bytes(message)
    assembled, _ = fetch_and_assemble(raw, assert_round_trip(raw))
    [attachment] = parse_mail(assembled).attachments
    assert attachment.data == pdf
    assert raw.count(b"\n") > 5000 and assembled.count(b"\n") < 100
