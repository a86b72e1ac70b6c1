"""Sans-I/O MIME walker: raw message bytes → candidate documents and links.

``parse_mail`` never touches the network or the disk. It finds invoice PDFs and
possible XML e-invoices wherever mail clients put them (attached, inline, typed
``application/octet-stream``, inside forwarded ``message/rfc822`` mails), decides by
the *bytes* whether a part really is a PDF, and collects http(s) links from the text
bodies for a later download stage. Every failure of the stdlib ``email`` package on
hostile input becomes a ``MalformedMailError``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import datetime as dt
import hashlib
import quopri
import re
from collections.abc import Callable
from email import errors as email_errors
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesFeedParser, BytesParser
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import TypeVar
from urllib.parse import urlsplit

from invoicesync.errors import InvoiceSyncError, MalformedMailError
from invoicesync.models import Attachment, ParsedMail
from invoicesync.sniff import is_pdf

__all__ = ["MAX_DEPTH", "MAX_PARTS", "parse_mail"]

#: More MIME parts than this (containers included) and the mail is refused.
MAX_PARTS = 200
#: Deeper nesting of attached messages (message/rfc822 in message/rfc822 ...) is refused.
MAX_DEPTH = 10
# Link scanning reads at most this many characters of one text part: bounded work on hostile mail.
_MAX_TEXT_CHARS = 2_000_000

_PDF_TYPES = frozenset(
    {"application/pdf", "application/x-pdf", "application/acrobat", "applications/vnd.pdf"}
    | {"text/pdf", "text/x-pdf"}
)
_XML_TYPES = frozenset({"application/xml", "text/xml"})
# Types senders use when they do not know (or care) what a file is: the bytes decide.
_GENERIC_TYPES = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/binary"}
    | {"application/download", "application/force-download", "application/x-download"}
    | {"application/unknown"}
)
_TEXT_TYPES = frozenset({"text/plain", "text/html"})
# Defects the base64 decoder reports when it had to guess or gave up (padding alone is benign).
_BAD_BASE64 = (email_errors.InvalidBase64CharactersDefect, email_errors.InvalidBase64LengthDefect)

_XML_HEAD = re.compile(
    rb"<(?:\?xml\b|!--|!doctype\s+(?P<doctype>[\w.:\-]+)|(?P<tag>[A-Za-z_][\w.:\-]*)[\s/>])",
    re.IGNORECASE,
)
# An HTML page is not an e-invoice, even when it parses as a tag soup.
_HTML_ROOTS = frozenset({b"html", b"head", b"body", b"div", b"p", b"table", b"span", b"br", b"a"})
_URL = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_PIECE = 64 * 1024
T = TypeVar("T")
# Base64 bodies longer than this are decoded by ``_payload`` itself.
_LARGE_PAYLOAD = 1024 * 1024


# The structure is parsed with compat32, whose header values are plain strings: the
# default policy builds a header object on every read of a header (Content-Type is read
# several times per part), which was half of the time spent on a mail. The few headers
# shown to people are decoded with the default policy's header factory (``_header``).
_STRUCTURE = policy.compat32
_HEADERS = policy.default


def _parse(raw: bytes) -> Message:
    """``raw`` parsed in 64 KiB pieces: never one decoded copy of a whole large mail.

    (``BytesParser.parsebytes`` decodes it whole; ``BytesParser.parse`` would turn CRLF
    into LF inside 8bit parts and so change the documents' bytes.)
    """
    parser = BytesFeedParser(policy=_STRUCTURE)
    view = memoryview(raw)
    for start in range(0, len(raw), _PIECE):
        parser.feed(bytes(view[start : start + _PIECE]))
    return parser.close()


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse one raw RFC 5322 message into headers, candidate documents and links.

    Raises ``MalformedMailError`` (with the reason) for bytes that are not a mail, a
    document part whose base64 cannot be decoded, more than ``MAX_PARTS`` parts,
    nesting deeper than ``MAX_DEPTH``, or any failure of the ``email`` package.
    """
    try:
        message = _parse(raw)
        _require_headers(message, raw)
        subject, sender = _header(message, "subject"), _header(message, "from")
        if subject is None and sender is None:
            _require_readable_header(message)
        walker = _Walker()
        walker.walk(message, depth=0, nested=False, in_multipart=False)
        return ParsedMail(
            message_id=_header(message, "message-id", raw_fallback=True),
            subject=subject,
            sender=sender,
            date=_date(message),
            attachments=walker.attachments,
            links=list(walker.links),
            skipped=walker.skipped,
        )
    except InvoiceSyncError:
        raise
    except Exception as exc:  # the email package raises many types on hostile input
        raise MalformedMailError(
            f"unparseable mail: {type(exc).__name__}: {exc}", stage="mail"
        ) from exc


# ------------------------------------------------------------------ headers


def _require_headers(message: Message, raw: bytes) -> None:
    if not message.keys():
        if any(
            isinstance(d, email_errors.MissingHeaderBodySeparatorDefect) for d in message.defects
        ):
            reason = f"not a mail: no header section (starts with {_start(raw)})"
        else:
            reason = "not a mail: no headers"
        raise MalformedMailError(reason, stage="mail")


def _require_readable_header(message: Message) -> None:
    for name, value in message.raw_items():
        try:
            str(_HEADERS.header_fetch_parse(name, value))
            return  # one readable header is enough: a broken one elsewhere is not fatal
        except Exception:
            continue
    raise MalformedMailError("not a mail: no header can be read", stage="mail")


def _header(message: Message, name: str, *, raw_fallback: bool = False) -> str | None:
    """The decoded header, or None when missing or unreadable."""
    raw = _raw_header(message, name)
    if raw is None:
        return None
    try:
        return _clean(str(_HEADERS.header_fetch_parse(name, raw)))
    except Exception:
        return _clean(raw) if raw_fallback else None


def _raw_header(message: Message, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _date(message: Message) -> dt.datetime | None:
    # Parse the raw value ourselves: the header object may raise or hold a naive datetime.
    raw = _raw_header(message, "date")
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(" ".join(raw.split()))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # RFC 5322 "-0000" means "UTC, local zone unknown"; the stdlib returns a naive datetime.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _clean(text: str) -> str | None:
    # 8-bit header bytes arrive as surrogate escapes; make them real (or replaced) characters.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = _CONTROL.sub(" ", text).strip()
    return text or None


def _filename(part: Message) -> str | None:
    """The part's filename (RFC 2231 and RFC 2047 decoded), without any directory."""
    fields = (_raw_header(part, "content-disposition") or "") + (
        _raw_header(part, "content-type") or ""
    )
    try:
        if fields.isascii():
            name = part.get_filename() or _raw_filename(part)
        else:  # 8-bit bytes in the header: only the default policy keeps them
            name = _with_header_policy(part, part.get_filename) or _raw_filename(part)
    except Exception:  # a broken header must not hide the part: its bytes are still sniffed
        name = _raw_filename(part)
    if not name:
        return None
    if "=?" in name:  # an encoded word the header parser left alone (unquoted, say)
        with contextlib.suppress(ValueError, LookupError, UnicodeError, HeaderParseError):
            name = str(make_header(decode_header(name)))
    cleaned = _clean(name)
    # A name like "../../x.pdf" must never become a path later on.
    cleaned = cleaned.replace("\\", "/").rsplit("/", 1)[-1].strip() if cleaned else None
    return cleaned or None


def _with_header_policy(part: Message, read: Callable[[], T]) -> T:
    """``read()`` with the part's headers seen through the default policy.

    compat32 turns 8-bit header bytes (a raw UTF-8 filename, say) into U+FFFD; the
    default policy keeps them, as the filename stored with the document must.
    """
    structure = part.policy
    part.policy = _HEADERS
    try:
        return read()
    finally:
        part.policy = structure


def _raw_filename(part: Message) -> str | None:
    # Some clients write an unquoted encoded word (filename==?utf-8?q?...?=), which the
    # header parser rejects as an invalid parameter: read it from the raw header instead.
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        match = re.search(
            rf'(?:^|;)\s*{param}\s*=\s*"?(=\?[^"\s;]+\?=)', _raw_header(part, header) or "", re.I
        )
        if match:
            return match.group(1)
    return None


# -------------------------------------------------------------------- parts


class _Walker:
    """Collects documents, skip reasons and links while walking one message tree."""

    def __init__(self) -> None:
        self.parts = 0
        self.attachments: list[Attachment] = []
        self.skipped: list[str] = []
        self.links: dict[str, None] = {}  # an ordered set
        self._digests: set[bytes] = set()

    def walk(self, part: Message, *, depth: int, nested: bool, in_multipart: bool) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedMailError(f"too many MIME parts (more than {MAX_PARTS})", stage="mail")
        payload = part.get_payload()
        if isinstance(payload, list):
            children = [child for child in payload if isinstance(child, Message)]
            if part.get_content_maintype() == "message":
                for inner in children:
                    self._walk_message(part, inner, depth=depth + 1)
            else:
                for sub in children:
                    self.walk(sub, depth=depth, nested=nested, in_multipart=True)
        else:
            self._leaf(part, depth=depth, nested=nested, in_multipart=in_multipart)

    def _walk_message(self, container: Message, inner: Message, *, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise MalformedMailError(
                f"attached messages nested deeper than {MAX_DEPTH}", stage="mail"
            )
        cte = container.get("content-transfer-encoding", "")
        encoded = str(cte).strip().lower() in ("base64", "quoted-printable")
        if encoded and not inner.keys():
            # Not allowed by RFC 2046, but some clients encode the attached message itself;
            # the parser then sees headerless text, so decode and parse it once more.
            text = str(inner.get_payload()).encode("ascii", "surrogateescape")
            try:
                data = (
                    base64.b64decode(text)
                    if "base64" in str(cte).lower()
                    else quopri.decodestring(text)
                )
            except (binascii.Error, ValueError):
                return
            inner = BytesParser(policy=_STRUCTURE).parsebytes(data)
        self.walk(inner, depth=depth, nested=True, in_multipart=False)

    def _leaf(self, part: Message, *, depth: int, nested: bool, in_multipart: bool) -> None:
        ctype = part.get_content_type()
        has_type = _raw_header(part, "content-type") is not None
        filename = _filename(part)
        ext = filename.rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
        claims_pdf = ctype in _PDF_TYPES or ext == "pdf"
        claims_xml = ctype in _XML_TYPES or ext == "xml"
        # A type-less top-level body is plain text (RFC 2045); inside a multipart we sniff it.
        generic = ctype in _GENERIC_TYPES or (not has_type and in_multipart)
        if not (claims_pdf or claims_xml or generic):
            if ctype in _TEXT_TYPES:
                self._scan_links(part, html=ctype == "text/html")
            return

        data = _payload(part)
        if not isinstance(data, bytes):
            return
        label = filename or f"unnamed {ctype} part"
        # The type as declared; a part without one is "unknown binary", not RFC 2045's text.
        declared = ctype if has_type else "application/octet-stream"
        if is_pdf(data):
            self._add(filename, declared, "pdf", data, nested)
        elif (claims_xml or generic) and _looks_like_xml(data):
            self._add(filename, declared, "xml", data, nested)
        elif claims_pdf or claims_xml:
            if any(isinstance(d, _BAD_BASE64) for d in part.defects):
                raise MalformedMailError(f"{label}: base64 body cannot be decoded", stage="mail")
            what = "a PDF" if claims_pdf else "XML"
            self.skipped.append(f"{label}: not {what} ({_describe(data)})")
        elif ext == "eml":
            inner = BytesParser(policy=_STRUCTURE).parsebytes(data)
            if inner.keys():  # a forwarded mail sent as a plain file
                self._walk_message(part, inner, depth=depth + 1)
        elif not has_type:
            self._scan_links(part, html=False)

    def _add(
        self, filename: str | None, content_type: str, kind: str, data: bytes, nested: bool
    ) -> None:
        digest = hashlib.sha256(data).digest()
        if digest in self._digests:  # the same document twice in one mail is one document
            return
        self._digests.add(digest)
        self.attachments.append(
            Attachment(
                filename=filename,
                content_type=content_type,
                kind=kind,
                data=data,
                nested=nested,
            )
        )

    def _scan_links(self, part: Message, *, html: bool) -> None:
        text = _text(part)[:_MAX_TEXT_CHARS]
        for link in _html_links(text) if html else _bare_urls(text):
            normalised = _normalise_link(link)
            if normalised is not None:
                self.links.setdefault(normalised, None)


def _payload(part: Message) -> bytes | None:
    """``part.get_payload(decode=True)``, with fewer copies of a large base64 body.

    The email package makes three copies of the encoded text before decoding it;
    for a 20 MB document that was the peak memory of a whole run. Valid base64 is
    decoded here from one copy; anything else (bad characters, missing padding)
    goes the email package's way, with the defects it records.
    """
    payload = part.get_payload()
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == "base64" and isinstance(payload, str) and len(payload) > _LARGE_PAYLOAD:
        try:
            compact = payload.encode("ascii").translate(None, b"\r\n")
            return binascii.a2b_base64(compact, strict_mode=True)
        except (UnicodeEncodeError, binascii.Error):
            pass
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _looks_like_xml(data: bytes) -> bool:
    head = data[:4096]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        head = head.decode("utf-16", "ignore").encode("utf-8", "ignore")
    match = _XML_HEAD.match(head.removeprefix(codecs.BOM_UTF8).lstrip())
    if match is None:
        return False
    root = (match.group("doctype") or match.group("tag") or b"").rsplit(b":", 1)[-1].lower()
    return root not in _HTML_ROOTS


def _describe(data: bytes) -> str:
    return f"starts with {_start(data)}" if data else "empty"


def _start(data: bytes) -> str:
    return repr(data[:5].decode("latin-1"))


# -------------------------------------------------------------------- links


def _text(part: Message) -> str:
    data = _payload(part)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name: most mail today is UTF-8 anyway
        return data.decode("utf-8", errors="replace")


class _LinkParser(HTMLParser):
    """Collects ``href`` targets of links and the visible text (for bare URLs)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # attribute values are always unescaped
        self.found: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in ("a", "area"):
            self.found.extend(value for key, value in attrs if key == "href" and value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.found.extend(_bare_urls(data))


def _html_links(text: str) -> list[str]:
    parser = _LinkParser()
    # html.parser has raised AssertionError on odd markup; links are best effort.
    with contextlib.suppress(Exception):
        parser.feed(text)
        parser.close()
    return parser.found


def _bare_urls(text: str) -> list[str]:
    urls = []
    for url in _URL.findall(text):
        # Sentence punctuation after a bare URL is not part of it; a ")" only when unbalanced.
        while url[-1] in ".,;:!?'\"" or (url[-1] == ")" and url.count("(") < url.count(")")):
            url = url[:-1]
        urls.append(url)
    return urls


def _normalise_link(link: str) -> str | None:
    # Browsers drop tabs and newlines inside URLs; wrapped href values contain them.
    link = re.sub(r"[\t\r\n]", "", link).strip()
    try:
        parts = urlsplit(link)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return link
