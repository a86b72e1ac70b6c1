"""Arithmetic review rules (EN 16931 BR-CO-10 … BR-CO-17) flag broken invoices only."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.extract.review import check_gross_total, check_invoice
from invoicesync.models import AllowanceCharge, Invoice, LineItem, Provenance, TaxLine

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "zugferd-corpus"
D = Decimal


def _consistent() -> Invoice:
    """An invoice whose every total adds up (worked out by hand below)."""
    return Invoice(
        currency="EUR",
        line_items=[
            LineItem(net_amount=D("198.00"), tax_rate=D("19"), tax_category="S"),
            LineItem(net_amount=D("275.00"), tax_rate=D("7"), tax_category="S"),
        ],
        allowances_charges=[
            AllowanceCharge(is_charge=False, amount=D("10.00"), tax_category="S", tax_rate=D("19")),
            AllowanceCharge(is_charge=True, amount=D("5.00"), tax_category="S", tax_rate=D("7")),
        ],
        line_total=D("473.00"),  # 198.00 + 275.00
        allowance_total=D("10.00"),
        charge_total=D("5.00"),
        net_total=D("468.00"),  # 473.00 - 10.00 + 5.00
        tax_breakdown=[
            # 198.00 - 10.00 = 188.00 at 19 % = 35.72; 275.00 + 5.00 = 280.00 at 7 % = 19.60
            TaxLine(category="S", rate=D("19"), taxable_amount=D("188.00"), tax_amount=D("35.72")),
            TaxLine(category="S", rate=D("7"), taxable_amount=D("280.00"), tax_amount=D("19.60")),
        ],
        tax_total=D("55.32"),
        gross_total=D("523.32"),  # 468.00 + 55.32
        prepaid_amount=D("100.00"),
        rounding_amount=D("0.01"),
        amount_due=D("423.33"),  # 523.32 - 100.00 + 0.01
        provenance=Provenance(extractor="einvoice"),
    )


def _rules(invoice: Invoice) -> list[str]:
    return [reason.split(":")[0] for reason in invoice.review_reasons]


def _checked(invoice: Invoice) -> Invoice:
    check_invoice(invoice)
    return invoice


def test_consistent_invoice_is_not_flagged() -> None:
    """An invoice whose totals all add up gets no review reason."""
    invoice = _checked(_consistent())
    assert (invoice.needs_review, invoice.review_reasons) == (False, [])


def _set_line(invoice: Invoice) -> None:
    invoice.line_items[0].net_amount = D("199.00")


def _set_allowance(invoice: Invoice) -> None:
    invoice.allowances_charges[0].amount = D("11.00")


def _set_charge(invoice: Invoice) -> None:
    invoice.allowances_charges[1].amount = D("6.00")


def _set_net(invoice: Invoice) -> None:
    # Net off by 2.00; gross and amount due follow it, so only BR-CO-13 breaks.
    invoice.net_total = D("470.00")
    invoice.gross_total, invoice.amount_due = D("525.32"), D("425.33")


def _set_tax_total(invoice: Invoice) -> None:
    invoice.tax_total = D("55.33")
    invoice.gross_total, invoice.amount_due = D("523.33"), D("423.34")


def _set_gross(invoice: Invoice) -> None:
    invoice.gross_total, invoice.amount_due = D("523.42"), D("423.43")


def _set_due(invoice: Invoice) -> None:
    invoice.amount_due = D("423.32")


def _set_breakdown_tax(invoice: Invoice) -> None:
    # 35.74 is 0.02 off 188.00 × 19 %; the totals above it are kept consistent.
    invoice.tax_breakdown[0].tax_amount = D("35.74")
    invoice.tax_total = D("55.34")
    invoice.gross_total, invoice.amount_due = D("523.34"), D("423.35")


@pytest.mark.parametrize(
    ("rule", "breaks"),
    [
        ("BR-CO-10", _set_line),
        ("BR-CO-11", _set_allowance),
        ("BR-CO-12", _set_charge),
        ("BR-CO-13", _set_net),
        ("BR-CO-14", _set_tax_total),
        ("BR-CO-15", _set_gross),
        ("BR-CO-16", _set_due),
        ("BR-CO-17", _set_breakdown_tax),
    ],
)
def test_each_rule_flags_its_own_inconsistency(
    rule: str, breaks: Callable[[Invoice], None]
) -> None:
    """Breaking one relation flags exactly that rule, with the rule id as prefix."""
    invoice = _consistent()
    breaks(invoice)
    check_invoice(invoice)
    assert invoice.needs_review
    assert _rules(invoice) == [rule]


def test_flagging_does_not_change_amounts() -> None:
    """Review only adds reasons; the extracted amounts stay as they were."""
    invoice = _consistent()
    _set_due(invoice)
    before = invoice.model_dump(exclude={"needs_review", "review_reasons"})
    check_invoice(invoice)
    check_invoice(invoice)
    assert invoice.model_dump(exclude={"needs_review", "review_reasons"}) == before
    assert len(invoice.review_reasons) == 1


@pytest.mark.parametrize(("tax", "flagged"), [("35.73", False), ("35.71", False), ("35.74", True)])
def test_breakdown_tax_tolerance_is_one_cent(tax: str, flagged: bool) -> None:
    """BR-CO-17 accepts 0.01 of rounding per entry and no more."""
    invoice = _consistent()
    invoice.tax_breakdown[0].tax_amount = D(tax)
    check_invoice(invoice)
    assert ("BR-CO-17" in _rules(invoice)) is flagged


def test_negative_amounts_add_up() -> None:
    """Corrections with negative amounts are checked with their signs."""
    invoice = Invoice(
        line_items=[LineItem(net_amount=D("-5.00")), LineItem(net_amount=D("-2.90"))],
        line_total=D("-7.90"),
        allowance_total=D("-0.23"),
        allowances_charges=[AllowanceCharge(is_charge=False, amount=D("-0.23"))],
        net_total=D("-7.67"),
        tax_total=D("-1.12"),
        gross_total=D("-8.79"),
        amount_due=D("-8.79"),
        provenance=Provenance(extractor="einvoice"),
    )
    assert _checked(invoice).review_reasons == []


def test_rules_are_skipped_without_their_inputs() -> None:
    """An invoice with no amounts at all, or lines but no totals, is not flagged."""
    empty = Invoice(provenance=Provenance(extractor="offline"))
    assert _checked(empty).review_reasons == []
    partial = Invoice(
        line_items=[LineItem(net_amount=D("1.00"))],
        tax_breakdown=[TaxLine(taxable_amount=D("100"), tax_amount=D("99"))],  # no rate
        net_total=D("1.00"),
        gross_total=D("5.00"),  # no tax total: BR-CO-15 cannot be judged
        provenance=Provenance(extractor="offline"),
    )
    assert _checked(partial).review_reasons == []


def test_absent_prepaid_and_rounding_count_as_zero() -> None:
    """BR-CO-16 without BT-113/BT-114: amount due must equal the gross total."""
    provenance = Provenance(extractor="offline")
    ok = Invoice(gross_total=D("10.00"), amount_due=D("10.00"), provenance=provenance)
    off = Invoice(gross_total=D("10.00"), amount_due=D("9.00"), provenance=provenance)
    assert _rules(_checked(ok)) == []
    assert _rules(_checked(off)) == ["BR-CO-16"]


def test_gross_check_alone_for_other_extractors() -> None:
    """check_gross_total flags only BR-CO-15, e.g. for a text-extracted invoice."""
    invoice = Invoice(
        line_total=D("1.00"),  # inconsistent with net, but not this check's business
        net_total=D("100.00"),
        tax_total=D("19.00"),
        gross_total=D("120.00"),
        provenance=Provenance(extractor="offline"),
    )
    check_gross_total(invoice)
    assert _rules(invoice) == ["BR-CO-15"]
    assert "120.00" in invoice.review_reasons[0] and "119.00" in invoice.review_reasons[0]


# ------------------------------------------------------------------- the corpus

# Rules the real corpus files break, each checked by hand against the XML:
FLAGGED_IN_CORPUS = {
    # MINIMUM profile has no BT-113; due 470.15 = 671.15 - 201.00 prepaid (seen in BASICWL).
    "FX_FNFE_Facture_FR_MINIMUM.xml": ["BR-CO-16"],
    # LineTotalAmount 184.87, but the lines say 67.23 + 117.65 = 184.88.
    "ZF1_COMFORT_Kraftfahrversicherung_Bruttopreise.xml": ["BR-CO-10"],
    # Allowances written as +0.10/+0.06/+0.05/+0.02 but AllowanceTotalAmount is -0.23;
    # DuePayableAmount 0.00 although GrandTotalAmount is -8.79 and nothing was prepaid.
    "ZF1_COMFORT_Rechnungskorrektur.xml": ["BR-CO-11", "BR-CO-16"],
}


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.xml")), ids=lambda path: path.name)
def test_corpus_invoices_flag_only_their_real_inconsistencies(path: Path) -> None:
    """Each corpus XML is flagged by exactly the rules it really breaks."""
    invoice = parse_einvoice(path.read_bytes())
    assert invoice is not None
    assert _rules(invoice) == FLAGGED_IN_CORPUS.get(path.name, [])
    assert invoice.needs_review is (path.name in FLAGGED_IN_CORPUS)
