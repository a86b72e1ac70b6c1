"""One function per stage, models in and models out; the runner adds transactions around them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from invoicesync.extract.base import Extractor
from invoicesync.fetch.links import rank_links
from invoicesync.mail.mime import parse_mail
from invoicesync.mail.source import MailSource
from invoicesync.models import Attachment, DocumentType, Invoice, MailRef, ParsedMail
from invoicesync.pipeline.dedupe import business_key, is_rendering_of
from invoicesync.resilience.timeouts import Deadline
from invoicesync.store import repository as repo
from invoicesync.store.files import DocumentFiles
from invoicesync.store.repository import StoredDocument
from invoicesync.store.schema import Document

if TYPE_CHECKING:
    from invoicesync.fetch.download import LinkResult

__all__ = [
    "RENDERING",
    "extract_document",
    "fetch_and_parse",
    "follow_links",
    "store_documents",
    "store_invoice",
]

#: Outcome of ``store_invoice`` for a PDF that renders an invoice read from XML.
RENDERING = "rendering"

log = logging.getLogger(__name__)


def fetch_and_parse(source: MailSource, ref: MailRef) -> ParsedMail:
    """Mail stage: the message's bytes, walked for documents and links."""
    return parse_mail(source.fetch(ref))


def store_documents(
    parsed: ParsedMail, files: DocumentFiles, *, max_bytes: int
) -> list[StoredDocument]:
    """Write each attachment to disk once (by sha256); oversized ones become notes."""
    stored: list[StoredDocument] = []
    for attachment in parsed.attachments:
        name = attachment.filename or f"unnamed .{attachment.kind}"
        if len(attachment.data) > max_bytes:
            parsed.skipped.append(
                f"{name}: {len(attachment.data)} bytes, over the {max_bytes} byte limit"
            )
            continue
        digest, path = files.put(attachment.data, attachment.kind)
        stored.append(
            StoredDocument(
                sha256=digest,
                kind=attachment.kind,
                size=len(attachment.data),
                path=path,
                filename=attachment.filename,
                origin="link"
                if attachment.source_url
                else ("nested" if attachment.nested else "attachment"),
            )
        )
    return stored


def follow_links(parsed: ParsedMail, download: Callable[[str], LinkResult], *, limit: int) -> None:
    """Links stage: a mail without any attached document gets its best links downloaded.

    Each link tried is noted on the mail with its outcome (URL redacted); a PDF
    becomes an attachment like any other. A transient failure propagates, so the
    mail stays pending and the next run tries again.
    """
    if limit <= 0 or not parsed.links or parsed.attachments:
        return
    for url in rank_links(parsed.links, limit=limit):
        result = download(url)
        parsed.skipped.append(f"link {result.url}: {result.outcome} ({result.reason})")
        if result.outcome == "ok" and result.data is not None:
            name = urlsplit(result.url).path.rsplit("/", 1)[-1] or None
            parsed.attachments.append(
                Attachment(
                    filename=name,
                    content_type="application/pdf",
                    kind="pdf",
                    data=result.data,
                    source_url=result.url,
                )
            )


def extract_document(
    extractor: Extractor, data: bytes, filename: str | None, *, deadline: Deadline | None = None
) -> Invoice | None:
    """Extract stage: an invoice, or None when the document is not one."""
    invoice = extractor.extract(data, filename=filename, deadline=deadline)
    if invoice is None or invoice.document_type is DocumentType.OTHER:
        return None
    return invoice


def store_invoice(session: Session, document: Document, invoice: Invoice) -> str:
    """Store stage: one invoice however many copies (see ``pipeline.dedupe``).

    A PDF that arrived with the XML of the same invoice is kept as that invoice's
    rendering; otherwise the invoice is stored live or as a duplicate of a live one.
    """
    if document.kind == "pdf":
        for invoice_id, data in repo.sibling_einvoices(session, document.id):
            if is_rendering_of(invoice, Invoice.model_validate(data)):
                repo.record_rendering(session, document.id, invoice_id)
                return RENDERING
    return repo.record_invoice(session, document.id, invoice, business_key(invoice))
