"""OASIS UBL 2.1 ``Invoice`` / ``CreditNote`` → ``Invoice`` (EN 16931 UBL syntax binding).

Mapping decisions mirror ``cii.py`` so that the same invoice in either syntax gives
the same model:

- Party name (BT-27/BT-44) is the legal ``RegistrationName``, else ``PartyName``.
- VAT id is the ``PartyTaxScheme`` whose scheme is ``VAT``; any other scheme
  (e.g. ``FC``) is the tax number (BT-32).
- BT-146 unit price is ``PriceAmount`` as written, per ``BaseQuantity`` (BT-149)
  when one is given; it is not divided.
- BT-110 is the ``TaxTotal/TaxAmount`` in the document currency (a second
  ``TaxTotal`` in the tax currency is BT-111).
- IBAN/BIC come from the first ``PaymentMeans`` with a payee account, else from
  the first direct-debit mandate's payer account.
"""

from __future__ import annotations

import datetime as dt

from lxml import etree

from invoicesync.extract._xmlmap import (
    XPathReader,
    compact,
    document_type,
    first_in_currency,
    parse_date,
)
from invoicesync.models import (
    AllowanceCharge,
    DocumentType,
    Invoice,
    LineItem,
    Party,
    Provenance,
    TaxLine,
)

__all__ = ["UBL_CREDIT_NOTE_ROOT", "UBL_INVOICE_ROOT", "UBL_ROOTS", "map_ubl"]

UBL_INVOICE_ROOT = "{urn:oasis:names:specification:ubl:schema:xsd:Invoice-2}Invoice"
UBL_CREDIT_NOTE_ROOT = "{urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2}CreditNote"
UBL_ROOTS = frozenset({UBL_INVOICE_ROOT, UBL_CREDIT_NOTE_ROOT})

_NAMESPACES = {
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
}
_r = XPathReader(_NAMESPACES)


def map_ubl(root: etree._Element) -> Invoice:
    """Map a UBL ``Invoice`` or ``CreditNote`` root element."""
    problems: list[str] = []
    is_credit_note = root.tag == UBL_CREDIT_NOTE_ROOT
    type_code = _r.text(root, "cbc:InvoiceTypeCode|cbc:CreditNoteTypeCode")
    currency = _r.text(root, "cbc:DocumentCurrencyCode")
    totals = _r.first(root, "cac:LegalMonetaryTotal")
    iban, bic = _account(root)
    terms = _r.texts(root, "cac:PaymentTerms/cbc:Note")
    invoice = Invoice(
        document_type=document_type(
            type_code,
            problems,
            default=DocumentType.CREDIT_NOTE if is_credit_note else DocumentType.INVOICE,
        ),
        type_code=type_code,
        invoice_number=_r.text(root, "cbc:ID"),
        issue_date=_date(root, "cbc:IssueDate", "BT-2", problems),
        due_date=_date(root, "cbc:DueDate|cac:PaymentMeans/cbc:PaymentDueDate", "BT-9", problems),
        currency=currency,
        seller=_party(_r.first(root, "cac:AccountingSupplierParty/cac:Party")),
        buyer=_party(_r.first(root, "cac:AccountingCustomerParty/cac:Party")),
        buyer_reference=_r.text(root, "cbc:BuyerReference"),
        purchase_order=_r.text(root, "cac:OrderReference/cbc:ID"),
        iban=iban,
        bic=bic,
        payment_terms="\n".join(terms) or None,
        line_total=_r.amount(totals, "cbc:LineExtensionAmount"),
        allowance_total=_r.amount(totals, "cbc:AllowanceTotalAmount"),
        charge_total=_r.amount(totals, "cbc:ChargeTotalAmount"),
        net_total=_r.amount(totals, "cbc:TaxExclusiveAmount"),
        tax_total=first_in_currency(
            _r.amounts_with_currency(root, "cac:TaxTotal/cbc:TaxAmount"), currency
        ),
        gross_total=_r.amount(totals, "cbc:TaxInclusiveAmount"),
        prepaid_amount=_r.amount(totals, "cbc:PrepaidAmount"),
        rounding_amount=_r.amount(totals, "cbc:PayableRoundingAmount"),
        amount_due=_r.amount(totals, "cbc:PayableAmount"),
        tax_breakdown=_tax_breakdown(root, currency),
        allowances_charges=_allowances_charges(root, problems),
        line_items=_lines(root),
        provenance=Provenance(
            extractor="einvoice",
            syntax="UBL",
            einvoice_profile=_r.text(root, "cbc:CustomizationID"),
        ),
    )
    for problem in problems:
        invoice.flag(problem)
    return invoice


def _date(root: etree._Element, path: str, term: str, problems: list[str]) -> dt.date | None:
    raw = _r.text(root, path)
    if raw is None:
        return None
    parsed = parse_date(raw)
    if parsed is None:
        problems.append(f"{term}: unreadable date {raw[:40]!r}")
    return parsed


def _party(party: etree._Element | None) -> Party:
    address = _r.first(party, "cac:PostalAddress")
    return Party(
        name=_r.text(party, "cac:PartyLegalEntity/cbc:RegistrationName")
        or _r.text(party, "cac:PartyName/cbc:Name"),
        vat_id=_r.text(party, "cac:PartyTaxScheme[cac:TaxScheme/cbc:ID='VAT']/cbc:CompanyID"),
        tax_number=_r.text(
            party, "cac:PartyTaxScheme[not(cac:TaxScheme/cbc:ID='VAT')]/cbc:CompanyID"
        ),
        street=_r.text(address, "cbc:StreetName"),
        additional_street=_r.text(address, "cbc:AdditionalStreetName"),
        postal_code=_r.text(address, "cbc:PostalZone"),
        city=_r.text(address, "cbc:CityName"),
        country=_r.text(address, "cac:Country/cbc:IdentificationCode"),
    )


def _account(root: etree._Element) -> tuple[str | None, str | None]:
    means = _r.all(root, "cac:PaymentMeans")
    for account in ("cac:PayeeFinancialAccount", "cac:PaymentMandate/cac:PayerFinancialAccount"):
        for entry in means:
            iban = compact(_r.text(entry, f"{account}/cbc:ID"))
            if iban is not None:
                bic = _r.text(entry, f"{account}/cac:FinancialInstitutionBranch/cbc:ID")
                return iban, compact(bic)
    return None, None


def _tax_breakdown(root: etree._Element, currency: str | None) -> list[TaxLine]:
    breakdown: list[TaxLine] = []
    for subtotal in _r.all(root, "cac:TaxTotal/cac:TaxSubtotal"):
        amount = _r.first(subtotal, "cbc:TaxAmount")
        amount_currency = amount.get("currencyID") if amount is not None else None
        if currency and amount_currency and amount_currency.strip() != currency:
            continue  # a subtotal in the tax accounting currency is not BG-23
        breakdown.append(
            TaxLine(
                category=_r.text(subtotal, "cac:TaxCategory/cbc:ID"),
                rate=_r.amount(subtotal, "cac:TaxCategory/cbc:Percent"),
                taxable_amount=_r.amount(subtotal, "cbc:TaxableAmount"),
                tax_amount=_r.amount(amount, "."),
                exemption_reason=_r.text(subtotal, "cac:TaxCategory/cbc:TaxExemptionReason"),
            )
        )
    return breakdown


def _allowances_charges(root: etree._Element, problems: list[str]) -> list[AllowanceCharge]:
    found: list[AllowanceCharge] = []
    for entry in _r.all(root, "cac:AllowanceCharge"):
        is_charge = _r.text(entry, "cbc:ChargeIndicator") in ("true", "1")
        amount = _r.amount(entry, "cbc:Amount")
        if amount is None:
            kind = "charge" if is_charge else "allowance"
            problems.append(f"BG-20/21: document-level {kind} without an amount ignored")
            continue
        found.append(
            AllowanceCharge(
                is_charge=is_charge,
                amount=amount,
                reason=_r.text(entry, "cbc:AllowanceChargeReason")
                or _r.text(entry, "cbc:AllowanceChargeReasonCode"),
                tax_category=_r.text(entry, "cac:TaxCategory/cbc:ID"),
                tax_rate=_r.amount(entry, "cac:TaxCategory/cbc:Percent"),
            )
        )
    return found


def _lines(root: etree._Element) -> list[LineItem]:
    lines: list[LineItem] = []
    for line in _r.all(root, "cac:InvoiceLine|cac:CreditNoteLine"):
        quantity = _r.first(line, "cbc:InvoicedQuantity|cbc:CreditedQuantity")
        unit = quantity.get("unitCode") if quantity is not None else None
        lines.append(
            LineItem(
                description=_r.text(line, "cac:Item/cbc:Name") or _r.text(line, "cbc:Note"),
                quantity=_r.amount(quantity, "."),
                unit=(unit.strip() or None) if unit else None,
                unit_price=_r.amount(line, "cac:Price/cbc:PriceAmount"),
                net_amount=_r.amount(line, "cbc:LineExtensionAmount"),
                tax_rate=_r.amount(line, "cac:Item/cac:ClassifiedTaxCategory/cbc:Percent"),
                tax_category=_r.text(line, "cac:Item/cac:ClassifiedTaxCategory/cbc:ID"),
            )
        )
    return lines
