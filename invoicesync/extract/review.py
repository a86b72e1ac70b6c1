"""Arithmetic checks on an extracted invoice (EN 16931 business rules BR-CO-*).

Each failed rule calls ``invoice.flag`` with a reason prefixed by its rule id; the
invoice itself is never changed. A rule is skipped when an amount it needs is
missing. Totals EN 16931 defines as zero when absent (allowances, charges,
prepaid, rounding: BT-107, BT-108, BT-113, BT-114) count as zero.

Sums must match exactly: the standard computes them from already-rounded two-decimal
amounts. Only BR-CO-17 (tax = base × rate) involves rounding and allows 0.01 per entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Context, Decimal, localcontext

from invoicesync.models import Invoice

__all__ = ["TAX_TOLERANCE", "check_gross_total", "check_invoice"]

TAX_TOLERANCE = Decimal("0.01")
_ZERO = Decimal(0)
# Enough digits that no sum of parsed amounts (at most 40 characters each) is rounded.
_EXACT = Context(prec=100)


def check_invoice(invoice: Invoice) -> None:
    """Flag every arithmetic inconsistency of ``invoice`` (BR-CO-10 … BR-CO-17)."""
    with localcontext(_EXACT):
        _check_line_total(invoice)
        _check_allowance_charge_totals(invoice)
        _check_net_total(invoice)
        _check_tax_total(invoice)
        check_gross_total(invoice)
        _check_amount_due(invoice)
        _check_breakdown_tax(invoice)


def check_gross_total(invoice: Invoice) -> None:
    """BR-CO-15: gross = net + tax. Usable on any extractor's output."""
    net, tax, gross = invoice.net_total, invoice.tax_total, invoice.gross_total
    if net is None or tax is None or gross is None:
        return
    with localcontext(_EXACT):
        expected = net + tax
    if gross != expected:
        invoice.flag(
            f"BR-CO-15: gross total {gross} != net total {net} + tax total {tax} (= {expected})"
        )


def _check_line_total(invoice: Invoice) -> None:
    """BR-CO-10: line total = sum of line net amounts."""
    amounts = [line.net_amount for line in invoice.line_items if line.net_amount is not None]
    if invoice.line_total is None or not amounts:
        return
    if invoice.line_total != _sum(amounts):
        invoice.flag(
            f"BR-CO-10: line total {invoice.line_total} != sum of line net amounts {_sum(amounts)}"
        )


def _check_allowance_charge_totals(invoice: Invoice) -> None:
    """BR-CO-11 / BR-CO-12: allowance (charge) total = sum of document-level ones."""
    for rule, total, is_charge, label in (
        ("BR-CO-11", invoice.allowance_total, False, "allowance"),
        ("BR-CO-12", invoice.charge_total, True, "charge"),
    ):
        if total is None:
            continue
        amounts = [ac.amount for ac in invoice.allowances_charges if ac.is_charge is is_charge]
        if total != _sum(amounts):
            invoice.flag(f"{rule}: {label} total {total} != sum of {label}s {_sum(amounts)}")


def _check_net_total(invoice: Invoice) -> None:
    """BR-CO-13: net total = line total − allowance total + charge total."""
    lines, net = invoice.line_total, invoice.net_total
    if lines is None or net is None:
        return
    allowances = invoice.allowance_total or _ZERO
    charges = invoice.charge_total or _ZERO
    expected = lines - allowances + charges
    if net != expected:
        invoice.flag(
            f"BR-CO-13: net total {net} != line total {lines} - allowances {allowances} "
            f"+ charges {charges} (= {expected})"
        )


def _check_tax_total(invoice: Invoice) -> None:
    """BR-CO-14: tax total = sum of the breakdown's tax amounts."""
    amounts = [entry.tax_amount for entry in invoice.tax_breakdown]
    if invoice.tax_total is None or not amounts:
        return
    known = [amount for amount in amounts if amount is not None]
    if len(known) != len(amounts):
        return
    if invoice.tax_total != _sum(known):
        invoice.flag(
            f"BR-CO-14: tax total {invoice.tax_total} != sum of breakdown tax amounts {_sum(known)}"
        )


def _check_amount_due(invoice: Invoice) -> None:
    """BR-CO-16: amount due = gross total − prepaid amount + rounding amount."""
    gross, due = invoice.gross_total, invoice.amount_due
    if gross is None or due is None:
        return
    prepaid = invoice.prepaid_amount or _ZERO
    rounding = invoice.rounding_amount or _ZERO
    expected = gross - prepaid + rounding
    if due != expected:
        invoice.flag(
            f"BR-CO-16: amount due {due} != gross total {gross} - prepaid {prepaid} "
            f"+ rounding {rounding} (= {expected})"
        )


def _check_breakdown_tax(invoice: Invoice) -> None:
    """BR-CO-17: each breakdown's tax = taxable amount × rate / 100, within 0.01."""
    for entry in invoice.tax_breakdown:
        base, rate, tax = entry.taxable_amount, entry.rate, entry.tax_amount
        if base is None or rate is None or tax is None:
            continue
        expected = base * rate / 100
        if abs(tax - expected) > TAX_TOLERANCE:
            invoice.flag(
                f"BR-CO-17: tax amount {tax} of category {entry.category} at {rate}% "
                f"!= {base} x {rate}% (= {expected})"
            )


def _sum(amounts: Iterable[Decimal]) -> Decimal:
    return sum(amounts, _ZERO)
