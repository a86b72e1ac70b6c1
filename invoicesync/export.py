"""Stored invoices as JSON or CSV records."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from invoicesync.store.db import Database
from invoicesync.store.queries import invoice_links, invoice_rows

__all__ = ["CSV_COLUMNS", "export_invoices", "invoice_records"]

CSV_COLUMNS = [
    "id",
    "document_type",
    "invoice_number",
    "issue_date",
    "due_date",
    "currency",
    "seller_name",
    "seller_vat_id",
    "buyer_name",
    "net_total",
    "tax_total",
    "gross_total",
    "amount_due",
    "iban",
    "purchase_order",
    "extractor",
    "einvoice_profile",
    "needs_review",
    "review_reasons",
    "document_sha256",
    "document_filename",
    "duplicate_of",
]


def invoice_records(
    database: Database, *, include_duplicates: bool = False
) -> list[dict[str, Any]]:
    """One dict per live invoice: the stored model, its id, document, duplicates and renderings.

    Duplicates (the same invoice arriving again, in any syntax) are left out unless
    asked for, so that summing an export never counts an invoice twice; each live
    record lists the ids of its duplicates, and a duplicate names its live invoice
    in ``duplicate_of``.
    """
    with database.session() as session:
        rows = session.execute(invoice_rows(include_duplicates=include_duplicates)).all()
        duplicates, renderings = invoice_links(session)
    return [
        {
            "id": row.id,
            **row.data,
            "duplicate_of": row.duplicate_of,
            "duplicates": duplicates.get(row.id, []),
            "document_sha256": document.sha256,
            "document_filename": document.filename,
            "renderings": [
                {"sha256": r.sha256, "filename": r.filename} for r in renderings.get(row.id, [])
            ],
        }
        for row, document in rows
    ]


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **{key: record.get(key) for key in CSV_COLUMNS},
        "seller_name": record["seller"].get("name"),
        "seller_vat_id": record["seller"].get("vat_id"),
        "buyer_name": record["buyer"].get("name"),
        "extractor": record["provenance"]["extractor"],
        "einvoice_profile": record["provenance"].get("einvoice_profile"),
        "review_reasons": "; ".join(record.get("review_reasons") or []),
    }


def _csv(records: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(_flat(record))
    return buffer.getvalue()


def export_invoices(database: Database, fmt: str, *, include_duplicates: bool = False) -> str:
    """All invoices as ``json`` (full records, amounts as exact decimal strings) or ``csv``."""
    records = invoice_records(database, include_duplicates=include_duplicates)
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    return _csv(records)
