"""CII D16B (Factur-X, ZUGFeRD 2.x, XRechnung-CII) maps to exactly the values in the XML."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from invoicesync.errors import BadInputError
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
CII_FILES = sorted(
    [
        *CORPUS.glob("XR_*.cii.xml"),
        *CORPUS.glob("XR_*.embedded.xml"),
        *CORPUS.glob("ZF20_*.xml"),
        *CORPUS.glob("FX_*.xml"),
    ]
)
NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
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


def _tax(category: str, rate: str, base: str, tax: str) -> TaxLine:
    return TaxLine(category=category, rate=D(rate), taxable_amount=D(base), tax_amount=D(tax))


def _line(
    name: str, quantity: str, unit: str, price: str, net: str, rate: str, category: str
) -> LineItem:
    return LineItem(
        description=name,
        quantity=D(quantity),
        unit=unit,
        unit_price=D(price),
        net_amount=D(net),
        tax_rate=D(rate),
        tax_category=category,
    )


def _provenance(profile: str) -> Provenance:
    return Provenance(extractor="einvoice", syntax="CII", einvoice_profile=profile)


# ------------------------------------------------------- field by field, read by hand


def test_einfach_field_by_field() -> None:
    """XR_EN16931_Einfach: every field as written in the XML."""
    expected = Invoice(
        document_type=DocumentType.INVOICE,
        type_code="380",
        invoice_number="471102",
        issue_date=dt.date(2018, 3, 5),
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
        payment_terms=(
            "Zahlbar innerhalb 30 Tagen netto bis 04.04.2018, "
            "3% Skonto innerhalb 10 Tagen bis 15.03.2018"
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
            _tax("S", "7.00", "275.00", "19.25"),
            _tax("S", "19.00", "198.00", "37.62"),
        ],
        line_items=[
            _line("Trennblätter A4", "20.0000", "H87", "9.9000", "198.00", "19.00", "S"),
            _line("Joghurt Banane", "50.0000", "H87", "5.5000", "275.00", "7.00", "S"),
        ],
        provenance=_provenance("urn:cen.eu:en16931:2017"),
    )
    invoice = _parse("XR_EN16931_Einfach.cii.xml")
    assert _exact(invoice) == _exact(expected)
    assert not invoice.needs_review


def test_rechnungskorrektur_field_by_field() -> None:
    """XR_EN16931_Rechnungskorrektur: type 384, negative totals and allowances kept signed."""

    def allowance(amount: str, reason: str, rate: str) -> AllowanceCharge:
        return AllowanceCharge(
            is_charge=False, amount=D(amount), reason=reason, tax_category="S", tax_rate=D(rate)
        )

    expected = Invoice(
        document_type=DocumentType.CORRECTED,
        type_code="384",
        invoice_number="RK21012345",
        issue_date=dt.date(2018, 9, 16),
        currency="EUR",
        seller=Party(
            name="MUSTERLIEFERANT GMBH",
            vat_id="DE123456789",
            street="BAHNHOFSTRASSE 99",
            postal_code="99199",
            city="MUSTERHAUSEN",
            country="DE",
        ),
        buyer=Party(
            name="MUSTER-KUNDE GMBH",
            street="KUNDENWEG 88",
            postal_code="40235",
            city="DUESSELDORF",
            country="DE",
        ),
        purchase_order="B123456789",
        line_total=D("-7.90"),
        charge_total=D("0.00"),
        allowance_total=D("-0.23"),
        net_total=D("-7.67"),
        tax_total=D("-1.12"),
        gross_total=D("-8.79"),
        prepaid_amount=D("0.00"),
        amount_due=D("-8.79"),
        tax_breakdown=[
            _tax("S", "19.00", "-4.85", "-0.92"),
            _tax("S", "7.00", "-2.82", "-0.20"),
        ],
        allowances_charges=[
            allowance(
                "-0.10", "Rechnungsrabatt 1 -2,00% Basisbetrag: -5,00, MwSt. % 19,0", "19.00"
            ),
            allowance("-0.06", "Rechnungsrabatt 1 -2,00% Basisbetrag: -2,90, MwSt. %  7,0", "7.00"),
            allowance("-0.05", "Rechnungsrabatt 2       Basisbetrag: -5,00, MwSt. % 19,0", "19.00"),
            allowance("-0.02", "Rechnungsrabatt 2       Basisbetrag: -2,90, MwSt. %  7,0", "7.00"),
        ],
        line_items=[
            _line("Zitronensäure 100ml", "-5.0000", "H87", "1.0000", "-5.00", "19.00", "S"),
            _line("Gelierzucker Extra 250g", "-2.0000", "H87", "1.4500", "-2.90", "7.00", "S"),
        ],
        provenance=_provenance("urn:cen.eu:en16931:2017"),
    )
    invoice = _parse("XR_EN16931_Rechnungskorrektur.cii.xml")
    assert _exact(invoice) == _exact(expected)
    assert not invoice.needs_review


def test_minimum_profile_field_by_field() -> None:
    """FX_FNFE_Facture_FR_MINIMUM: no lines, no addresses, only the header totals."""
    expected = Invoice(
        type_code="380",
        invoice_number="FA-2017-0010",
        issue_date=dt.date(2017, 11, 13),
        currency="EUR",
        seller=Party(name="Au bon moulin", vat_id="FR11999999998", country="FR"),
        buyer=Party(name="Ma jolie boutique", vat_id="FR19787878784", country="FR"),
        purchase_order="PO445",
        net_total=D("624.90"),
        tax_total=D("46.25"),
        gross_total=D("671.15"),
        amount_due=D("470.15"),
        provenance=_provenance("urn:factur-x.eu:1p0:minimum"),
    )
    invoice = _parse("FX_FNFE_Facture_FR_MINIMUM.xml")
    assert _exact(invoice) == _exact(expected)
    # MINIMUM cannot carry the prepaid amount (BT-113) that explains 671.15 → 470.15.
    assert _rules(invoice) == ["BR-CO-16"]


def test_base_quantity_price_and_exemption() -> None:
    """Intra-EU supply: price per base quantity kept, K exemption, IBAN without spaces."""
    invoice = _parse("XR_EN16931_Innergemeinschaftliche_Lieferungen.cii.xml")
    assert invoice.type_code == "389"
    assert invoice.document_type is DocumentType.INVOICE
    assert invoice.due_date == dt.date(2018, 11, 30)
    assert invoice.seller.name == "Global Supplies Ltd."
    assert invoice.buyer.additional_street == "Hof 3"
    assert invoice.iban == "DE1212344321987600"
    line = invoice.line_items[0]
    assert (str(line.unit_price), str(line.quantity), str(line.net_amount)) == ("100", "10", "1000")
    assert invoice.tax_breakdown == [
        TaxLine(
            category="K",
            rate=D("0"),
            taxable_amount=D("2000"),
            tax_amount=D("0"),
            exemption_reason=(
                "Mehrwertsteuerbefreiung für die innergemeinschaftliche Lieferung "
                "von Waren und Dienstleistungen in der EU"
            ),
        )
    ]


def test_direct_debit_uses_the_payer_account() -> None:
    """SEPA_Prenotification: with no payee account, the debited account is the IBAN."""
    invoice = _parse("XR_EN16931_SEPA_Prenotification.cii.xml")
    assert (invoice.iban, invoice.bic) == ("DE21860000000086001055", None)


def test_payee_account_bic_and_buyer_reference() -> None:
    """XRECHNUNG embedded: IBAN, BIC and the Leitweg-ID buyer reference."""
    invoice = _parse("XR_XRECHNUNG_Einfach.embedded.xml")
    assert (invoice.iban, invoice.bic) == ("DE02120300000000202051", "BYLADEM1001")
    assert invoice.buyer_reference == "04011000-12345-34"
    assert invoice.provenance.einvoice_profile == (
        "urn:cen.eu:en16931:2017#compliant#urn:xoev-de:kosit:standard:xrechnung_2.1"
    )


def test_extended_logistics_charge_is_a_document_charge() -> None:
    """ZF20 EXTENDED: the transport charge counts as a charge, matching ChargeTotalAmount."""
    invoice = _parse("ZF20_EXTENDED_Warenrechnung.xml")
    charges = [entry for entry in invoice.allowances_charges if entry.is_charge]
    assert charges == [
        AllowanceCharge(
            is_charge=True,
            amount=D("3.00"),
            reason="Transportkosten",
            tax_category="S",
            tax_rate=D("19.00"),
        )
    ]
    assert [str(entry.amount) for entry in invoice.allowances_charges if not entry.is_charge] == [
        "5.60",
        "2.61",
        "2.50",
        "0.50",
    ]
    assert invoice.charge_total == D("3.00")
    assert not invoice.needs_review


def test_insurance_invoice_with_negative_prepaid() -> None:
    """Kraftfahrversicherung: type 575 is an invoice; multi-line names are kept, stripped."""
    invoice = _parse("XR_EN16931_Kraftfahrversicherung_Bruttopreise.cii.xml")
    assert (invoice.document_type, invoice.type_code) == (DocumentType.INVOICE, "575")
    assert invoice.seller.name == "MVM Musterhafter\nVersicherungsverein Musterstadt a.G."
    assert invoice.buyer.name == "Herrn\nMax Mustermann"
    assert (invoice.prepaid_amount, invoice.amount_due) == (D("-220.00"), D("440.00"))
    assert not invoice.needs_review


# ------------------------------------------------ every CII file vs. a plain XPath lookup


def _lookup(tree: Any, expression: str) -> str:
    return str(tree.xpath(expression, namespaces=NS)).strip()


@pytest.mark.parametrize("path", CII_FILES, ids=lambda path: path.name)
def test_core_fields_match_plain_xpath(path: Path) -> None:
    """Number, issue date, currency, grand total and line count equal a direct XPath lookup."""
    tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
    doc = "/rsm:CrossIndustryInvoice/rsm:ExchangedDocument"
    settlement = "/rsm:CrossIndustryInvoice/rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement"  # noqa: E501
    issue = _lookup(tree, f"string({doc}/ram:IssueDateTime/udt:DateTimeString)")
    invoice = parse_einvoice(path.read_bytes())
    assert invoice is not None
    assert invoice.provenance.syntax == "CII"
    assert invoice.invoice_number == _lookup(tree, f"string({doc}/ram:ID)")
    assert invoice.issue_date == dt.datetime.strptime(issue, "%Y%m%d").date()
    assert invoice.currency == _lookup(tree, f"string({settlement}/ram:InvoiceCurrencyCode)")
    assert str(invoice.gross_total) == _lookup(
        tree,
        f"string({settlement}/ram:SpecifiedTradeSettlementHeaderMonetarySummation"
        "/ram:GrandTotalAmount)",
    )
    assert len(invoice.line_items) == int(
        float(_lookup(tree, "count(//ram:IncludedSupplyChainTradeLineItem)"))
    )


# ------------------------------------------------------------- synthetic documents


def _cii(*, type_code: str | None = "380", issue: str = "20240131", summation: str = "") -> bytes:
    type_element = f"<ram:TypeCode>{type_code}</ram:TypeCode>" if type_code else ""
    return f"""<rsm:CrossIndustryInvoice xmlns:rsm="{NS["rsm"]}" xmlns:ram="{NS["ram"]}"
      xmlns:udt="{NS["udt"]}">
  <rsm:ExchangedDocument><ram:ID>T-1</ram:ID>{type_element}
    <ram:IssueDateTime><udt:DateTimeString format="102">{issue}</udt:DateTimeString>
    </ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction><ram:ApplicableHeaderTradeSettlement>
    <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
    <ram:SpecifiedTradeSettlementHeaderMonetarySummation>{summation}
    </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
  </ram:ApplicableHeaderTradeSettlement></rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>""".encode()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("380", DocumentType.INVOICE),
        ("326", DocumentType.INVOICE),
        ("389", DocumentType.INVOICE),
        ("204", DocumentType.INVOICE),
        ("575", DocumentType.INVOICE),
        ("381", DocumentType.CREDIT_NOTE),
        ("261", DocumentType.CREDIT_NOTE),
        ("384", DocumentType.CORRECTED),
        (None, DocumentType.INVOICE),
    ],
)
def test_type_code_gives_document_type(code: str | None, expected: DocumentType) -> None:
    """BT-3 decides the document type and is kept as found."""
    invoice = parse_einvoice(_cii(type_code=code))
    assert invoice is not None
    assert (invoice.document_type, invoice.type_code) == (expected, code)
    assert not invoice.needs_review


def test_unknown_type_code_is_other_and_flagged() -> None:
    """A code outside EN 16931's list gives OTHER and a BT-3 review reason."""
    invoice = parse_einvoice(_cii(type_code="220"))
    assert invoice is not None
    assert invoice.document_type is DocumentType.OTHER
    assert _rules(invoice) == ["BT-3"]


@pytest.mark.parametrize(
    "amounts",
    [
        '<ram:TaxTotalAmount currencyID="USD">9.99</ram:TaxTotalAmount>'
        '<ram:TaxTotalAmount currencyID="EUR">19.00</ram:TaxTotalAmount>',
        '<ram:TaxTotalAmount currencyID="EUR">19.00</ram:TaxTotalAmount>'
        '<ram:TaxTotalAmount currencyID="USD">9.99</ram:TaxTotalAmount>',
    ],
    ids=["invoice-currency-second", "invoice-currency-first"],
)
def test_tax_total_is_the_one_in_the_invoice_currency(amounts: str) -> None:
    """BT-110 is the TaxTotalAmount in the invoice currency, wherever it appears."""
    invoice = parse_einvoice(_cii(summation=amounts))
    assert invoice is not None
    assert str(invoice.tax_total) == "19.00"


def test_tax_total_only_in_another_currency_is_not_bt110() -> None:
    """A lone TaxTotalAmount in the accounting currency (BT-111) leaves BT-110 empty."""
    summation = '<ram:TaxTotalAmount currencyID="USD">9.99</ram:TaxTotalAmount>'
    invoice = parse_einvoice(_cii(summation=summation))
    assert invoice is not None
    assert invoice.tax_total is None


@pytest.mark.parametrize("amount", ["12,50", "1e3", "NaN", "Infinity", "٣", "1.2.3", "9" * 41])
def test_unreadable_amount_is_bad_input(amount: str) -> None:
    """An amount that is not a plain decimal raises BadInputError rather than guessing."""
    summation = f"<ram:GrandTotalAmount>{amount}</ram:GrandTotalAmount>"
    with pytest.raises(BadInputError, match="GrandTotalAmount"):
        parse_einvoice(_cii(summation=summation))


def test_empty_amount_is_absent() -> None:
    """An empty amount element counts as missing, not as zero."""
    invoice = parse_einvoice(_cii(summation="<ram:GrandTotalAmount> </ram:GrandTotalAmount>"))
    assert invoice is not None
    assert invoice.gross_total is None


@pytest.mark.parametrize("issue", ["20241331", "2024-01", "yesterday"])
def test_unreadable_issue_date_is_flagged(issue: str) -> None:
    """An impossible or unknown-format issue date is left empty and flagged BT-2."""
    invoice = parse_einvoice(_cii(issue=issue))
    assert invoice is not None
    assert invoice.issue_date is None
    assert _rules(invoice) == ["BT-2"]


def test_empty_root_gives_an_empty_invoice() -> None:
    """A bare CrossIndustryInvoice root maps to an invoice with nothing filled in."""
    invoice = parse_einvoice(f'<rsm:CrossIndustryInvoice xmlns:rsm="{NS["rsm"]}"/>'.encode())
    assert invoice is not None
    assert invoice.invoice_number is None
    assert invoice.line_items == []
