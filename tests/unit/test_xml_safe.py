"""The hardened XML parser refuses hostile XML and never reads files or the network."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoicesync.errors import BadInputError, InvoiceSyncError, UnsafeXmlError
from invoicesync.extract import xml_safe
from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.extract.xml_safe import DEFAULT_MAX_BYTES, parse_xml
from invoicesync.models import Invoice

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "zugferd-corpus"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


def _nested(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


def _all_text(exc: BaseException) -> str:
    """Message and repr of an exception and of everything chained to it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------- file XXE


@pytest.fixture
def secret_file(tmp_path: Path) -> tuple[Path, str]:
    marker = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "secret.txt"
    path.write_text(marker, encoding="utf-8")
    return path, marker


def test_file_entity_is_refused_and_never_read(secret_file: tuple[Path, str]) -> None:
    """An external entity naming a local file raises UnsafeXmlError without its content."""
    path, marker = secret_file
    document = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "{path.as_uri()}">]><r>&x;</r>'
    ).encode()
    with pytest.raises(UnsafeXmlError) as caught:
        parse_einvoice(document)
    assert marker not in _all_text(caught.value)


def test_parser_alone_keeps_file_entities_unresolved(secret_file: tuple[Path, str]) -> None:
    """Behind the byte check, the parser itself neither reads the file nor accepts the DTD."""
    path, marker = secret_file
    document = f'<!DOCTYPE r [<!ENTITY x SYSTEM "{path.as_uri()}">]><r>&x;</r>'.encode()
    with pytest.raises(UnsafeXmlError) as caught:
        xml_safe._parse(document)
    assert marker not in _all_text(caught.value)


@pytest.mark.parametrize(
    "document",
    [b'<!DOCTYPE r SYSTEM "x.dtd"><r/>', b'<r><!ENTITY e "v"></r>'],
    ids=["doctype", "entity"],
)
def test_declarations_are_refused_before_parsing(
    document: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DOCTYPE and ENTITY declarations never reach the parser."""

    def must_not_parse(data: bytes) -> None:
        raise AssertionError("the parser was reached")

    monkeypatch.setattr(xml_safe, "_parse", must_not_parse)
    with pytest.raises(UnsafeXmlError, match="declaration"):
        parse_xml(document)


def test_utf16_doctype_is_refused_before_parsing() -> None:
    """A DOCTYPE hidden in UTF-16 is still caught by the byte check."""
    document = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r []><r/>'.encode("utf-16")
    with pytest.raises(UnsafeXmlError, match="DOCTYPE"):
        xml_safe._refuse_declarations(document)


# ---------------------------------------------------------------- network XXE


class _CountingServer(ThreadingHTTPServer):
    """Loopback HTTP server that counts every TCP connection it accepts."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'<!ENTITY leak "LEAKED">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[_CountingServer]:
    server = _CountingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _base(server: _CountingServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_loopback_server_counts_connections(loopback: _CountingServer) -> None:
    """Control: the counting server does see a real HTTP request."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{_base(loopback)}/control", timeout=5) as response:
        response.read()
    assert loopback.connections == 1


@pytest.mark.parametrize(
    "template",
    [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "{url}/entity">]><r>&x;</r>',
        '<!DOCTYPE r SYSTEM "{url}/dtd"><r>&leak;</r>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "{url}/param"> %p;]><r>&leak;</r>',
    ],
    ids=["external-entity", "external-dtd", "parameter-entity"],
)
def test_network_entities_are_refused_without_connecting(
    loopback: _CountingServer, template: str
) -> None:
    """HTTP entities and DTDs raise UnsafeXmlError, in both layers, with no connection made."""
    document = template.format(url=_base(loopback)).encode()
    with pytest.raises(UnsafeXmlError):
        parse_einvoice(document)
    with pytest.raises(UnsafeXmlError):
        xml_safe._parse(document)
    assert loopback.connections == 0


def test_xinclude_and_schema_location_are_not_fetched(loopback: _CountingServer) -> None:
    """References that need no DTD (XInclude, xsi:schemaLocation) are left alone."""
    url = _base(loopback)
    document = (
        '<r xmlns:xi="http://www.w3.org/2001/XInclude"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xsi:schemaLocation="urn:x {url}/schema.xsd"><xi:include href="{url}/inc"/></r>'
    ).encode()
    assert parse_einvoice(document) is None
    assert loopback.connections == 0


# ---------------------------------------------------------------- limits


def test_billion_laughs_is_refused_fast() -> None:
    """Nested entity expansion raises UnsafeXmlError well under a second, in both layers."""
    started = time.perf_counter()
    with pytest.raises(UnsafeXmlError):
        parse_xml(BILLION_LAUGHS)
    with pytest.raises(UnsafeXmlError):
        xml_safe._parse(BILLION_LAUGHS)
    assert time.perf_counter() - started < 1.0


def test_depth_at_the_limit_is_accepted() -> None:
    """Exactly ``max_depth`` nested elements parse."""
    assert parse_xml(_nested(100)).tag == "a"


@pytest.mark.parametrize("depth", [101, 300, 100_000])
def test_depth_beyond_the_limit_is_refused(depth: int) -> None:
    """Nesting deeper than the limit (ours or libxml2's) raises UnsafeXmlError."""
    with pytest.raises(UnsafeXmlError, match=r"depth|deeper"):
        parse_xml(_nested(depth))


def test_depth_limit_is_a_parameter() -> None:
    """A smaller ``max_depth`` is enforced."""
    parse_xml(_nested(3), max_depth=3)
    with pytest.raises(UnsafeXmlError):
        parse_xml(_nested(4), max_depth=3)


def test_oversize_input_is_refused() -> None:
    """Input over the default 10 MB limit raises UnsafeXmlError before parsing."""
    document = b"<a>" + b" " * DEFAULT_MAX_BYTES + b"</a>"
    with pytest.raises(UnsafeXmlError, match="too large"):
        parse_xml(document)


def test_size_limit_is_a_parameter() -> None:
    """A smaller ``max_bytes`` is enforced."""
    assert parse_xml(b"<a/>", max_bytes=4).tag == "a"
    with pytest.raises(UnsafeXmlError):
        parse_xml(b"<a />", max_bytes=4)


@pytest.mark.parametrize(
    "document",
    [b"", b"not xml at all", b"<a><b></a>", b"<a>&undefined;</a>", b"<a/><b/>", b"\xff\xfe\x00"],
    ids=["empty", "text", "mismatched", "undefined-entity", "two-roots", "bad-encoding"],
)
def test_malformed_xml_is_bad_input(document: bytes) -> None:
    """Malformed XML raises BadInputError, not UnsafeXmlError."""
    with pytest.raises(BadInputError) as caught:
        parse_xml(document)
    assert not isinstance(caught.value, UnsafeXmlError)


def test_processing_instructions_are_dropped() -> None:
    """Processing instructions (e.g. stylesheets) do not survive parsing."""
    root = parse_xml(b'<a><?xml-stylesheet href="http://x/"?><b/></a>')
    assert [child.tag for child in root] == ["b"]


# ---------------------------------------------------------------- properties


def _returns_or_raises_ours(data: bytes) -> None:
    try:
        result = parse_einvoice(data)
    except InvoiceSyncError:
        return
    assert result is None or isinstance(result, Invoice)


_PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

_FRAGMENTS = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:'
    'CrossIndustryInvoice:100" xmlns:ram="urn:un:unece:uncefact:data:standard:'
    'ReusableAggregateBusinessInformationEntity:100">',
    "</rsm:CrossIndustryInvoice>",
    '<rsm:CrossIndustryDocument xmlns:rsm="urn:ferd:CrossIndustryDocument:invoice:1p0">',
    "</rsm:CrossIndustryDocument>",
    '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"'
    ' xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">',
    "</Invoice>",
    "<cbc:ID>",
    "</cbc:ID>",
    "<rsm:ExchangedDocument>",
    "</rsm:ExchangedDocument>",
    "<ram:ID>",
    "</ram:ID>",
    "<!DOCTYPE x [",
    '<!ENTITY e "v">',
    "]>",
    "&e;",
    "&amp;",
    "&#0;",
    "&#x41;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "NaN",
    "1e999",
    "-0.00",
]
_XMLISH = st.lists(
    st.sampled_from(_FRAGMENTS) | st.text(alphabet="<>/!?&;#=\"' ab:-.019[]%\n", max_size=6),
    max_size=40,
).map("".join)


@_PROPERTY
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_our_errors(data: bytes) -> None:
    """Any bytes give an Invoice, None, or an InvoiceSyncError: nothing else escapes."""
    _returns_or_raises_ours(data)


@_PROPERTY
@given(_XMLISH, st.sampled_from(["utf-8", "utf-16"]))
def test_xmlish_text_only_raises_our_errors(text: str, encoding: str) -> None:
    """XML-looking fragments in any order give an Invoice, None, or an InvoiceSyncError."""
    _returns_or_raises_ours(text.encode(encoding, errors="replace"))


_TEMPLATES = {
    name: (CORPUS / name).read_bytes()
    for name in (
        "XR_EN16931_Einfach.cii.xml",
        "XR_EN16931_Einfach.ubl.xml",
        "ZF1_COMFORT_Einfach.xml",
    )
}
# Values that occur in all three templates: an amount, a type code and a currency.
_TOKENS = [b"529.87", b"380", b"EUR", b"H87", b"C62", b"19.00", b"DE123456789"]


@_PROPERTY
@given(st.sampled_from(sorted(_TEMPLATES)), st.sampled_from(_TOKENS), st.text(max_size=30))
def test_real_invoice_with_arbitrary_values_only_raises_our_errors(
    name: str, token: bytes, value: str
) -> None:
    """A real invoice with any text in place of an amount, code or id never crashes."""
    _returns_or_raises_ours(_TEMPLATES[name].replace(token, escape(value).encode()))
