"""The e-invoice extractor: structured XML → ``Invoice`` exactly, with no model call.

Reads a standalone XML e-invoice, or the invoice XML embedded in a Factur-X /
ZUGFeRD / XRechnung PDF. The embedded file is chosen by its standard name, never
by position: PDFs also embed supporting PDFs, images and logistics XML.

XML is parsed only through ``xml_safe``: not with ``facturx.get_xml_from_pdf``,
which uses lxml's default parser on hostile input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pydantic
from lxml import etree

from invoicesync.errors import BadInputError, UnsafeXmlError
from invoicesync.extract.cii import CII_ROOT, map_cii
from invoicesync.extract.pdf import embedded_files, is_pdf
from invoicesync.extract.review import check_invoice
from invoicesync.extract.ubl import UBL_ROOTS, map_ubl
from invoicesync.extract.xml_safe import parse_xml
from invoicesync.extract.zugferd1 import ZF1_ROOT, map_zugferd1
from invoicesync.models import Invoice
from invoicesync.resilience.timeouts import Deadline

__all__ = ["INVOICE_XML_NAMES", "EInvoiceExtractor", "find_invoice_xml", "parse_einvoice"]

#: Embedded invoice file names, compared case-insensitively, in order of preference:
#: Factur-X / ZUGFeRD 2.1+ (``facturx.FACTURX_FILENAME``), ZUGFeRD 2.0
#: ``zugferd-invoice.xml`` and 1.0 ``ZUGFeRD-invoice.xml`` (``facturx.ZUGFERD_FILENAME``),
#: XRechnung: the names factur-x uses to find the invoice XML.
INVOICE_XML_NAMES = ("factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml")

_Mapper = Callable[[etree._Element], Invoice]
_MAPPERS: dict[str, _Mapper] = {
    CII_ROOT: map_cii,
    ZF1_ROOT: map_zugferd1,
    **dict.fromkeys(UBL_ROOTS, map_ubl),
}
# What may precede "<" in an XML document: whitespace and byte-order marks.
_XML_LEAD = b" \t\r\n\xef\xbb\xbf\xfe\xff\x00"
_log = logging.getLogger(__name__)


def parse_einvoice(xml: bytes) -> Invoice | None:
    """The invoice in an XML e-invoice (UBL, CII, ZUGFeRD 1.0), checked by ``review``.

    Returns ``None`` for well-formed XML of any other kind (signatures, SEPA
    files …). Raises ``UnsafeXmlError`` for hostile XML and ``BadInputError``
    for malformed XML or unreadable amounts.
    """
    # Blank lines before the XML declaration are common in mail attachments and harmless.
    return _invoice(parse_xml(xml.lstrip(b" \t\r\n")))


def _invoice(root: etree._Element) -> Invoice | None:
    """``parse_einvoice`` after parsing: the mapper for the root element, and the review."""
    mapper = _MAPPERS.get(str(root.tag))
    if mapper is None:
        return None
    try:
        invoice = mapper(root)
    except pydantic.ValidationError as exc:
        raise BadInputError(
            f"e-invoice values do not fit the invoice model: {exc.error_count()} errors",
            stage="extract",
        ) from exc
    check_invoice(invoice)
    return invoice


def find_invoice_xml(files: list[tuple[str, bytes]]) -> bytes | None:
    """The embedded invoice XML among a PDF's attachments, chosen by name."""
    by_name = {name.rsplit("/", 1)[-1].strip().lower(): data for name, data in reversed(files)}
    for name in INVOICE_XML_NAMES:
        if name in by_name:
            return by_name[name]
    return None


class EInvoiceExtractor:
    """``Extractor`` for XML e-invoices, standalone or embedded in a PDF."""

    name = "einvoice"

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None:
        """The e-invoice in ``data`` (a PDF or an XML file); ``None`` if there is none."""
        if is_pdf(data):
            xml = find_invoice_xml(embedded_files(data, names=INVOICE_XML_NAMES))
            return None if xml is None else _embedded_invoice(xml)
        if data.lstrip(_XML_LEAD).startswith(b"<"):
            return parse_einvoice(data)
        return None


def _embedded_invoice(xml: bytes) -> Invoice | None:
    """The invoice in a PDF's embedded XML; ``None`` when that copy is damaged.

    A damaged embedded file (pypdf hands over what it could inflate of a broken stream)
    is no reason to fail the document: its pages still show the invoice, for the next
    extractor to read. Hostile XML (``UnsafeXmlError``) is still refused.
    """
    try:
        root = parse_xml(xml.lstrip(b" \t\r\n"))
    except UnsafeXmlError:
        raise
    except BadInputError as exc:
        _log.info("embedded invoice XML unreadable, reading the pages instead: %s", exc)
        return None
    return _invoice(root)
