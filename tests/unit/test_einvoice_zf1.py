"""ZUGFeRD 1.0 (``rsm:CrossIndustryDocument``) maps to exactly the values in the XML."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.models import (
    AllowanceCharge,
    DocumentType,
    Invoice,
    LineItem,
    Party,
    Provenance,
    TaxLine,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "zugferd-corpus"
ZF1_FILES = sorted(CORPUS.glob("ZF1_*.xml"))
NS = {
    "rsm": "urn:ferd:CrossIndustryDocument:invoice:1p0",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:12",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:15",
}
D = Decimal


def _parse(name: str) -> Invoice:
    invoice = parse_einvoice((CORPUS / name).read_bytes())
    assert invoice is not None
    return invoice


def _exact(invoice: Invoice) -> dict[str, Any]:
    """The model with every Decimal as its exact string (``"20.0000"`` ≠ ``"20"``)."""
    return invoice.model_dump(mode="json", exclude={"needs_review", "review_reasons"})


def _rules(invoice: Invoice) -> list[str]:
    return [reason.split(":")[0] for reason in invoice.review_reasons]


def test_comfort_einfach_field_by_field() -> None:
    """ZF1_COMFORT_Einfach: every field as written in the XML."""
    expected = Invoice(
        document_type=DocumentType.INVOICE,
        type_code="380",
        invoice_number="471102",
        issue_date=dt.date(2013, 3, 5),
        due_date=dt.date(2013, 4, 4),
        currency="EUR",
        seller=Party(
            name="Lieferant GmbH",
            vat_id="DE123456789",
            tax_number="201/113/40209",
            street="Lieferantenstraße 20",
            postal_code="80333",
            city="München",
            country="DE",
        ),
        buyer=Party(
            name="Kunden AG Mitte",
            street="Kundenstraße 15",
            postal_code="69876",
            city="Frankfurt",
            country="DE",
        ),
        iban="DE08700901001234567890",
        bic="GENODEF1M04",
        payment_terms=(
            "Zahlbar innerhalb 30 Tagen netto bis 04.04.2013, "
            "3% Skonto innerhalb 10 Tagen bis 15.03.2013"
        ),
        line_total=D("473.00"),
        charge_total=D("0.00"),
        allowance_total=D("0.00"),
        net_total=D("473.00"),
        tax_total=D("56.87"),
        gross_total=D("529.87"),
        prepaid_amount=D("0.00"),
        amount_due=D("529.87"),
        tax_breakdown=[
            TaxLine(
                category="S", rate=D("7.00"), taxable_amount=D("275.00"), tax_amount=D("19.25")
            ),
            TaxLine(
                category="S", rate=D("19.00"), taxable_amount=D("198.00"), tax_amount=D("37.62")
            ),
        ],
        line_items=[
            LineItem(
                description="Trennblätter A4",
                quantity=D("20.0000"),
                unit="C62",
                unit_price=D("9.9000"),
                net_amount=D("198.00"),
                tax_rate=D("19.00"),
                tax_category="S",
            ),
            LineItem(
                description="Joghurt Banane",
                quantity=D("50.0000"),
                unit="C62",
                unit_price=D("5.5000"),
                net_amount=D("275.00"),
                tax_rate=D("7.00"),
                tax_category="S",
            ),
        ],
        provenance=Provenance(
            extractor="einvoice",
            syntax="ZUGFeRD1",
            einvoice_profile="urn:ferd:CrossIndustryDocument:invoice:1p0:comfort",
        ),
    )
    invoice = _parse("ZF1_COMFORT_Einfach.xml")
    assert _exact(invoice) == _exact(expected)
    assert not invoice.needs_review


def test_extended_order_reference_note_line_and_logistics_charge() -> None:
    """ZF1 EXTENDED: order id from ram:ID, free-text first line, transport charge."""
    invoice = _parse("ZF1_EXTENDED_Warenrechnung.xml")
    assert invoice.purchase_order == "B123456789"
    assert len(invoice.line_items) == 7
    assert invoice.line_items[0] == LineItem(
        description=(
            "Wichtige Information: Bei Bestellungen bis zum 19.12. "
            "ist die Auslieferung bis spätestens 23.12. garantiert."
        )
    )
    assert invoice.line_items[2].description == "Gelierzucker Extra 250g"
    assert str(invoice.line_items[2].unit_price) == "1.4500"
    transport = AllowanceCharge(
        is_charge=True,
        amount=D("3.00"),
        reason="Transportkosten",
        tax_category="S",
        tax_rate=D("19.00"),
    )
    assert transport in invoice.allowances_charges
    assert (str(invoice.allowance_total), str(invoice.charge_total)) == ("11.21", "3.00")
    assert not invoice.needs_review


def test_direct_debit_payer_account_and_bic() -> None:
    """ZF1 SEPA: the debited account and its BIC stand in for the missing payee account."""
    invoice = _parse("ZF1_COMFORT_SEPA_Prenotification.xml")
    assert (invoice.iban, invoice.bic) == ("DE21860000000086001055", "MARKDEF1860")
    assert invoice.due_date == dt.date(2014, 3, 20)


def test_insurance_tax_breakdown_and_buyer_reference() -> None:
    """ZF1 Kraftfahrversicherung: insurance tax breakdown, buyer reference, 4 lines."""
    invoice = _parse("ZF1_COMFORT_Kraftfahrversicherung_Bruttopreise.xml")
    assert invoice.buyer_reference == "00.123.456.7"
    assert invoice.tax_breakdown == [
        TaxLine(category="S", rate=D("19.00"), taxable_amount=D("184.87"), tax_amount=D("35.13"))
    ]
    amounts = [str(line.net_amount) for line in invoice.line_items]
    assert amounts == ["None", "67.23", "117.65", "None"]
    # The XML's line total 184.87 is one cent below its lines' sum (67.23 + 117.65).
    assert _rules(invoice) == ["BR-CO-10"]


def test_rechnungskorrektur_inconsistencies_are_flagged() -> None:
    """ZF1 Rechnungskorrektur: positive allowances vs. negative total, and amount due 0.00."""
    invoice = _parse("ZF1_COMFORT_Rechnungskorrektur.xml")
    assert (invoice.document_type, invoice.type_code) == (DocumentType.INVOICE, "380")
    assert [str(entry.amount) for entry in invoice.allowances_charges] == [
        "0.10",
        "0.06",
        "0.05",
        "0.02",
    ]
    assert (str(invoice.allowance_total), str(invoice.amount_due)) == ("-0.23", "0.00")
    assert invoice.line_items[0].description is not None
    assert invoice.line_items[0].description.startswith("Gemäß Ihres Reklamationsschreibens")
    assert _rules(invoice) == ["BR-CO-11", "BR-CO-16"]


def _lookup(tree: Any, expression: str) -> str:
    return str(tree.xpath(expression, namespaces=NS)).strip()


@pytest.mark.parametrize("path", ZF1_FILES, ids=lambda path: path.name)
def test_core_fields_match_plain_xpath(path: Path) -> None:
    """Number, issue date, currency, grand total and line count equal a direct XPath lookup."""
    tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
    doc = "/rsm:CrossIndustryDocument/rsm:HeaderExchangedDocument"
    settlement = (
        "/rsm:CrossIndustryDocument/rsm:SpecifiedSupplyChainTradeTransaction"
        "/ram:ApplicableSupplyChainTradeSettlement"
    )
    issue = _lookup(tree, f"string({doc}/ram:IssueDateTime/udt:DateTimeString)")
    invoice = parse_einvoice(path.read_bytes())
    assert invoice is not None
    assert invoice.provenance.syntax == "ZUGFeRD1"
    assert invoice.invoice_number == _lookup(tree, f"string({doc}/ram:ID)")
    assert invoice.issue_date == dt.datetime.strptime(issue, "%Y%m%d").date()
    assert invoice.currency == _lookup(tree, f"string({settlement}/ram:InvoiceCurrencyCode)")
    assert str(invoice.gross_total) == _lookup(
        tree,
        f"string({settlement}/ram:SpecifiedTradeSettlementMonetarySummation/ram:GrandTotalAmount)",
    )
    assert len(invoice.line_items) == int(
        float(_lookup(tree, "count(//ram:IncludedSupplyChainTradeLineItem)"))
    )
