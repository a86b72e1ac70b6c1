"""Sans-I/O selective fetch: IMAP BODYSTRUCTURE → the sections worth fetching → a small mail.

``plan_fetch`` reads the BODYSTRUCTURE imapclient returns and lists the sections that
``parse_mail`` could take a document, a forwarded mail or a link from; images, archives
and other big attachments are never downloaded. ``assemble`` rebuilds, from the fetched
sections, a message that ``parse_mail`` reads exactly as it reads the original, so
``mime.py`` stays the one place that decides what a document is: this module only
pre-selects, using the same type lists. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import quopri
import re
import reprlib
from dataclasses import dataclass, field, replace
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import collapse_rfc2231_value, decode_params, unquote
from typing import Literal, TypeGuard

from invoicesync.errors import InvoiceSyncError, MalformedMailError, ProtocolError
from invoicesync.mail import mime  # its type lists and XML test: one definition of a document
from invoicesync.sniff import is_pdf

__all__ = [
    "MAX_PARTS",
    "SNIFF_BYTES",
    "FetchPlan",
    "Kind",
    "Section",
    "assemble",
    "is_document_prefix",
    "plan_fetch",
]

#: A BODYSTRUCTURE with more parts than this (containers included) is refused.
MAX_PARTS = 500
#: Fetch this many bytes of a "sniff" part (``BODY.PEEK[n]<0.SNIFF_BYTES>``): ``is_pdf`` looks
#: at 1024 *decoded* bytes, which base64 (with line breaks) or quoted-printable spreads wider.
SNIFF_BYTES = 4096
# Multipart levels are unbounded in MIME; this only bounds recursion on hostile structures.
_MAX_NESTING = 64
# RFC 2046 §5.2.1 allows only these for message/rfc822; Dovecot gives an encoded one NIL slots.
_IDENTITY = frozenset({"7bit", "8bit", "binary"})
# Line length of the base64 bodies ``assemble`` writes: a multiple of 4 (whole quanta).
_BASE64_LINE = 16 * 1024
_CONTENT_FIELD = re.compile(rb"(?i)(content-type|content-transfer-encoding|mime-version)\s*:")

#: document: PDF/XML by type or name; message: an attached mail the server left opaque
#: (fetched whole, parse_mail walks it); text: text/plain or text/html, for links;
#: sniff: generic type, fetch ``SNIFF_BYTES`` first and ask ``is_document_prefix``.
Kind = Literal["document", "message", "text", "sniff"]


@dataclass(frozen=True)
class Section:
    """One leaf part to fetch: ``BODY.PEEK[number]`` (and ``[number.MIME]`` unless ``is_body``)."""

    number: str  # IMAP section path: "2", "1.2", "3.1.2"
    content_type: str  # lowercase "type/subtype"
    filename: str | None
    encoding: str  # lowercase Content-Transfer-Encoding
    size: int  # octets as the server stores them, still transfer-encoded
    kind: Kind
    nested_in: str | None = None  # the innermost enclosing message/rfc822 part
    #: The whole non-multipart body of its message: its header is the message header.
    is_body: bool = False

    @property
    def label(self) -> str:
        return self.filename or f"part {self.number}"


@dataclass(frozen=True)
class FetchPlan:
    """What to fetch of one message; ``nested``: message/rfc822 parts whose header to fetch."""

    sections: list[Section] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def plan_fetch(
    bodystructure: object, *, max_document_bytes: int, max_text_bytes: int = 1_000_000
) -> FetchPlan:
    """The sections of a message (imapclient's BODYSTRUCTURE value) worth fetching.

    Documents and opaque attached mails up to ``max_document_bytes`` (decoded, estimated
    from the encoded size), text bodies up to ``max_text_bytes`` (encoded). Raises
    ``ProtocolError`` for a structure that is not BODYSTRUCTURE-shaped and
    ``MalformedMailError`` for more than ``MAX_PARTS`` parts or too deep nesting.
    """
    planner = _Planner(max_document_bytes, max_text_bytes)
    try:
        planner.message(bodystructure, prefix="", depth=0, container=None)
    except InvoiceSyncError:
        raise
    except Exception as exc:  # a shape the checks below missed is still the server's fault
        raise _bad(f"unreadable: {type(exc).__name__}: {exc}") from exc
    return FetchPlan(planner.sections, list(planner.nested), planner.skipped)


def is_document_prefix(prefix: bytes, encoding: str) -> bool:
    """True when the first transfer-encoded bytes of a part decode to a PDF or XML start."""
    encoding = encoding.strip().lower()
    if encoding == "base64":
        # A prefix ends mid-quantum; like the email package, ignore non-alphabet bytes.
        alphabet = re.sub(rb"[^A-Za-z0-9+/]", b"", prefix.split(b"=", 1)[0])
        try:
            data = base64.b64decode(alphabet[: len(alphabet) // 4 * 4])
        except (binascii.Error, ValueError):
            return False
    elif encoding == "quoted-printable":
        data = quopri.decodestring(prefix)
    else:
        data = prefix
    return is_pdf(data) or mime._looks_like_xml(data)


# ----------------------------------------------------------------- planning


class _Planner:
    """Walks one BODYSTRUCTURE in IMAP section order, collecting sections and reasons."""

    def __init__(self, max_document_bytes: int, max_text_bytes: int) -> None:
        self.max_document = max_document_bytes
        self.max_text = max_text_bytes
        self.parts = 0
        self.sections: list[Section] = []
        self.nested: dict[str, None] = {}  # ordered set, outermost first
        self.skipped: list[str] = []

    def message(self, body: object, *, prefix: str, depth: int, container: str | None) -> None:
        """The body of the top message (prefix "") or of an attached one (prefix "3.")."""
        if depth > mime.MAX_DEPTH:
            raise MalformedMailError(
                f"attached messages nested deeper than {mime.MAX_DEPTH}", stage="mail"
            )
        children = _children(body)
        if children is None:  # RFC 3501 §6.4.5: a non-multipart body is part 1 of its message
            self.node(body, f"{prefix}1", depth, container, is_body=True)
        else:
            self.multipart(children, prefix, depth, container)

    def multipart(
        self, children: list[object], prefix: str, depth: int, container: str | None
    ) -> None:
        self.count(prefix)
        for index, child in enumerate(children, start=1):
            grandchildren = _children(child)
            if grandchildren is None:
                self.node(child, f"{prefix}{index}", depth, container, is_body=False)
            else:
                self.multipart(grandchildren, f"{prefix}{index}.", depth, container)

    def node(
        self, body: object, number: str, depth: int, container: str | None, *, is_body: bool
    ) -> None:
        self.count(number)
        if not _is_seq(body) or len(body) < 7:
            raise _bad(f"part {number} has too few fields: {reprlib.repr(body)}")
        maintype = (_string(body[0]) or "application").lower()
        ctype = f"{maintype}/{(_string(body[1]) or 'octet-stream').lower()}"
        encoding = (_string(body[5]) or "7bit").strip().lower()
        size = body[6]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"part {number} has no size: {reprlib.repr(size)}")
        # A message/rfc822 the server parsed adds envelope, body and line count.
        parsed = maintype == "message" and len(body) >= 10 and _is_seq(body[8]) and body[8]
        if parsed and encoding in _IDENTITY and ctype in ("message/rfc822", "message/global"):
            before = len(self.sections)
            self.nested[number] = None  # listed before its own nested messages
            self.message(body[8], prefix=f"{number}.", depth=depth + 1, container=number)
            if len(self.sections) == before:
                del self.nested[number]
            return
        # Extension data (md5, disposition, ...) follows text's line count or those fields.
        at = 9 if maintype == "text" else 11 if parsed else 8
        disposition = body[at] if len(body) > at else None
        params = disposition[1] if _is_seq(disposition) and len(disposition) > 1 else None
        filename = _filename(_params(params)) or _filename(_params(body[2]))
        self.classify(Section(number, ctype, filename, encoding, size, "sniff", container, is_body))

    def classify(self, section: Section) -> None:
        ctype, name, label = section.content_type, (section.filename or "").lower(), section.label
        kind: Kind
        if ctype in mime._PDF_TYPES or ctype in mime._XML_TYPES or name.endswith((".pdf", ".xml")):
            kind = "document"
        elif ctype in mime._GENERIC_TYPES:
            # parse_mail judges generic parts by their bytes, and walks a generic ".eml".
            kind = "message" if name.endswith(".eml") else "sniff"
        elif ctype.startswith("message/"):
            kind = "message"  # the email package walks any message/*; the server did not
        elif ctype in mime._TEXT_TYPES and section.size <= self.max_text:
            kind = "text"
        elif ctype == "text/plain":
            kind = "sniff"  # too long to scan, but a type-less part looks like this: a PDF?
        elif ctype in mime._TEXT_TYPES:
            limit = f"over the {_mb(self.max_text)} limit"
            self.skipped.append(f"{label} ({ctype}): {_mb(section.size)} of text, {limit}")
            return
        else:
            self.skipped.append(f"{label} ({ctype}, {_mb(section.size)}): not a document")
            return
        decoded = _decoded_size(section.size, section.encoding)
        if kind != "text" and decoded > self.max_document:
            limit = f"over the {_mb(self.max_document)} limit"
            self.skipped.append(f"{label} ({ctype}): at least {_mb(decoded)}, {limit}")
            return
        self.sections.append(replace(section, kind=kind))

    def count(self, number: str) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedMailError(f"too many MIME parts (more than {MAX_PARTS})", stage="mail")
        # Every multipart or message level adds a dot to the section numbers below it.
        if number.count(".") > _MAX_NESTING:
            raise MalformedMailError(f"MIME parts nested deeper than {_MAX_NESTING}", stage="mail")


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"BODYSTRUCTURE {what}", stage="mail")


def _is_seq(value: object) -> TypeGuard[tuple[object, ...] | list[object]]:
    return isinstance(value, tuple | list)


def _children(body: object) -> list[object] | None:
    """The parts of a multipart body, or None for a leaf.

    imapclient turns the top level's parts into a list (``BodyData``) but leaves those of
    an attached message as the leading tuples of a plain tuple.
    """
    if not _is_seq(body) or not body:
        raise _bad(f"body is not a list: {reprlib.repr(body)}")
    if isinstance(body[0], list):
        children: list[object] = list(body[0])
    elif isinstance(body[0], tuple):
        children = list(itertools.takewhile(lambda item: isinstance(item, tuple), body))
    else:
        return None
    if not children or not all(_is_seq(child) for child in children):
        raise _bad(f"multipart has no readable parts: {reprlib.repr(body)}")
    return children


def _string(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int):
        return str(value)
    raise _bad(f"has {reprlib.repr(value)} where a string belongs")


def _params(items: object) -> dict[str, str]:
    """Parameters ``(k v k v ...)`` with lowercase keys; oddities are ignored."""
    if not isinstance(items, tuple | list):
        return {}
    params: dict[str, str] = {}
    for key, value in zip(items[::2], items[1::2], strict=False):
        if isinstance(key, bytes | str) and isinstance(value, bytes | str | int):
            params[str(_string(key)).lower()] = str(_string(value))
    return params


def _filename(params: dict[str, str]) -> str | None:
    """``filename`` or ``name``: RFC 2231 (merged by Dovecot, split by others), RFC 2047."""
    for key in ("filename", "name"):
        raw = [(k, v) for k, v in params.items() if k == key or k.startswith(f"{key}*")]
        if not raw:
            continue
        name: str | None = None
        with contextlib.suppress(Exception):  # hostile RFC 2231 input; fall back to plain
            decoded = dict(decode_params([("", ""), *raw]))
            value = decoded.get(key)
            if isinstance(value, tuple):  # (charset, language, "quoted text")
                value = (value[0], value[1], unquote(value[2]))
            name = None if value is None else collapse_rfc2231_value(value)
        name = name or params.get(key)
        if name and len(name) > mime.MAX_HEADER_CHARS:
            # Decoding encoded words takes superlinear time: cut like parse_mail cuts headers.
            name = mime._cap_header("filename", name)
        if name and "=?" in name:
            with contextlib.suppress(ValueError, LookupError, UnicodeError, HeaderParseError):
                name = str(make_header(decode_header(name)))
        if name:
            # Like mime._filename: no directories, no control characters.
            name = re.sub(r"[\x00-\x1f\x7f]", " ", name).replace("\\", "/").rsplit("/", 1)[-1]
            return name.strip() or None
    return None


def _decoded_size(size: int, encoding: str) -> int:
    # A lower bound, so nothing under the limit is skipped: base64 in lines of 48+ characters
    # plus CRLF decodes to at least 72 %, quoted-printable to at least a third.
    if encoding == "base64":
        return size * 72 // 100
    return size // 3 if encoding == "quoted-printable" else size


def _mb(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"
    return f"{size / 1024 / 1024:.1f}".removesuffix(".0") + " MB"


# ----------------------------------------------------------------- assembly


@dataclass
class _Message:
    header: bytes
    items: list[_Message | tuple[Section, bytes, bytes]] = field(default_factory=list)


def assemble(
    header: bytes, parts: list[tuple[Section, bytes, bytes]], nested_headers: dict[str, bytes]
) -> bytes:
    """A mail ``parse_mail`` reads like the original, from the fetched sections only.

    ``header`` is ``BODY[HEADER]``; each part is ``(section, BODY[n.MIME], BODY[n])`` in plan
    order (the MIME header is ignored for ``is_body`` sections); ``nested_headers`` maps each
    number of ``FetchPlan.nested`` to its ``BODY[n.HEADER]``. Raises ``ProtocolError`` when a
    part's enclosing message has no header or the parts contradict each other.
    """
    eol = b"\r\n" if b"\r\n" in header else b"\n"
    root = _Message(header)
    messages: dict[str, _Message] = {}
    containers = sorted(nested_headers, key=lambda number: number.count("."))
    for part in parts:
        section = part[0]
        if section.nested_in is not None and section.nested_in not in nested_headers:
            raise ProtocolError(f"no header for attached message {section.nested_in}", stage="mail")
        # Every attached message whose number prefixes this part's number encloses it.
        target = root
        for number in containers:
            if section.number.startswith(f"{number}."):
                if number not in messages:
                    messages[number] = _Message(nested_headers[number])
                    target.items.append(messages[number])
                target = messages[number]
        target.items.append(part)
    return _render(root, eol)


def _render(message: _Message, eol: bytes) -> bytes:
    """The message's bytes: one copy, made at the end, of every piece (a large document's too)."""
    pieces: list[bytes | memoryview] = []
    _pieces(message, eol, pieces)
    return b"".join(pieces)


def _pieces(message: _Message, eol: bytes, out: list[bytes | memoryview]) -> None:
    items = message.items
    bodies = [item for item in items if isinstance(item, tuple) and item[0].is_body]
    if bodies:
        if len(items) != 1:
            raise ProtocolError(
                f"{bodies[0][0].number} is a whole body with siblings", stage="mail"
            )
        section, _, body = bodies[0]
        out.append(_block(message.header, eol))  # the original header describes it
        out.extend(_rewrapped(section, body, eol))
        return
    rendered: list[list[bytes | memoryview]] = []
    for item in items:
        chunk: list[bytes | memoryview] = []
        if isinstance(item, _Message):
            chunk.append(b"Content-Type: message/rfc822" + eol + eol)
            _pieces(item, eol, chunk)
        else:
            chunk.append(_block(item[1], eol))
            chunk.extend(_rewrapped(item[0], item[2], eol))
        rendered.append(chunk)
    boundary = _boundary([piece for chunk in rendered for piece in chunk])
    out.append(_rewrite(message.header, b'multipart/mixed; boundary="' + boundary + b'"', eol))
    delimiter = b"--" + boundary
    for chunk in rendered:
        out.append(delimiter + eol)
        out.extend(chunk)
        out.append(eol)
    out.append(delimiter + b"--" + eol)


def _rewrapped(section: Section, body: bytes, eol: bytes) -> list[bytes | memoryview]:
    """A base64 body in lines of ``_BASE64_LINE`` instead of 76 characters (as pieces).

    The email package joins a base64 body's lines before decoding, so the bytes it
    decodes are the same; its parser, which works line by line in Python, has 200
    times fewer lines to look at (and hold) for a large document.
    """
    if section.encoding != "base64" or len(body) <= _BASE64_LINE:
        return [body]
    joined = memoryview(body.translate(None, b"\r\n"))
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(joined), _BASE64_LINE):
        pieces += (joined[start : start + _BASE64_LINE], eol)
    return pieces


def _block(header: bytes, eol: bytes) -> bytes:
    """A header section ending in exactly one blank line (an empty one is just that line)."""
    header = header.rstrip(b"\r\n")
    return header + eol + eol if header else eol


def _rewrite(header: bytes, content_type: bytes, eol: bytes) -> bytes:
    """The header without its MIME content fields, plus a synthetic Content-Type."""
    kept: list[bytes] = []
    dropping = False
    for line in header.rstrip(b"\r\n").splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t"):  # a folded line belongs to the field above it
            dropping = _CONTENT_FIELD.match(line) is not None
        if not dropping:
            kept.append(line)
    text = b"".join(kept).rstrip(b"\r\n")
    fields = b"MIME-Version: 1.0" + eol + b"Content-Type: " + content_type + eol
    return (text + eol if text else b"") + fields + eol


def _boundary(chunks: list[bytes | memoryview]) -> bytes:
    """The first of a fixed series absent from the content ("=_" never occurs in base64 or QP).

    Fixed, not random: the email package compiles a regular expression per boundary,
    and caches it only for a boundary it has seen before. ``chunks`` are the pieces of
    the content; each ends or is followed by a line break, which a boundary does not
    contain, so none can straddle two of them. An enclosing multipart sees the inner
    ones' boundaries in its content and so takes the next one.
    """
    for attempt in itertools.count():
        boundary = f"=_invoicesync_{attempt}".encode()
        if not any(
            boundary in bytes(chunk) if isinstance(chunk, memoryview) else boundary in chunk
            for chunk in chunks
        ):
            return boundary
    raise AssertionError("unreachable")  # pragma: no cover
