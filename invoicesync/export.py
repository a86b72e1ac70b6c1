"""Stored invoices as JSON or CSV records."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from invoicesync.store.db import Database
from invoicesync.store.repository import invoice_rows

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
]


def invoice_records(database: Database) -> list[dict[str, Any]]:
    """One dict per invoice: the stored model plus its id and document."""
    with database.session() as session:
        rows = session.execute(invoice_rows()).all()
    return [
        {
            "id": row.id,
            **row.data,
            "document_sha256": document.sha256,
            "document_filename": document.filename,
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


def export_invoices(database: Database, fmt: str) -> str:
    """All invoices as ``json`` (full records, amounts as exact decimal strings) or ``csv``."""
    records = invoice_records(database)
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    return _csv(records)
