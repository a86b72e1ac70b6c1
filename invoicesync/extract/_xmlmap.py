"""XPath, Decimal, date and code-list helpers shared by the e-invoice mappers.

Amounts are parsed from the lexical XML form straight into ``Decimal`` (no float,
no rounding, exponent and scale kept as written). Anything that is not a plain
``xs:decimal`` raises ``BadInputError``: an invoice amount we cannot read exactly
must not turn into a guess.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, cast

from lxml import etree

from invoicesync.errors import BadInputError
from invoicesync.models import DocumentType

__all__ = [
    "XPathReader",
    "compact",
    "document_type",
    "element_text",
    "first_in_currency",
    "parse_date",
    "parse_decimal",
]

_STAGE = "extract"
# xs:decimal lexical space, ASCII digits only (Decimal() would also take "NaN", "1e9", "٣").
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_MAX_DECIMAL_CHARS = 40
_DATE_102 = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
# xs:date, optionally with a time zone; a dateTime's time part is ignored.
_DATE_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2}|T.*)?")

# UNTDID 1001 codes allowed by EN 16931 (CEN/TS 16931-3 code lists).
_CREDIT_NOTE_CODES = frozenset(
    {"81", "83", "261", "262", "296", "308", "381", "396", "420", "458", "532"}
)
_CORRECTED_CODES = frozenset({"384"})
# fmt: off
_INVOICE_CODES = frozenset(
    {
        "71", "80", "82", "84", "102", "130", "202", "203", "204", "211", "218", "219",
        "295", "325", "326", "331", "380", "382", "383", "385", "386", "387", "388", "389",
        "390", "393", "394", "395", "456", "457", "527", "575", "623", "633", "751", "780",
        "935",
    }
)
# fmt: on


def parse_decimal(raw: str, what: str) -> Decimal:
    """The exact ``Decimal`` written in the XML; ``BadInputError`` if it is not a decimal."""
    value = raw.strip()
    if len(value) > _MAX_DECIMAL_CHARS or not _DECIMAL.fullmatch(value):
        shown = value[:_MAX_DECIMAL_CHARS]
        raise BadInputError(f"{what}: not a decimal number: {shown!r}", stage=_STAGE)
    return Decimal(value)


def parse_date(raw: str, date_format: str | None = None) -> dt.date | None:
    """A CII ``102`` (YYYYMMDD) or ISO date; ``None`` if the value is in another form."""
    value = raw.strip()
    if date_format not in (None, "102"):
        return None
    match = _DATE_102.fullmatch(value) or _DATE_ISO.fullmatch(value)
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def document_type(
    code: str | None, problems: list[str], *, default: DocumentType = DocumentType.INVOICE
) -> DocumentType:
    """The document type of BT-3 ``code`` (``default`` when absent).

    A code outside EN 16931's list gives ``OTHER`` and a review problem.
    """
    if code is None:
        return default
    if code in _CREDIT_NOTE_CODES:
        return DocumentType.CREDIT_NOTE
    if code in _CORRECTED_CODES:
        return DocumentType.CORRECTED
    if code in _INVOICE_CODES:
        return DocumentType.INVOICE
    problems.append(f"BT-3: type code {code!r} is not an EN 16931 invoice code")
    return DocumentType.OTHER


def compact(value: str | None) -> str | None:
    """An identifier without the spaces used to print it (IBAN ``DE12 1234 …``)."""
    if value is None:
        return None
    return "".join(value.split()) or None


def first_in_currency(
    candidates: Iterable[tuple[Decimal, str | None]], currency: str | None
) -> Decimal | None:
    """The first amount in ``currency``, else the first one without a currency attribute.

    Used for BT-110: CII and UBL may repeat the tax total in the accounting currency
    (BT-111); only the one in the invoice currency is BT-110.
    """
    unlabelled: Decimal | None = None
    for amount, amount_currency in candidates:
        if currency is not None and amount_currency == currency:
            return amount
        if amount_currency is None and unlabelled is None:
            unlabelled = amount
    return unlabelled


class XPathReader:
    """XPath lookups under fixed namespace prefixes; text is stripped, empty text is ``None``."""

    def __init__(self, namespaces: Mapping[str, str]) -> None:
        self._namespaces = dict(namespaces)

    def all(self, node: etree._Element | None, path: str) -> list[etree._Element]:
        if node is None:
            return []
        found = cast(list[Any], node.xpath(path, namespaces=self._namespaces))
        return [item for item in found if isinstance(item, etree._Element)]

    def first(self, node: etree._Element | None, path: str) -> etree._Element | None:
        found = self.all(node, path)
        return found[0] if found else None

    def text(self, node: etree._Element | None, path: str) -> str | None:
        """Stripped text of the first element at ``path`` that has any."""
        for element in self.all(node, path):
            value = element_text(element)
            if value is not None:
                return value
        return None

    def texts(self, node: etree._Element | None, path: str) -> list[str]:
        values = (element_text(element) for element in self.all(node, path))
        return [value for value in values if value is not None]

    def amount(self, node: etree._Element | None, path: str) -> Decimal | None:
        value = self.text(node, path)
        return None if value is None else parse_decimal(value, path)

    def amounts_with_currency(
        self, node: etree._Element | None, path: str
    ) -> list[tuple[Decimal, str | None]]:
        """Every amount at ``path`` with its ``currencyID`` attribute (``None`` if absent)."""
        found: list[tuple[Decimal, str | None]] = []
        for element in self.all(node, path):
            value = element_text(element)
            if value is not None:
                currency = element.get("currencyID")
                found.append((parse_decimal(value, path), currency.strip() if currency else None))
        return found


def element_text(element: etree._Element) -> str | None:
    """All text inside ``element``, stripped; ``None`` if empty."""
    value = "".join(cast(Iterable[str], element.itertext())).strip()
    return value or None
