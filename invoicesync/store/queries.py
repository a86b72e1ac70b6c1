"""Read-only queries for the command line: export, status, summaries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from invoicesync.models import DocumentType
from invoicesync.store.schema import Account, Document, InvoiceRow, Message, Run, Status

__all__ = [
    "OpenItem",
    "account_overview",
    "accounts_needing_reconnect",
    "invoice_links",
    "invoice_rows",
    "open_items",
    "recent_runs",
]


def invoice_rows(*, include_duplicates: bool = False) -> Select[InvoiceRow, Document]:
    """Every live invoice (and, if asked, every duplicate copy) with its document, oldest first."""
    query = (
        select(InvoiceRow, Document)
        .join(Document, Document.id == InvoiceRow.document_id)
        .where(InvoiceRow.document_type != DocumentType.OTHER.value)
        .order_by(InvoiceRow.id)
    )
    if not include_duplicates:
        query = query.where(InvoiceRow.duplicate_of.is_(None))
    return query


def invoice_links(session: Session) -> tuple[dict[int, list[int]], dict[int, list[Document]]]:
    """For each live invoice: the ids of its duplicates, and its rendering documents."""
    duplicates: dict[int, list[int]] = {}
    for copy, live in session.execute(
        select(InvoiceRow.id, InvoiceRow.duplicate_of)
        .where(InvoiceRow.duplicate_of.is_not(None))
        .order_by(InvoiceRow.id)
    ):
        if live is not None:
            duplicates.setdefault(live, []).append(copy)
    renderings: dict[int, list[Document]] = {}
    for document in session.scalars(
        select(Document).where(Document.rendering_of.is_not(None)).order_by(Document.id)
    ):
        assert document.rendering_of is not None
        renderings.setdefault(document.rendering_of, []).append(document)
    return duplicates, renderings


@dataclass(frozen=True, slots=True)
class OpenItem:
    """A message or document that is pending or failed, for ``status``."""

    kind: str  # message | document
    id: int
    account: str | None
    label: str
    status: str
    attempts: int
    error: str | None
    #: When a run that is still going started work on it: the item is in flight.
    in_flight_since: dt.datetime | None = None


def _running_owners(session: Session) -> set[str]:
    """Run ids (as text) of the runs still going."""
    return {str(id_) for id_ in session.scalars(select(Run.id).where(Run.status == "running"))}


def _in_flight(
    status: str, started_at: dt.datetime | None, owner: str | None, running: set[str]
) -> dt.datetime | None:
    if status in Status.DONE or started_at is None or owner is None:
        return None
    return started_at if owner.rpartition(":")[2] in running else None


def open_items(session: Session, limit: int = 50) -> list[OpenItem]:
    """Items not done, failures first, the ones in flight last."""
    running = _running_owners(session)
    messages = session.execute(
        select(Message, Account.name)
        .join(Account, Account.id == Message.account_id)
        .where(Message.status.not_in(Status.DONE))
        .order_by(Message.id)
        .limit(limit)
    )
    documents = session.scalars(
        select(Document)
        .where(Document.status.not_in(Status.DONE))
        .order_by(Document.id)
        .limit(limit)
    )
    items = [
        OpenItem(
            *("message", m.id, name, m.subject or m.key[:16], m.status, m.attempts, m.last_error),
            _in_flight(m.status, m.started_at, m.started_by, running),
        )
        for m, name in messages
    ] + [
        OpenItem(
            *("document", d.id, None, d.filename or d.sha256[:16], d.status),
            *(d.attempts, d.last_error),
            _in_flight(d.status, d.started_at, d.started_by, running),
        )
        for d in documents
    ]
    return sorted(
        items,
        key=lambda item: (item.status == Status.PENDING, item.in_flight_since is not None),
    )


def account_overview(session: Session) -> list[tuple[str, dict[str, int]]]:
    """Each account with its message counts by status."""
    rows = session.execute(
        select(Account.name, Message.status, func.count(Message.id))
        .join(Message, Message.account_id == Account.id, isouter=True)
        .group_by(Account.name, Message.status)
        .order_by(Account.name)
    )
    overview: dict[str, dict[str, int]] = {}
    for name, status, count in rows:
        counts = overview.setdefault(name, {})
        if status is not None:
            counts[status] = count
    return list(overview.items())


def accounts_needing_reconnect(session: Session) -> list[tuple[str, str]]:
    rows = session.execute(
        select(Account.name, Account.needs_reconnect).where(Account.needs_reconnect.is_not(None))
    )
    return [(name, reason or "") for name, reason in rows]


def recent_runs(session: Session, limit: int = 5) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id.desc()).limit(limit)))
