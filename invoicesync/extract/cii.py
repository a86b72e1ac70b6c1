"""UN/CEFACT Cross Industry Invoice D16B → ``Invoice`` (Factur-X, ZUGFeRD 2.x, XRechnung-CII).

ZUGFeRD 1.0 has the same tree under other element names and namespaces, so the
mapping is written once against a ``Dialect`` (see ``zugferd1.py``).

Mapping decisions (EN 16931 terms):

- BT-146 unit price is the net price ``ChargeAmount`` as written. When a base
  quantity (BT-149, ``BasisQuantity``) is present the price stays *per base
  quantity*, as EN 16931 defines it; it is not divided.
- BT-110 is the ``TaxTotalAmount`` in the invoice currency; a second one in the
  tax accounting currency (BT-111) is ignored.
- IBAN/BIC come from the first payment means with a payee (credit transfer)
  account; without one, from the first payer (direct debit) account. Spaces are
  removed from IBANs.
- EXTENDED logistics service charges are document-level charges: they are part
  of ``ChargeTotalAmount``.
- A line without a product name takes its line note as description (ZUGFeRD 1
  free-text lines).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

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
    Invoice,
    LineItem,
    Party,
    Provenance,
    TaxLine,
)

__all__ = ["CII_ROOT", "D16B", "Dialect", "map_cii", "map_cross_industry"]


@dataclass(frozen=True)
class Dialect:
    """Element names that differ between CII D16B and its ZUGFeRD 1.0 ancestor."""

    syntax: str
    namespaces: Mapping[str, str]
    context: str
    header: str
    transaction: str
    agreement: str
    settlement: str
    summation: str
    rate: str
    order_id: str
    line_agreement: str
    line_delivery: str
    line_settlement: str
    line_summation: str


_RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
CII_ROOT = f"{{{_RSM}}}CrossIndustryInvoice"

D16B = Dialect(
    syntax="CII",
    namespaces={
        "rsm": _RSM,
        "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
        "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
    },
    context="rsm:ExchangedDocumentContext",
    header="rsm:ExchangedDocument",
    transaction="rsm:SupplyChainTradeTransaction",
    agreement="ram:ApplicableHeaderTradeAgreement",
    settlement="ram:ApplicableHeaderTradeSettlement",
    summation="ram:SpecifiedTradeSettlementHeaderMonetarySummation",
    rate="ram:RateApplicablePercent",
    order_id="ram:BuyerOrderReferencedDocument/ram:IssuerAssignedID",
    line_agreement="ram:SpecifiedLineTradeAgreement",
    line_delivery="ram:SpecifiedLineTradeDelivery",
    line_settlement="ram:SpecifiedLineTradeSettlement",
    line_summation="ram:SpecifiedTradeSettlementLineMonetarySummation",
)


# Payee (credit transfer) accounts are preferred over the payer's direct-debit account.
_ACCOUNTS = (
    ("ram:PayeePartyCreditorFinancialAccount", "ram:PayeeSpecifiedCreditorFinancialInstitution"),
    ("ram:PayerPartyDebtorFinancialAccount", "ram:PayerSpecifiedDebtorFinancialInstitution"),
)
_LINE_NOTE = "ram:AssociatedDocumentLineDocument/ram:IncludedNote/ram:Content"
_NET_PRICE = "ram:NetPriceProductTradePrice/ram:ChargeAmount"


def map_cii(root: etree._Element) -> Invoice:
    """Map a ``rsm:CrossIndustryInvoice`` root element."""
    return map_cross_industry(root, D16B)


def map_cross_industry(root: etree._Element, dialect: Dialect) -> Invoice:
    """Map the root of a CII-family document written in ``dialect``."""
    return _Mapper(root, dialect).invoice()


class _Mapper:
    def __init__(self, root: etree._Element, dialect: Dialect) -> None:
        self.d = dialect
        self.r = XPathReader(dialect.namespaces)
        self.root = root
        self.problems: list[str] = []
        r = self.r
        self.header = r.first(root, dialect.header)
        self.transaction = r.first(root, dialect.transaction)
        self.agreement = r.first(self.transaction, dialect.agreement)
        self.settlement = r.first(self.transaction, dialect.settlement)
        self.summation = r.first(self.settlement, dialect.summation)

    def invoice(self) -> Invoice:
        r, d = self.r, self.d
        type_code = r.text(self.header, "ram:TypeCode")
        currency = r.text(self.settlement, "ram:InvoiceCurrencyCode")
        iban, bic = self._account()
        summation = self.summation
        terms = r.texts(self.settlement, "ram:SpecifiedTradePaymentTerms/ram:Description")
        invoice = Invoice(
            document_type=document_type(type_code, self.problems),
            type_code=type_code,
            invoice_number=r.text(self.header, "ram:ID"),
            issue_date=self._date(self.header, "ram:IssueDateTime", "BT-2"),
            due_date=self._date(
                self.settlement, "ram:SpecifiedTradePaymentTerms/ram:DueDateDateTime", "BT-9"
            ),
            currency=currency,
            seller=self._party("ram:SellerTradeParty"),
            buyer=self._party("ram:BuyerTradeParty"),
            buyer_reference=r.text(self.agreement, "ram:BuyerReference"),
            purchase_order=r.text(self.agreement, d.order_id),
            iban=iban,
            bic=bic,
            payment_terms="\n".join(terms) or None,
            line_total=r.amount(summation, "ram:LineTotalAmount"),
            allowance_total=r.amount(summation, "ram:AllowanceTotalAmount"),
            charge_total=r.amount(summation, "ram:ChargeTotalAmount"),
            net_total=r.amount(summation, "ram:TaxBasisTotalAmount"),
            tax_total=self._tax_total(currency),
            gross_total=r.amount(summation, "ram:GrandTotalAmount"),
            prepaid_amount=r.amount(summation, "ram:TotalPrepaidAmount"),
            rounding_amount=r.amount(summation, "ram:RoundingAmount"),
            amount_due=r.amount(summation, "ram:DuePayableAmount"),
            tax_breakdown=self._tax_breakdown(),
            allowances_charges=self._allowances_charges(),
            line_items=self._lines(),
            provenance=Provenance(
                extractor="einvoice",
                syntax=d.syntax,
                einvoice_profile=r.text(
                    self.root, f"{d.context}/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID"
                ),
            ),
        )
        for problem in self.problems:
            invoice.flag(problem)
        return invoice

    def _date(self, node: etree._Element | None, path: str, term: str) -> dt.date | None:
        element = self.r.first(node, f"{path}/udt:DateTimeString")
        raw = self.r.text(element, ".")
        if element is None or raw is None:
            return None
        parsed = parse_date(raw, element.get("format"))
        if parsed is None:
            self.problems.append(f"{term}: unreadable date {raw[:40]!r}")
        return parsed

    def _party(self, path: str) -> Party:
        r = self.r
        party = r.first(self.agreement, path)
        address = r.first(party, "ram:PostalTradeAddress")
        return Party(
            name=r.text(party, "ram:Name"),
            vat_id=r.text(party, "ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']"),
            tax_number=r.text(party, "ram:SpecifiedTaxRegistration/ram:ID[@schemeID='FC']"),
            street=r.text(address, "ram:LineOne"),
            additional_street=r.text(address, "ram:LineTwo"),
            postal_code=r.text(address, "ram:PostcodeCode"),
            city=r.text(address, "ram:CityName"),
            country=r.text(address, "ram:CountryID"),
        )

    def _account(self) -> tuple[str | None, str | None]:
        r = self.r
        means = r.all(self.settlement, "ram:SpecifiedTradeSettlementPaymentMeans")
        for account, institution in _ACCOUNTS:
            for entry in means:
                iban = compact(r.text(entry, f"{account}/ram:IBANID"))
                if iban is not None:
                    return iban, compact(r.text(entry, f"{institution}/ram:BICID"))
        return None, None

    def _tax_total(self, currency: str | None) -> Decimal | None:
        found = self.r.amounts_with_currency(self.summation, "ram:TaxTotalAmount")
        return first_in_currency(found, currency)

    def _tax_breakdown(self) -> list[TaxLine]:
        r = self.r
        return [
            TaxLine(
                category=r.text(tax, "ram:CategoryCode"),
                rate=r.amount(tax, self.d.rate),
                taxable_amount=r.amount(tax, "ram:BasisAmount"),
                tax_amount=r.amount(tax, "ram:CalculatedAmount"),
                exemption_reason=r.text(tax, "ram:ExemptionReason"),
            )
            for tax in r.all(self.settlement, "ram:ApplicableTradeTax")
        ]

    def _allowances_charges(self) -> list[AllowanceCharge]:
        r, rate = self.r, self.d.rate
        found: list[AllowanceCharge] = []
        for entry in r.all(self.settlement, "ram:SpecifiedTradeAllowanceCharge"):
            indicator = r.text(entry, "ram:ChargeIndicator/udt:Indicator")
            self._add_allowance_charge(
                found,
                is_charge=indicator in ("true", "1"),
                amount=r.amount(entry, "ram:ActualAmount"),
                reason=r.text(entry, "ram:Reason") or r.text(entry, "ram:ReasonCode"),
                category=r.text(entry, "ram:CategoryTradeTax/ram:CategoryCode"),
                tax_rate=r.amount(entry, f"ram:CategoryTradeTax/{rate}"),
            )
        for entry in r.all(self.settlement, "ram:SpecifiedLogisticsServiceCharge"):
            self._add_allowance_charge(
                found,
                is_charge=True,
                amount=r.amount(entry, "ram:AppliedAmount"),
                reason=r.text(entry, "ram:Description"),
                category=r.text(entry, "ram:AppliedTradeTax/ram:CategoryCode"),
                tax_rate=r.amount(entry, f"ram:AppliedTradeTax/{rate}"),
            )
        return found

    def _add_allowance_charge(
        self,
        found: list[AllowanceCharge],
        *,
        is_charge: bool,
        amount: Decimal | None,
        reason: str | None,
        category: str | None,
        tax_rate: Decimal | None,
    ) -> None:
        if amount is None:
            kind = "charge" if is_charge else "allowance"
            self.problems.append(f"BG-20/21: document-level {kind} without an amount ignored")
            return
        found.append(
            AllowanceCharge(
                is_charge=is_charge,
                amount=amount,
                reason=reason,
                tax_category=category,
                tax_rate=tax_rate,
            )
        )

    def _lines(self) -> list[LineItem]:
        r, d = self.r, self.d
        lines: list[LineItem] = []
        for item in r.all(self.transaction, "ram:IncludedSupplyChainTradeLineItem"):
            agreement = r.first(item, d.line_agreement)
            settlement = r.first(item, d.line_settlement)
            quantity = r.first(item, f"{d.line_delivery}/ram:BilledQuantity")
            unit = quantity.get("unitCode") if quantity is not None else None
            lines.append(
                LineItem(
                    description=r.text(item, "ram:SpecifiedTradeProduct/ram:Name")
                    or r.text(item, _LINE_NOTE),
                    quantity=r.amount(quantity, "."),
                    unit=(unit.strip() or None) if unit else None,
                    unit_price=r.amount(agreement, _NET_PRICE),
                    net_amount=r.amount(settlement, f"{d.line_summation}/ram:LineTotalAmount"),
                    tax_rate=r.amount(settlement, f"ram:ApplicableTradeTax/{d.rate}"),
                    tax_category=r.text(settlement, "ram:ApplicableTradeTax/ram:CategoryCode"),
                )
            )
        return lines
