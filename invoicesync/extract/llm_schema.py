"""The language model's output schema, and its conversion into ``models.Invoice``.

``LlmInvoice`` is what the model is asked to produce through structured outputs. It
follows OpenAI's strict mode: every field is required (no defaults), unknown values
are ``null``, and no ``Decimal``: amounts, rates and quantities are strings, so
that no float ever touches money. ``to_invoice`` parses them and flags what it
cannot read instead of guessing.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import BaseModel, ConfigDict

from invoicesync.extract.review import check_invoice
from invoicesync.models import DocumentType, Invoice, LineItem, Party, Provenance, TaxLine

__all__ = ["LlmInvoice", "LlmLineItem", "LlmParty", "LlmTaxLine", "iban_is_valid", "to_invoice"]

# "1234.56", "-12", ".5": plain decimals only; a thousands separator is not guessed at.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# Currency symbols and ISO codes around an amount ("€ 12.50", "12.50 EUR").
_CURRENCY_NOISE = re.compile(r"[€$£¥₹]|\b[A-Z]{3}\b")
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


class _Strict(BaseModel):
    # extra="forbid" puts additionalProperties: false into the schema, as strict mode requires.
    model_config = ConfigDict(extra="forbid")


class LlmParty(_Strict):
    """Seller or buyer as read from the document."""

    name: str | None
    vat_id: str | None
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None  # ISO 3166-1 alpha-2


class LlmTaxLine(_Strict):
    """One VAT breakdown entry; numbers as plain decimal strings."""

    rate: str | None  # percent, e.g. "19"
    taxable_amount: str | None
    tax_amount: str | None


class LlmLineItem(_Strict):
    """One invoice line; numbers as plain decimal strings."""

    description: str | None
    quantity: str | None
    unit: str | None
    unit_price: str | None
    net_amount: str | None
    tax_rate: str | None


class LlmInvoice(_Strict):
    """The structured output requested from the model (dates ``YYYY-MM-DD``)."""

    document_type: Literal["invoice", "credit_note", "corrected", "other"]
    invoice_number: str | None
    issue_date: str | None
    due_date: str | None
    currency: str | None  # ISO 4217
    seller: LlmParty
    buyer: LlmParty
    iban: str | None
    bic: str | None
    purchase_order: str | None
    payment_terms: str | None
    net_total: str | None
    tax_total: str | None
    gross_total: str | None
    amount_due: str | None
    tax_breakdown: list[LlmTaxLine]
    line_items: list[LlmLineItem]


class _Reader:
    """Parses strings into dates and decimals, collecting a reason for each failure."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def decimal(self, value: str | None, field: str) -> Decimal | None:
        if value is None:
            return None
        text = "".join(_CURRENCY_NOISE.sub("", value).split())
        if not text:
            return None
        if _PLAIN_DECIMAL.fullmatch(text):
            try:
                return Decimal(text)
            except InvalidOperation:  # pragma: no cover - the pattern admits only valid ones
                pass
        self.reasons.append(f"unparseable number in {field}: {value[:40]!r}")
        return None

    def date(self, value: str | None, field: str) -> dt.date | None:
        if value is None or not value.strip():
            return None
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            self.reasons.append(f"unparseable date in {field}: {value[:40]!r}")
            return None


def to_invoice(llm: LlmInvoice, *, model: str, prompt_version: str) -> Invoice | None:
    """``llm`` as an ``Invoice`` with provenance and review flags; ``None`` for ``other``.

    Amounts that are not plain decimals (after removing spaces, currency symbols
    and codes) become ``None`` and flag the invoice, as do dates that are not
    ``YYYY-MM-DD``. Then the arithmetic checks of ``review.check_invoice`` run, and
    four plausibility checks: due date before issue date, a currency that is not
    three capital letters, an IBAN whose mod-97 checksum is wrong, and line net
    amounts that do not add up to the net total.
    """
    if llm.document_type == "other":
        return None
    read = _Reader()
    invoice = Invoice(
        document_type=DocumentType(llm.document_type),
        invoice_number=_clean(llm.invoice_number),
        issue_date=read.date(llm.issue_date, "issue_date"),
        due_date=read.date(llm.due_date, "due_date"),
        currency=_clean(llm.currency),
        seller=_party(llm.seller),
        buyer=_party(llm.buyer),
        purchase_order=_clean(llm.purchase_order),
        iban=_compact(llm.iban),
        bic=_compact(llm.bic),
        payment_terms=_clean(llm.payment_terms),
        net_total=read.decimal(llm.net_total, "net_total"),
        tax_total=read.decimal(llm.tax_total, "tax_total"),
        gross_total=read.decimal(llm.gross_total, "gross_total"),
        amount_due=read.decimal(llm.amount_due, "amount_due"),
        tax_breakdown=[
            TaxLine(
                rate=read.decimal(t.rate, f"tax_breakdown[{i}].rate"),
                taxable_amount=read.decimal(t.taxable_amount, f"tax_breakdown[{i}].taxable_amount"),
                tax_amount=read.decimal(t.tax_amount, f"tax_breakdown[{i}].tax_amount"),
            )
            for i, t in enumerate(llm.tax_breakdown)
        ],
        line_items=[
            LineItem(
                description=_clean(line.description),
                quantity=read.decimal(line.quantity, f"line_items[{i}].quantity"),
                unit=_clean(line.unit),
                unit_price=read.decimal(line.unit_price, f"line_items[{i}].unit_price"),
                net_amount=read.decimal(line.net_amount, f"line_items[{i}].net_amount"),
                tax_rate=read.decimal(line.tax_rate, f"line_items[{i}].tax_rate"),
            )
            for i, line in enumerate(llm.line_items)
        ],
        provenance=Provenance(extractor="openai", model=model, prompt_version=prompt_version),
    )
    for reason in read.reasons:
        invoice.flag(reason)
    check_invoice(invoice)
    _check_plausibility(invoice)
    return invoice


def iban_is_valid(iban: str) -> bool:
    """ISO 13616 check: the shape, and the number mod 97 (letters as 10…35) is 1."""
    compact = "".join(iban.split()).upper()
    if not _IBAN.fullmatch(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _check_plausibility(invoice: Invoice) -> None:
    if invoice.issue_date and invoice.due_date and invoice.due_date < invoice.issue_date:
        invoice.flag(f"due date {invoice.due_date} before issue date {invoice.issue_date}")
    if invoice.currency is not None and not _CURRENCY_CODE.fullmatch(invoice.currency):
        invoice.flag(f"currency {invoice.currency!r} is not an ISO 4217 code")
    if invoice.iban is not None and not iban_is_valid(invoice.iban):
        invoice.flag(f"IBAN {invoice.iban} fails its checksum")
    # The model reports no document-level allowances or charges: lines must add up to net.
    amounts = [line.net_amount for line in invoice.line_items]
    if invoice.net_total is not None and amounts and None not in amounts:
        total = sum((a for a in amounts if a is not None), Decimal(0))
        if total != invoice.net_total:
            invoice.flag(f"line net amounts sum to {total}, net total is {invoice.net_total}")


def _party(party: LlmParty) -> Party:
    return Party(
        name=_clean(party.name),
        vat_id=_compact(party.vat_id),
        street=_clean(party.street),
        postal_code=_clean(party.postal_code),
        city=_clean(party.city),
        country=_clean(party.country),
    )


def _clean(value: str | None) -> str | None:
    """Whitespace collapsed; empty means unknown."""
    if value is None:
        return None
    text = " ".join(value.split())
    return text or None


def _compact(value: str | None) -> str | None:
    """Identifiers (IBAN, BIC, VAT id) without any whitespace; empty means unknown."""
    if value is None:
        return None
    return "".join(value.split()) or None
