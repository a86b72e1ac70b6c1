"""The whole pipeline on the bundled sample mailbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from invoicesync import load_settings, run
from invoicesync.export import export_invoices
from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.store.db import Database
from invoicesync.store.schema import Document, InvoiceRow, Message, MessageDocument
from tests.conftest import CORPUS, EXAMPLES, write_config

DOCUMENTS = EXAMPLES / "documents"
# The sample's e-invoice PDFs and the XML each one embeds (the corpus's ground truth).
KFZ = "ZF1_COMFORT_Kraftfahrversicherung_Bruttopreise"
EINVOICE_XML = {
    "XR_EN16931_Einfach.pdf": "XR_EN16931_Einfach.cii.xml",
    "ZF20_BASIC_Taxifahrt.pdf": "ZF20_BASIC_Taxifahrt.xml",
    "ZF1_COMFORT_Einfach.pdf": "ZF1_COMFORT_Einfach.xml",
    "FX_FNFE_Facture_FR_BASICWL.pdf": "FX_FNFE_Facture_FR_BASICWL.xml",
    f"{KFZ}.pdf": f"{KFZ}.xml",
    # bare XML attachments (mails 19, 20 and 22): the live invoice is the XML document itself
    "XR_EN16931_OEPNV.ubl.xml": "XR_EN16931_OEPNV.ubl.xml",
    "XR_EN16931_Rechnungskorrektur.cii.xml": "XR_EN16931_Rechnungskorrektur.cii.xml",
    "ZF20_EXTENDED_Warenrechnung.xml": "ZF20_EXTENDED_Warenrechnung.xml",
}
# PDFs that came beside the XML of their invoice: kept as that invoice's rendering.
RENDERINGS = {
    "XR_EN16931_Rechnungskorrektur.cii.xml": "XR_EN16931_Rechnungskorrektur_rendering.pdf",
    "ZF20_EXTENDED_Warenrechnung.xml": "ZF20_EXTENDED_Warenrechnung.pdf",
}
OFFLINE_PDFS = [
    "saeco.pdf",
    "AmazonWebServices.pdf",
    "QualityHosting.pdf",
    "NetpresseInvoice.pdf",
    "free_fiber.pdf",
]


def _sha(name: str) -> str:
    return hashlib.sha256((DOCUMENTS / name).read_bytes()).hexdigest()


def _snapshot(database: Database) -> dict[str, list[Any]]:
    """Every row that matters, without timestamps."""
    with database.session() as session:
        return {
            "messages": sorted(
                (m.key, m.status, m.attempts, m.last_error, m.subject)
                for m in session.scalars(select(Message))
            ),
            "documents": sorted(
                (d.sha256, d.status, d.attempts, d.path) for d in session.scalars(select(Document))
            ),
            "links": sorted(
                (link.message_id, link.document_id, link.origin)
                for link in session.scalars(select(MessageDocument))
            ),
            "invoices": sorted(
                (i.document_id, json.dumps(i.data, sort_keys=True))
                for i in session.scalars(select(InvoiceRow))
            ),
        }


def test_sample_twice_gives_identical_rows(db_url: str, tmp_path: Path) -> None:
    """Run the sample, run it again: exit 0 both times, the second run adds nothing."""
    config = write_config(
        tmp_path / "c.toml", db_url=db_url, storage=tmp_path / "docs", maildir=EXAMPLES / "mailbox"
    )
    settings = load_settings(config)
    first = run(settings)
    assert first.exit_code == 0
    [summary] = first.accounts
    assert (summary.seen, summary.invoices, summary.duplicates) == (24, 13, 1)
    database = Database(db_url)
    try:
        before = _snapshot(database)
        second = run(settings)
        assert second.exit_code == 0
        assert (second.accounts[0].new_messages, second.accounts[0].invoices) == (0, 0)
        assert _snapshot(database) == before
        records = json.loads(export_invoices(database, "json"))
    finally:
        database.dispose()

    by_sha = {r["document_sha256"]: r for r in records}
    assert len(by_sha) == len(records) == 13  # each invoice once, reminder and resend included
    expected = {_sha(name) for name in [*EINVOICE_XML, *OFFLINE_PDFS]}
    assert set(by_sha) == expected

    for pdf, xml in EINVOICE_XML.items():
        record = dict(by_sha[_sha(pdf)])
        renderings = [r["sha256"] for r in record["renderings"]]
        assert renderings == ([_sha(RENDERINGS[pdf])] if pdf in RENDERINGS else [])
        for key in (
            "id",
            "document_sha256",
            "document_filename",
            "duplicate_of",
            "duplicates",
            "renderings",
        ):
            record.pop(key)
        truth = parse_einvoice((CORPUS / "zugferd-corpus" / xml).read_bytes())
        assert truth is not None
        assert record == truth.model_dump(mode="json"), pdf

    # mail 21 re-sent mail 20's invoice as UBL: linked as its duplicate, not a live invoice
    assert len(by_sha[_sha("XR_EN16931_Rechnungskorrektur.cii.xml")]["duplicates"]) == 1

    for pdf in OFFLINE_PDFS:
        assert by_sha[_sha(pdf)]["provenance"]["extractor"] == "offline"


def test_sample_failures_are_recorded_with_reasons(tmp_path: Path) -> None:
    """Malformed mails and the broken PDF are failed items with reasons; the run still exits 0."""
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = write_config(
        tmp_path / "c.toml", db_url=db_url, storage=tmp_path / "docs", maildir=EXAMPLES / "mailbox"
    )
    result = run(load_settings(config))
    assert result.exit_code == 0
    assert result.accounts[0].failed == 4 and result.accounts[0].retry_later == 0
    database = Database(db_url)
    try:
        with database.session() as session:
            failed = {
                m.last_error
                for m in session.scalars(select(Message).where(Message.status == "failed_fatal"))
            }
            broken = session.scalars(
                select(Document).where(Document.filename == "invoice-broken.pdf")
            ).one()
            hostile = session.scalars(
                select(Document).where(Document.filename == "invoice.xml")
            ).one()
            skipped = session.scalars(
                select(Message).where(Message.subject == "Your invoice is ready")
            ).one()
    finally:
        database.dispose()
    assert any("base64 body cannot be decoded" in (e or "") for e in failed)
    assert any("not a mail" in (e or "") for e in failed)
    assert broken.status == "failed_fatal" and "broken PDF" in (broken.last_error or "")
    assert skipped.status == "no_invoice" and any("not a PDF" in n for n in skipped.notes)
    assert hostile.status == "failed_fatal" and (hostile.last_error or "").startswith("unsafe_xml:")
