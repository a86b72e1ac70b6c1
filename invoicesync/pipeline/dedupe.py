"""When two documents are the same invoice.

The business key is what an accountant would compare: the seller (VAT id, else
normalised name), the invoice number, the issue date and the gross total. The
same invoice as UBL, as CII, embedded in a Factur-X PDF or re-sent a week later
has one key; two invoices that differ in any of those are never merged. A key
needs all four parts: an invoice the extractor could not read completely is
never deduplicated by guesswork.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from decimal import Decimal

from invoicesync.models import Invoice

__all__ = ["business_key", "is_rendering_of"]

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_CENT = Decimal("0.01")


def _fold(text: str) -> str:
    """Case, accents, spaces and punctuation removed: 'Müller-GmbH ' == 'mueller gmbh'."""
    text = text.casefold().replace("ß", "ss").replace("ü", "ue").replace("ö", "oe")
    text = text.replace("ä", "ae")
    ascii_only = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NOT_ALNUM.sub("", ascii_only)


def business_key(invoice: Invoice) -> str | None:
    """sha256 hex of seller + number + issue date + gross, or None when a part is missing."""
    seller = invoice.seller.vat_id or invoice.seller.name
    number = invoice.invoice_number
    if not seller or not number or invoice.issue_date is None or invoice.gross_total is None:
        return None
    parts = [
        ("vat:" if invoice.seller.vat_id else "name:") + _fold(seller),
        _fold(number),
        invoice.issue_date.isoformat(),
        str(invoice.gross_total.quantize(_CENT)),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def is_rendering_of(pdf: Invoice, einvoice: Invoice) -> bool:
    """Whether a PDF's extracted data shows it to be the rendering of an XML invoice.

    Same business key (a Factur-X PDF embedding that XML), or the same invoice
    number, or — when the text gave no number — the same gross total and date.
    """
    key = business_key(pdf)
    if key is not None and key == business_key(einvoice):
        return True
    if pdf.invoice_number and einvoice.invoice_number:
        return _fold(pdf.invoice_number) == _fold(einvoice.invoice_number)
    return (
        pdf.gross_total is not None
        and pdf.gross_total == einvoice.gross_total
        and pdf.issue_date == einvoice.issue_date
    )
