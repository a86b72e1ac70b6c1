"""Sans-I/O MIME walker: raw message bytes → candidate documents and links.

``parse_mail`` never touches the network or the disk. It finds invoice PDFs and
possible XML e-invoices wherever mail clients put them (attached, inline, typed
``application/octet-stream``, inside forwarded ``message/rfc822`` mails), decides by
the *bytes* whether a part really is a PDF, and collects http(s) links from the text
bodies for a later download stage. Every failure of the stdlib ``email`` package on
hostile input becomes a ``MalformedMailError``; a part that fails alone is skipped with its
reason and the rest of the mail is still read.

Work is bounded whatever the bytes: header values are cut to ``MAX_HEADER_CHARS`` as they
are parsed, the parser stops building parts past a multiple of ``MAX_PARTS``, and link
scanning reads at most ``MAX_LINKS_PER_PART`` URLs of up to ``MAX_URL_CHARS`` characters
per text part, in one linear pass (html.parser was quadratic on unclosed tags).
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import datetime as dt
import hashlib
import html
import itertools
import quopri
import re
from collections.abc import Callable
from email import errors as email_errors
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesFeedParser, BytesParser
from email.policy import Compat32, Policy
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

from invoicesync.errors import InvoiceSyncError, MalformedMailError
from invoicesync.models import Attachment, ParsedMail
from invoicesync.sniff import is_pdf

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_CHARS",
    "MAX_LINKS_PER_PART",
    "MAX_PARTS",
    "MAX_URL_CHARS",
    "parse_mail",
]

#: More MIME parts than this (containers included) and the mail is refused.
MAX_PARTS = 200
#: Deeper nesting of attached messages (message/rfc822 in message/rfc822 ...) is refused.
MAX_DEPTH = 10
#: Header values are cut to this many characters (at a space or comma) as they are parsed:
#: the email package decodes a long From or Subject in quadratic time and memory.
MAX_HEADER_CHARS = 8 * 1024
#: Links longer than this are dropped (browsers and servers refuse much shorter ones).
MAX_URL_CHARS = 2048
#: At most this many distinct links are taken from one text part.
MAX_LINKS_PER_PART = 200
# Link scanning reads at most this many characters of one text part: bounded work on hostile mail.
_MAX_TEXT_CHARS = 2_000_000
# The parser itself stops here; nested re-parses count twice, the walker counts exactly.
_MAX_PARSED_PARTS = 2 * MAX_PARTS
# Content-Type and Content-Disposition keep this many parameters: the email package reads
# parameters in time quadratic in their number (and in ";" inside quotes).
_MAX_PARAMS = 64
_PARAMETERISED = frozenset({"content-type", "content-disposition"})
# Only the first headers are tried when looking for one that can be read at all.
_MAX_HEADERS_TRIED = 100
# Text charsets decoded as UTF-8 instead: idna fails under any error handler, punycode (and
# idna through it) takes quadratic time; the escape codecs are no mail charsets.
_UNSAFE_CODECS = frozenset({"idna", "punycode", "unicode_escape", "raw_unicode_escape"})

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
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]+")
# Sentence punctuation after a bare URL is not part of it.
_TRAILING = frozenset(".,;:!?'\"")


_PIECE = 64 * 1024
T = TypeVar("T")
# Base64 bodies longer than this are decoded by ``_payload`` itself.
_LARGE_PAYLOAD = 1024 * 1024


# The structure is parsed with compat32, whose header values are plain strings: the
# default policy builds a header object on every read of a header (Content-Type is read
# several times per part), which was half of the time spent on a mail. The few headers
# shown to people are decoded with the default policy's header factory (``_header``).
_HEADERS = policy.default


class _Bounds:
    """What parsing one mail may build: parts are counted, cut headers recorded."""

    def __init__(self) -> None:
        self.parts = 0
        self.cut: dict[str, int] = {}  # header name → its length before the cut

    def message(self, policy: Policy[Message]) -> Message:
        """The parser's message factory: refuses to build more than ``_MAX_PARSED_PARTS``."""
        self.parts += 1
        if self.parts > _MAX_PARSED_PARTS:
            raise MalformedMailError(f"too many MIME parts (more than {MAX_PARTS})", stage="mail")
        return Message(policy=policy)

    def notes(self) -> list[str]:
        return [
            f"{name} header cut to {MAX_HEADER_CHARS} of its {length} characters"
            for name, length in list(self.cut.items())[:10]
        ]


class _BoundedCompat32(Compat32):
    """compat32 that cuts every header value as the parser reads it (see ``_cap_header``)."""

    bounds: _Bounds | None = None

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        capped = _cap_header(name, value)
        if capped is not value and self.bounds is not None:
            self.bounds.cut.setdefault(name.strip(), len(value))
        return name, capped


def _cap_header(name: str, value: str) -> str:
    """``value`` cut to ``MAX_HEADER_CHARS`` (at its last space or comma, where there is one)
    and, for Content-Type and Content-Disposition, to ``_MAX_PARAMS`` parameters."""
    capped = value
    if len(capped) > MAX_HEADER_CHARS:
        head = capped[:MAX_HEADER_CHARS]
        cut = max(head.rfind(separator) for separator in (" ", "\t", ","))
        capped = (head[:cut] if cut > MAX_HEADER_CHARS // 2 else head).rstrip("\r\n")
    if name.strip().lower() in _PARAMETERISED and capped.count(";") > _MAX_PARAMS:
        capped = ";".join(capped.split(";", _MAX_PARAMS + 1)[: _MAX_PARAMS + 1])
    return value if capped == value else capped


def _policy(bounds: _Bounds) -> Compat32:
    # Policy takes any class attribute as a keyword; typeshed knows only the standard ones.
    return _BoundedCompat32(bounds=bounds, message_factory=bounds.message)  # type: ignore[call-arg]


def _parse(raw: bytes, structure: Compat32) -> Message:
    """``raw`` parsed in 64 KiB pieces: never one decoded copy of a whole large mail.

    (``BytesParser.parsebytes`` decodes it whole; ``BytesParser.parse`` would turn CRLF
    into LF inside 8bit parts and so change the documents' bytes.)
    """
    parser = BytesFeedParser(policy=structure)
    view = memoryview(raw)
    for start in range(0, len(raw), _PIECE):
        parser.feed(bytes(view[start : start + _PIECE]))
    return parser.close()


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse one raw RFC 5322 message into headers, candidate documents and links.

    Raises ``MalformedMailError`` (with the reason) for bytes that are not a mail, more
    than ``MAX_PARTS`` parts, nesting deeper than ``MAX_DEPTH``, a failure of the
    ``email`` package on the mail as a whole, or a mail whose only would-be documents
    are unreadable (base64 that cannot be decoded, say). A part that fails alone beside
    a document or a link is listed in ``skipped`` with its reason, as are cut headers.
    """
    try:
        bounds = _Bounds()
        structure = _policy(bounds)
        message = _parse(raw, structure)
        _require_headers(message, raw)
        subject, sender = _header(message, "subject"), _header(message, "from")
        if subject is None and sender is None:
            _require_readable_header(message)
        walker = _Walker(structure)
        walker.walk(message, depth=0, nested=False, in_multipart=False)
        if walker.broken and not walker.attachments and not walker.links:
            raise MalformedMailError(walker.broken[0], stage="mail")
        return ParsedMail(
            message_id=_header(message, "message-id", raw_fallback=True),
            subject=subject,
            sender=sender,
            date=_date(message),
            attachments=walker.attachments,
            links=list(walker.links),
            skipped=walker.skipped + bounds.notes(),
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
    for name, value in itertools.islice(message.raw_items(), _MAX_HEADERS_TRIED):
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

    def __init__(self, structure: Compat32) -> None:
        self.structure = structure  # the policy (and bounds) of the whole mail
        self.parts = 0
        self.attachments: list[Attachment] = []
        self.skipped: list[str] = []
        #: Reasons of would-be documents that could not be read (also in ``skipped``).
        self.broken: list[str] = []
        self.links: dict[str, None] = {}  # an ordered set
        self._digests: set[bytes] = set()

    def walk(self, part: Message, *, depth: int, nested: bool, in_multipart: bool) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedMailError(f"too many MIME parts (more than {MAX_PARTS})", stage="mail")
        # is_multipart, not get_payload(): that decodes a leaf's 8-bit text with its charset.
        if part.is_multipart():
            payload = part.get_payload()
            children = [child for child in payload if isinstance(child, Message)]
            if part.get_content_maintype() == "message":
                for inner in children:
                    self._walk_message(part, inner, depth=depth + 1)
            else:
                for sub in children:
                    self.walk(sub, depth=depth, nested=nested, in_multipart=True)
        else:
            try:
                self._leaf(part, depth=depth, nested=nested, in_multipart=in_multipart)
            except InvoiceSyncError:
                raise  # the limits stop the whole mail
            except Exception as exc:  # codecs and the email package fail in many ways
                self._unreadable(part, f"{type(exc).__name__}: {exc}")

    def _unreadable(self, part: Message, reason: str) -> None:
        """Records a part that could not be read; only would-be documents can fail the mail."""
        note = f"{_label(part)}: unreadable ({reason})"
        self.skipped.append(note)
        if part.get_content_type() not in _TEXT_TYPES:
            self.broken.append(note)

    def _walk_message(self, container: Message, inner: Message, *, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise MalformedMailError(
                f"attached messages nested deeper than {MAX_DEPTH}", stage="mail"
            )
        cte = str(container.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable") and not inner.keys():
            # Not allowed by RFC 2046, but some clients encode the attached message itself;
            # the parser then sees headerless text, so decode and parse it once more.
            # (decode=True: the raw bytes, 8-bit ones too; a headerless part has no encoding.)
            text = inner.get_payload(decode=True)
            try:
                if not isinstance(text, bytes):
                    raise ValueError("no body")
                data = _lenient_base64(text) if cte == "base64" else quopri.decodestring(text)
                inner = BytesParser(policy=self.structure).parsebytes(data)
            except InvoiceSyncError:
                raise
            except Exception as exc:  # the parser on the decoded bytes, say
                note = f"attached message: {cte} body cannot be decoded ({exc})"
                self.skipped.append(note)
                self.broken.append(note)
                return
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
                note = f"{label}: base64 body cannot be decoded"
                self.skipped.append(note)
                self.broken.append(note)
                return
            what = "a PDF" if claims_pdf else "XML"
            self.skipped.append(f"{label}: not {what} ({_describe(data)})")
        elif ext == "eml":
            inner = BytesParser(policy=self.structure).parsebytes(data)
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
        found = _html_links(text) if html else _bare_urls(text)
        for link in found[:MAX_LINKS_PER_PART]:
            normalised = _normalise_link(link)
            if normalised is not None:
                self.links.setdefault(normalised, None)


def _label(part: Message) -> str:
    """How a part is named in a skip reason: its filename, else its type."""
    try:
        filename = _filename(part)
    except Exception:  # the part is being reported as unreadable: its name may be too
        filename = None
    return filename or f"unnamed {part.get_content_type()} part"


def _payload(part: Message) -> bytes | None:
    """``part.get_payload(decode=True)``, with fewer copies of a large base64 body.

    The email package makes three copies of the encoded text before decoding it;
    for a 20 MB document that was the peak memory of a whole run. Valid base64 is
    decoded here from one copy; anything else (bad characters, missing padding)
    goes the email package's way, with the defects it records.
    """
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == "base64":
        try:  # get_payload() decodes 8-bit text with the part's charset, which may fail
            payload = part.get_payload()
        except (LookupError, ValueError, TypeError):
            payload = None  # not ASCII anyway, so not for the fast path
        if isinstance(payload, str) and len(payload) > _LARGE_PAYLOAD:
            try:
                compact = payload.encode("ascii").translate(None, b"\r\n")
                return binascii.a2b_base64(compact, strict_mode=True)
            except (UnicodeEncodeError, binascii.Error):
                pass
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _lenient_base64(text: bytes) -> bytes:
    """Base64 decoded as mail clients do: bytes outside the alphabet (8-bit ones, line
    breaks) are dropped and missing padding is supplied."""
    alphabet = _NOT_BASE64.sub(b"", text)
    alphabet = alphabet[: len(alphabet) - (len(alphabet) % 4 == 1)]  # a lone 6 bits: no byte
    return binascii.a2b_base64(alphabet + b"=" * (-len(alphabet) % 4))


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
    try:
        charset = part.get_content_charset()
    except Exception:  # an RFC 2231 charset parameter naming an unusable charset
        charset = None
    return _decode(data, charset)


def _decode(data: bytes, charset: str | None) -> str:
    """``data`` as text in ``charset``; UTF-8 for an unknown, unusable or missing one."""
    try:
        name = codecs.lookup(charset or "utf-8").name
        if name not in _UNSAFE_CODECS:
            return data.decode(name, errors="replace")
    except (LookupError, ValueError, TypeError):  # unknown, a NUL in the name, not text
        pass
    return data.decode("utf-8", errors="replace")  # most mail today is UTF-8 anyway


# One HTML tag from its "<": name, then attributes (quoted values may hold ">"), then ">".
# Possessive throughout: matched at each "<" once, never backtracking into itself.
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*+)((?:[^>\"']++|\"[^\"]*+\"|'[^']*+')*+)>")
_ATTR = re.compile(r"""([^\s/>=]++)(?:\s*+=\s*+(?:"([^"]*+)"|'([^']*+)'|([^\s>]*+)))?""")
_MARKUP_START = re.compile(r"<[A-Za-z!?/]")
_HIDDEN = {"script": re.compile(r"</script", re.I), "style": re.compile(r"</style", re.I)}


def _html_links(text: str) -> list[str]:
    """``href`` targets of links and bare URLs in the visible text, in document order.

    One pass from left to right that never reads a stretch twice, unlike html.parser, which
    took 20 s for 40 KB of "<a " (each unclosed tag read to the end of the text, again
    and again). Like it, attribute values and text are entity-decoded; script, style,
    comments and declarations are not text.
    """
    found: dict[str, None] = {}  # an ordered set
    at = 0
    while len(found) < MAX_LINKS_PER_PART:
        lt = text.find("<", at)
        found.update(dict.fromkeys(_bare_urls(html.unescape(text[at:] if lt < 0 else text[at:lt]))))
        if lt < 0:
            break
        at = _after_markup(text, lt, found)
    return list(found)[:MAX_LINKS_PER_PART]


def _after_markup(text: str, lt: int, found: dict[str, None]) -> int:
    """Where the text goes on after the markup starting at ``lt`` (the end when it never does)."""
    if text.startswith("<!--", lt):
        close = text.find("-->", lt + 4)
        return len(text) if close < 0 else close + 3
    tag = _TAG.match(text, lt)
    if tag is None:
        if not _MARKUP_START.match(text, lt):
            return lt + 1  # a lone "<" is text (and no URL holds one)
        # A declaration, or a tag with an unclosed quote: up to the next ">". Like
        # html.parser, a start tag that does not parse is text (a broken href's URL too);
        # with no ">" left, no later tag can close either, so the rest is all text.
        close = text.find(">", lt + 1)
        end = len(text) if close < 0 else close + 1
        if close < 0 or text[lt + 1] not in "!?/":
            found.update(dict.fromkeys(_bare_urls(html.unescape(text[lt:end]))))
        return end
    closing, name, attrs = tag.group(1), tag.group(2).lower(), tag.group(3)
    if not closing and name in _HIDDEN:
        end_tag = _HIDDEN[name].search(text, tag.end())
        return len(text) if end_tag is None else end_tag.start()
    if not closing and name in ("a", "area"):
        for attr in _ATTR.finditer(attrs):
            value = next((v for v in attr.group(2, 3, 4) if v is not None), None)
            if attr.group(1).lower() == "href" and value:
                found[html.unescape(value)] = None
    return tag.end()


def _bare_urls(text: str) -> list[str]:
    """The distinct http(s) URLs in ``text``, at most ``MAX_LINKS_PER_PART`` of them."""
    urls: dict[str, None] = {}  # an ordered set
    for match in _URL.finditer(text):
        if len(urls) >= MAX_LINKS_PER_PART:
            break
        url = _strip_url(match.group())
        if url and len(url) <= MAX_URL_CHARS:
            urls[url] = None
    return list(urls)


def _strip_url(url: str) -> str:
    """Sentence punctuation after a bare URL is not part of it; a ")" only when unbalanced.

    One pass from the end with the brackets counted once: re-counting them for every
    ")" stripped took 44 s for a URL followed by 320 KB of ")".
    """
    opened, closed = url.count("("), url.count(")")
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last == ")" and opened < closed:
            end -= 1
            closed -= 1
        else:
            break
    return url[:end]


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
