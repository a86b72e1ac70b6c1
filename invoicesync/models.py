"""Pydantic models passed between the stages. No I/O here.

Field names follow the meanings of EN 16931 (business terms in comments, e.g. BT-1).
Money is always ``Decimal``; floats never touch an amount.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AllowanceCharge",
    "Attachment",
    "CacheKey",
    "CachedReading",
    "DocumentType",
    "FolderPosition",
    "Invoice",
    "LineItem",
    "MailRef",
    "ParsedMail",
    "Party",
    "Provenance",
    "TaxLine",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


# ---------------------------------------------------------------- mail stage


class MailRef(_Model):
    """One message in a source, addressed stably across runs.

    ``key`` is unique per account + folder: ``"<uidvalidity>:<uid>"`` for IMAP,
    the sha256 of the raw message for local sources.
    """

    account: str
    folder: str
    key: str
    uidvalidity: int | None = None
    uid: int | None = None
    size: int | None = None
    message_id: str | None = None


class FolderPosition(_Model):
    """How far a folder has been examined: IMAP UIDVALIDITY and the highest UID done."""

    uidvalidity: int | None = None
    last_uid: int | None = None


class Attachment(_Model):
    """A candidate document found in a message: a PDF (or, later, an XML e-invoice)."""

    filename: str | None
    content_type: str
    kind: str = "pdf"  # pdf | xml
    data: bytes = Field(repr=False)
    nested: bool = False  # found inside an attached message/rfc822
    source_url: str | None = None  # downloaded from this (redacted) link in the body


class ParsedMail(_Model):
    """What the MIME walker found in one message."""

    message_id: str | None = None
    subject: str | None = None
    sender: str | None = None
    date: dt.datetime | None = None
    attachments: list[Attachment] = []
    links: list[str] = []
    #: Parts that looked like documents but were skipped, with the reason (e.g. not a PDF).
    skipped: list[str] = []


# ------------------------------------------------------------- invoice model


class DocumentType(StrEnum):
    INVOICE = "invoice"  # 380 and other commercial invoices
    CREDIT_NOTE = "credit_note"  # 381
    CORRECTED = "corrected"  # 384
    OTHER = "other"  # not an invoice at all


class Party(_Model):
    """Seller (BG-4) or buyer (BG-7)."""

    name: str | None = None
    vat_id: str | None = None  # BT-31 / BT-48
    tax_number: str | None = None  # BT-32 (seller tax registration, "FC")
    street: str | None = None
    additional_street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2


class TaxLine(_Model):
    """One VAT breakdown entry (BG-23)."""

    category: str | None = None  # BT-118, e.g. S, Z, E, AE, K
    rate: Decimal | None = None  # BT-119, percent
    taxable_amount: Decimal | None = None  # BT-116
    tax_amount: Decimal | None = None  # BT-117
    exemption_reason: str | None = None  # BT-120


class LineItem(_Model):
    """One invoice line (BG-25)."""

    description: str | None = None  # BT-153
    quantity: Decimal | None = None  # BT-129
    unit: str | None = None  # BT-130
    unit_price: Decimal | None = None  # BT-146
    net_amount: Decimal | None = None  # BT-131
    tax_rate: Decimal | None = None  # BT-152
    tax_category: str | None = None  # BT-151


class AllowanceCharge(_Model):
    """Document-level allowance (BG-20) or charge (BG-21)."""

    is_charge: bool
    amount: Decimal
    reason: str | None = None
    tax_category: str | None = None
    tax_rate: Decimal | None = None


class Provenance(_Model):
    """Where an invoice's data came from."""

    extractor: str  # einvoice | offline | openai
    syntax: str | None = None  # CII | UBL | ZUGFeRD1 (e-invoices only)
    einvoice_profile: str | None = None  # BT-24 specification identifier
    model: str | None = None  # the language model, for the openai extractor
    prompt_version: str | None = None
    prompt_tokens: int | None = None  # what the model's reading cost (all its requests)
    completion_tokens: int | None = None


class Invoice(_Model):
    """One invoice as stored and exported."""

    document_type: DocumentType = DocumentType.INVOICE
    type_code: str | None = None  # BT-3 as found (380, 381, 384, 326, 389 ...)
    invoice_number: str | None = None  # BT-1
    issue_date: dt.date | None = None  # BT-2
    due_date: dt.date | None = None  # BT-9
    currency: str | None = None  # BT-5, ISO 4217
    seller: Party = Party()
    buyer: Party = Party()
    buyer_reference: str | None = None  # BT-10, e.g. a Leitweg-ID
    purchase_order: str | None = None  # BT-13
    iban: str | None = None  # BT-84
    bic: str | None = None  # BT-86
    payment_terms: str | None = None  # BT-20
    line_total: Decimal | None = None  # BT-106, sum of line net amounts
    allowance_total: Decimal | None = None  # BT-107
    charge_total: Decimal | None = None  # BT-108
    net_total: Decimal | None = None  # BT-109, total without VAT
    tax_total: Decimal | None = None  # BT-110
    gross_total: Decimal | None = None  # BT-112, total with VAT
    prepaid_amount: Decimal | None = None  # BT-113
    rounding_amount: Decimal | None = None  # BT-114
    amount_due: Decimal | None = None  # BT-115
    tax_breakdown: list[TaxLine] = []
    allowances_charges: list[AllowanceCharge] = []
    line_items: list[LineItem] = []
    provenance: Provenance
    needs_review: bool = False
    review_reasons: list[str] = []

    def flag(self, reason: str) -> None:
        """Mark the invoice for human review, keeping every distinct reason once."""
        if reason not in self.review_reasons:
            self.review_reasons = [*self.review_reasons, reason]
        self.needs_review = True


@dataclass(frozen=True)
class CacheKey:
    """What a model's reading of a document depends on: the bytes, the model, the prompt."""

    sha256: str
    model: str
    prompt_version: str


@dataclass(frozen=True)
class CachedReading:
    """A stored reading: the invoice (None: not an invoice) and what it cost."""

    invoice: Invoice | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
