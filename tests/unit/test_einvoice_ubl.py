"""OASIS UBL 2.1 Invoice / CreditNote maps to the same model as the equivalent CII."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.models import DocumentType, Invoice, LineItem, Party, TaxLine

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "zugferd-corpus"
UBL_FILES = sorted(CORPUS.glob("*.ubl.xml"))
PAIRS = [path for path in UBL_FILES if path.with_name(path.name.replace(".ubl.", ".cii.")).exists()]
NS = {
    "inv": "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2",
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
}
D = Decimal

# Fields in which a corpus UBL file genuinely differs from its CII twin because the
# corpus' UBL conversion lost or changed a value: file name → field names.
# None found: every XR_* pair maps to equal models (amounts compared as numbers,
# since the conversion rewrites "473.00" as "473").
KNOWN_CONVERSION_DIFFERENCES: dict[str, set[str]] = {}


def _parse(data: bytes) -> Invoice:
    invoice = parse_einvoice(data)
    assert invoice is not None
    return invoice


def test_every_xr_file_has_both_syntaxes() -> None:
    """The corpus holds the 14 XR_* UBL/CII pairs this comparison relies on."""
    assert len(PAIRS) == len(UBL_FILES) == 14


@pytest.mark.parametrize("ubl_path", PAIRS, ids=lambda path: path.name)
def test_ubl_equals_cii_field_by_field(ubl_path: Path) -> None:
    """UBL and CII of one invoice give equal models, provenance syntax/profile aside."""
    cii_path = ubl_path.with_name(ubl_path.name.replace(".ubl.", ".cii."))
    from_ubl = _parse(ubl_path.read_bytes())
    from_cii = _parse(cii_path.read_bytes())
    assert (from_ubl.provenance.syntax, from_cii.provenance.syntax) == ("UBL", "CII")
    differing = {
        field
        for field in Invoice.model_fields
        if field != "provenance" and getattr(from_ubl, field) != getattr(from_cii, field)
    }
    assert differing == KNOWN_CONVERSION_DIFFERENCES.get(ubl_path.name, set())
    assert from_ubl.provenance.extractor == from_cii.provenance.extractor == "einvoice"


def _lookup(tree: Any, expression: str) -> str:
    return str(tree.xpath(expression, namespaces=NS)).strip()


@pytest.mark.parametrize("path", UBL_FILES, ids=lambda path: path.name)
def test_core_fields_match_plain_xpath(path: Path) -> None:
    """Number, issue date, currency, grand total and line count equal a direct XPath lookup."""
    tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
    invoice = _parse(path.read_bytes())
    assert invoice.provenance.syntax == "UBL"
    assert invoice.invoice_number == _lookup(tree, "string(/inv:Invoice/cbc:ID)")
    assert invoice.issue_date == dt.date.fromisoformat(
        _lookup(tree, "string(/inv:Invoice/cbc:IssueDate)")
    )
    assert invoice.currency == _lookup(tree, "string(/inv:Invoice/cbc:DocumentCurrencyCode)")
    assert str(invoice.gross_total) == _lookup(
        tree, "string(/inv:Invoice/cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount)"
    )
    assert len(invoice.line_items) == int(float(_lookup(tree, "count(//cac:InvoiceLine)")))


CREDIT_NOTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CreditNote xmlns="urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
  xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
  xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>
  <cbc:ID>CN-7</cbc:ID>
  <cbc:IssueDate>2024-02-01</cbc:IssueDate>
  <cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cbc:TaxCurrencyCode>SEK</cbc:TaxCurrencyCode>
  <cbc:BuyerReference>LEITWEG-1</cbc:BuyerReference>
  <cac:AccountingSupplierParty><cac:Party>
    <cac:PartyName><cbc:Name>Trading Name</cbc:Name></cac:PartyName>
    <cac:PostalAddress>
      <cbc:StreetName>Main St 1</cbc:StreetName>
      <cbc:AdditionalStreetName>Floor 2</cbc:AdditionalStreetName>
      <cbc:CityName>Bruxelles</cbc:CityName><cbc:PostalZone>1000</cbc:PostalZone>
      <cac:Country><cbc:IdentificationCode>BE</cbc:IdentificationCode></cac:Country>
    </cac:PostalAddress>
    <cac:PartyTaxScheme><cbc:CompanyID>12/345</cbc:CompanyID>
      <cac:TaxScheme><cbc:ID>LOC</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
    <cac:PartyTaxScheme><cbc:CompanyID>BE0123456789</cbc:CompanyID>
      <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
    <cac:PartyLegalEntity><cbc:RegistrationName>Legal Name SA</cbc:RegistrationName>
    </cac:PartyLegalEntity>
  </cac:Party></cac:AccountingSupplierParty>
  <cac:AccountingCustomerParty><cac:Party>
    <cac:PartyName><cbc:Name>Only A Trading Name</cbc:Name></cac:PartyName>
  </cac:Party></cac:AccountingCustomerParty>
  <cac:PaymentMeans>
    <cbc:PaymentMeansCode>58</cbc:PaymentMeansCode>
    <cbc:PaymentDueDate>2024-03-01</cbc:PaymentDueDate>
    <cac:PayeeFinancialAccount><cbc:ID>BE68 5390 0754 7034</cbc:ID>
      <cac:FinancialInstitutionBranch><cbc:ID>GKCCBEBB</cbc:ID></cac:FinancialInstitutionBranch>
    </cac:PayeeFinancialAccount>
  </cac:PaymentMeans>
  <cac:TaxTotal><cbc:TaxAmount currencyID="SEK">220.00</cbc:TaxAmount></cac:TaxTotal>
  <cac:TaxTotal>
    <cbc:TaxAmount currencyID="EUR">21.00</cbc:TaxAmount>
    <cac:TaxSubtotal>
      <cbc:TaxableAmount currencyID="EUR">100.00</cbc:TaxableAmount>
      <cbc:TaxAmount currencyID="EUR">21.00</cbc:TaxAmount>
      <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
    </cac:TaxSubtotal>
  </cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:LineExtensionAmount currencyID="EUR">100.00</cbc:LineExtensionAmount>
    <cbc:TaxExclusiveAmount currencyID="EUR">100.00</cbc:TaxExclusiveAmount>
    <cbc:TaxInclusiveAmount currencyID="EUR">121.00</cbc:TaxInclusiveAmount>
    <cbc:PayableRoundingAmount currencyID="EUR">0.00</cbc:PayableRoundingAmount>
    <cbc:PayableAmount currencyID="EUR">121.00</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:CreditNoteLine>
    <cbc:ID>1</cbc:ID>
    <cbc:CreditedQuantity unitCode="KGM">12.5</cbc:CreditedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">100.00</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>Coffee beans</cbc:Name>
      <cac:ClassifiedTaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:ClassifiedTaxCategory>
    </cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="EUR">80.00</cbc:PriceAmount>
      <cbc:BaseQuantity unitCode="KGM">10</cbc:BaseQuantity></cac:Price>
  </cac:CreditNoteLine>
</CreditNote>
"""


def test_credit_note_document() -> None:
    """A UBL CreditNote: credit-note type, CreditNoteLine, PaymentDueDate, BT-110 in EUR."""
    invoice = _parse(CREDIT_NOTE)
    assert (invoice.document_type, invoice.type_code) == (DocumentType.CREDIT_NOTE, "381")
    assert (invoice.invoice_number, invoice.issue_date) == ("CN-7", dt.date(2024, 2, 1))
    assert invoice.due_date == dt.date(2024, 3, 1)
    assert invoice.buyer_reference == "LEITWEG-1"
    assert (invoice.iban, invoice.bic) == ("BE68539007547034", "GKCCBEBB")
    assert str(invoice.tax_total) == "21.00"
    assert invoice.tax_breakdown == [
        TaxLine(category="S", rate=D("21"), taxable_amount=D("100.00"), tax_amount=D("21.00"))
    ]
    assert str(invoice.rounding_amount) == "0.00"
    # Price stays per base quantity (80.00 per 10 kg), as EN 16931 defines BT-146.
    assert invoice.line_items == [
        LineItem(
            description="Coffee beans",
            quantity=D("12.5"),
            unit="KGM",
            unit_price=D("80.00"),
            net_amount=D("100.00"),
            tax_rate=D("21"),
            tax_category="S",
        )
    ]
    assert not invoice.needs_review


def test_party_legal_name_vat_id_and_tax_number() -> None:
    """Legal name beats trading name; VAT scheme gives the VAT id, other schemes the tax number."""
    invoice = _parse(CREDIT_NOTE)
    assert invoice.seller == Party(
        name="Legal Name SA",
        vat_id="BE0123456789",
        tax_number="12/345",
        street="Main St 1",
        additional_street="Floor 2",
        postal_code="1000",
        city="Bruxelles",
        country="BE",
    )
    assert invoice.buyer == Party(name="Only A Trading Name")


def test_credit_note_without_type_code_is_a_credit_note() -> None:
    """A CreditNote root without CreditNoteTypeCode is still a credit note."""
    data = CREDIT_NOTE.replace(b"<cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>", b"")
    invoice = _parse(data)
    assert (invoice.document_type, invoice.type_code) == (DocumentType.CREDIT_NOTE, None)
