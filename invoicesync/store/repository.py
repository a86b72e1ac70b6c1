"""Idempotent writes and the queries the pipeline and the CLI need.

Every insert that could meet a row written by an earlier or a concurrent run is
an ``INSERT … ON CONFLICT`` on the table's unique key: meeting the same key is
success, not an error. An item's status only changes inside the transaction that
stores its result, so nothing is marked done before it is committed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from invoicesync.models import Invoice, MailRef, ParsedMail
from invoicesync.store.attempts import quarantine_reason
from invoicesync.store.db import dialect_insert
from invoicesync.store.schema import (
    Account,
    Document,
    InvoiceRow,
    Message,
    MessageDocument,
    Run,
    Status,
)

__all__ = [
    "InvoiceOutcome",
    "NewMessage",
    "StoredDocument",
    "account_id",
    "finish_run",
    "known_message_keys",
    "mark_crashed_runs",
    "record_document_outcome",
    "record_invoice",
    "record_message",
    "record_message_failure",
    "record_messages",
    "record_rendering",
    "reset_items",
    "set_needs_reconnect",
    "sibling_einvoices",
    "start_run",
]


# Rows per multi-row INSERT: ~10 columns each, far below PostgreSQL's parameter limit.
_ROWS_PER_STATEMENT = 1000


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document already written to disk, to be recorded with its message."""

    sha256: str
    kind: str
    size: int
    path: str
    filename: str | None
    origin: str  # attachment | nested | link


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def account_id(session: Session, name: str) -> int:
    session.execute(
        dialect_insert(session, Account)
        .values(name=name, created_at=_now())
        .on_conflict_do_nothing()
    )
    return session.scalars(select(Account.id).where(Account.name == name)).one()


def set_needs_reconnect(session: Session, *, account: int, reason: str | None) -> None:
    """Remember (or clear, with None) that a person must reconnect this account."""
    session.execute(update(Account).where(Account.id == account).values(needs_reconnect=reason))


def known_message_keys(
    session: Session, account: int, folder: str, *, keys: Sequence[str]
) -> set[str]:
    """Which of ``keys`` a normal run must not work again (done, or parked as fatal)."""
    rows = session.scalars(
        select(Message.key).where(
            Message.account_id == account,
            Message.folder == folder,
            Message.key.in_(list(keys)),
            Message.status.not_in(Status.WORKABLE),
        )
    )
    return set(rows)


def _message_values(account: int, ref: MailRef) -> dict[str, Any]:
    return {
        "account_id": account,
        "folder": ref.folder,
        "key": ref.key,
        "uidvalidity": ref.uidvalidity,
        "uid": ref.uid,
    }


def record_message(
    session: Session,
    account: int,
    ref: MailRef,
    parsed: ParsedMail,
    documents: Sequence[StoredDocument],
    *,
    status: str | None = None,
    post_action: bool = False,
) -> int:
    """Store a parsed message, its documents and the links between them; returns the message id.

    ``post_action`` marks the mail as awaiting the account's after_ingest action,
    which runs only once its documents are extracted too.
    """
    [message] = record_messages(
        session, account, [NewMessage(ref, parsed, documents, status)], post_action=post_action
    )
    return message


@dataclass(frozen=True)
class NewMessage:
    """One message for ``record_messages``; ``status`` defaults to ok / no_invoice."""

    ref: MailRef
    parsed: ParsedMail
    documents: Sequence[StoredDocument]
    status: str | None = None


def record_messages(
    session: Session, account: int, messages: Sequence[NewMessage], *, post_action: bool = False
) -> list[int]:
    """``record_message`` for several messages of one account, in a few statements.

    A statement per table instead of a few per message: building and compiling
    them was most of a first ingest's database time. Returns the message ids, in order.
    """
    if not messages:
        return []
    now = _now()
    rows: dict[tuple[str, str], dict[str, Any]] = {}  # by (folder, key): one row each
    for item in messages:
        parsed = item.parsed
        rows[(item.ref.folder, item.ref.key)] = {
            **_message_values(account, item.ref),
            "message_id": parsed.message_id,
            "subject": parsed.subject,
            "sender": parsed.sender,
            "sent_at": parsed.date,
            "status": item.status or (Status.OK if item.documents else Status.NO_INVOICE),
            "last_error": None,
            "links": list(parsed.links),
            "notes": list(parsed.skipped),
            "post_action": "pending" if post_action else None,
            "updated_at": now,
            "attempts": 0,
            "first_seen_at": now,
        }
    insert = dialect_insert(session, Message).values(list(rows.values()))
    header = (
        *("message_id", "subject", "sender", "sent_at", "status", "last_error", "links"),
        *("notes", "post_action", "updated_at"),
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["account_id", "folder", "key"],
        set_={name: insert.excluded[name] for name in header},
    ).returning(Message.folder, Message.key, Message.id)
    ids = {(folder, key): id_ for folder, key, id_ in session.execute(upsert)}

    documents: dict[str, StoredDocument] = {}  # by sha256; the first mail's name, as before
    for item in messages:
        for document in item.documents:
            documents.setdefault(document.sha256, document)
    if documents:
        document_rows = [
            {
                "sha256": d.sha256,
                "kind": d.kind,
                "size": d.size,
                "filename": d.filename,
                "path": d.path,
                "status": Status.PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for d in documents.values()
        ]
        document_ids: dict[str, int] = {}
        for chunk in _chunks(document_rows):
            session.execute(
                dialect_insert(session, Document)
                .values(chunk)
                .on_conflict_do_nothing(index_elements=["sha256"])
            )
            hashes = [row["sha256"] for row in chunk]
            document_ids.update(
                session.execute(
                    select(Document.sha256, Document.id).where(Document.sha256.in_(hashes))
                ).all()
            )
        links: dict[tuple[int, int], dict[str, Any]] = {}
        for item in messages:
            message = ids[(item.ref.folder, item.ref.key)]
            for d in item.documents:
                links.setdefault(
                    (message, document_ids[d.sha256]),
                    {
                        "message_id": message,
                        "document_id": document_ids[d.sha256],
                        "filename": d.filename,
                        "origin": d.origin,
                    },
                )
        for chunk in _chunks(list(links.values())):
            session.execute(
                dialect_insert(session, MessageDocument).values(chunk).on_conflict_do_nothing()
            )
    return [ids[(item.ref.folder, item.ref.key)] for item in messages]


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Rows in chunks that keep a statement under PostgreSQL's 65,535 bind parameters."""
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        yield rows[start : start + _ROWS_PER_STATEMENT]


def record_message_failure(
    session: Session,
    account: int,
    ref: MailRef,
    *,
    status: str,
    error: str,
    max_attempts: int | None = None,
    attempt: bool = True,
    unfinished: bool = False,
) -> str:
    """Record a failed message, counting the attempt; returns the status it ends up with.

    A transient failure stays workable for the next run until ``max_attempts``
    attempts have failed; then it is parked as failed_fatal with the reason.
    ``attempt=False``: the attempt was counted when it started (``store.attempts``),
    or the message was not tried (an endpoint's circuit was open) and is recorded so
    that it is not forgotten once the folder position passes it. ``unfinished``: the
    attempt was cut off (a timeout, a dead worker): parked as quarantined.
    """
    now = _now()
    statement = dialect_insert(session, Message).values(
        **_message_values(account, ref),
        status=status,
        attempts=int(attempt),
        last_error=error,
        links=[],
        notes=[],
        first_seen_at=now,
        updated_at=now,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["account_id", "folder", "key"],
            set_={
                "status": status,
                "attempts": Message.attempts + int(attempt),
                "last_error": error,
                "updated_at": now,
            },
            # A concurrent run may have stored this message meanwhile: never undo that.
            where=Message.status.not_in(Status.DONE),
        )
    )
    where = (Message.account_id == account, Message.folder == ref.folder, Message.key == ref.key)
    return _park_if_exhausted(
        session, Message, where, status, error, max_attempts, unfinished=unfinished
    )


def _park_if_exhausted(
    session: Session,
    model: type[Message] | type[Document],
    where: tuple[Any, ...],
    status: str,
    error: str,
    max_attempts: int | None,
    *,
    unfinished: bool = False,
) -> str:
    current, attempts = session.execute(select(model.status, model.attempts).where(*where)).one()
    if current == Status.FAILED_TRANSIENT and max_attempts and attempts >= max_attempts:
        if unfinished:
            parked = quarantine_reason(attempts, error)
        else:
            parked = f"gave up after {attempts} attempts: {error}"
        session.execute(
            update(model).where(*where).values(status=Status.FAILED_FATAL, last_error=parked)
        )
        return Status.FAILED_FATAL
    return str(current)


class InvoiceOutcome:
    NEW = "new"  # a new live invoice
    DUPLICATE = "duplicate"  # a second invoice with a live one's key: one is now the other's copy
    EXISTS = "exists"  # this document already had its invoice (an overlapping run)


def _insert_invoice(
    session: Session, document: int, invoice: Invoice, key: str | None, duplicate_of: int | None
) -> int | None:
    """INSERT the row; None when a unique key (document, live business key) already holds."""
    inserted = session.execute(
        dialect_insert(session, InvoiceRow)
        .values(
            document_id=document,
            extractor=invoice.provenance.extractor,
            document_type=invoice.document_type.value,
            invoice_number=invoice.invoice_number,
            issue_date=invoice.issue_date,
            currency=invoice.currency,
            seller_name=invoice.seller.name,
            seller_vat_id=invoice.seller.vat_id,
            gross_total=invoice.gross_total,
            needs_review=invoice.needs_review,
            review_reasons=list(invoice.review_reasons),
            data=invoice.model_dump(mode="json"),
            business_key=key,
            duplicate_of=duplicate_of,
            prompt_tokens=invoice.provenance.prompt_tokens,
            completion_tokens=invoice.provenance.completion_tokens,
            created_at=_now(),
        )
        .on_conflict_do_nothing()
        .returning(InvoiceRow.id)
    ).first()
    return None if inserted is None else int(inserted[0])


def _ranks_before(
    invoice: Invoice, document: int, live: dict[str, Any], live_document: int
) -> bool:
    """Whether a new invoice should be live instead of the current one with its key.

    Data read from e-invoice XML wins over data read from a PDF's text; between
    equals, the document first known to the database (lowest id) wins.
    """
    mine = (not invoice.provenance.syntax, document)
    theirs = (not live["provenance"].get("syntax"), live_document)
    return mine < theirs


def record_invoice(session: Session, document: int, invoice: Invoice, key: str | None) -> str:
    """Store a document's invoice, once per document and once live per business key.

    A second invoice with the key of a live one is stored as its duplicate
    (``duplicate_of``), except when it ranks first (`_ranks_before`): then it
    becomes the live one and the earlier one (and its duplicates) point at it.
    The ranking, not the order of arrival, decides, so parallel workers and runs
    cut off at any moment end with the same live invoice. Marks the document done.
    """
    if session.scalar(select(InvoiceRow.id).where(InvoiceRow.document_id == document)):
        record_document_outcome(session, document, status=Status.OK)
        return InvoiceOutcome.EXISTS
    outcome = InvoiceOutcome.NEW
    if _insert_invoice(session, document, invoice, key, None) is None:
        live = session.execute(
            select(InvoiceRow.id, InvoiceRow.data, InvoiceRow.document_id).where(
                InvoiceRow.business_key == key, InvoiceRow.duplicate_of.is_(None)
            )
        ).first()
        if live is None:  # the conflict was on the document: another run stored it
            record_document_outcome(session, document, status=Status.OK)
            return InvoiceOutcome.EXISTS
        live_id, live_data = int(live[0]), live[1]
        copy = _insert_invoice(session, document, invoice, key, live_id)
        if copy is None:
            record_document_outcome(session, document, status=Status.OK)
            return InvoiceOutcome.EXISTS
        outcome = InvoiceOutcome.DUPLICATE
        if _ranks_before(invoice, document, live_data, int(live[2])):
            # Promote the new one: the old live invoice and its copies now point here.
            session.execute(
                update(InvoiceRow)
                .where((InvoiceRow.id == live_id) | (InvoiceRow.duplicate_of == live_id))
                .where(InvoiceRow.id != copy)
                .values(duplicate_of=copy)
            )
            session.execute(
                update(InvoiceRow).where(InvoiceRow.id == copy).values(duplicate_of=None)
            )
            session.execute(
                update(Document).where(Document.rendering_of == live_id).values(rendering_of=copy)
            )
    record_document_outcome(session, document, status=Status.OK)
    return outcome


def sibling_einvoices(session: Session, document: int) -> list[tuple[int, dict[str, Any]]]:
    """Invoices read from XML documents that came in the same mail as ``document``.

    Returns (live invoice id, that XML's invoice data) pairs.
    """
    mine = select(MessageDocument.message_id).where(MessageDocument.document_id == document)
    siblings = (
        select(MessageDocument.document_id)
        .join(Document, Document.id == MessageDocument.document_id)
        .where(MessageDocument.message_id.in_(mine), Document.kind == "xml")
    )
    rows = session.execute(
        select(InvoiceRow.id, InvoiceRow.duplicate_of, InvoiceRow.data)
        .where(InvoiceRow.document_id.in_(siblings))
        .order_by(InvoiceRow.id)
    )
    # A sibling that is itself a copy renders (and links to) the live invoice it repeats.
    return [(int(duplicate_of or id_), data) for id_, duplicate_of, data in rows]


def record_rendering(session: Session, document: int, invoice: int) -> None:
    """The PDF ``document`` is the human-readable rendering of ``invoice``: done, no own invoice."""
    session.execute(update(Document).where(Document.id == document).values(rendering_of=invoice))
    record_document_outcome(session, document, status=Status.OK)


def record_document_outcome(
    session: Session,
    document: int,
    *,
    status: str,
    error: str | None = None,
    max_attempts: int | None = None,
    unfinished: bool = False,
) -> str:
    """Set a document's extraction outcome; returns the status it ends up with.

    The attempt was counted when it started (``store.attempts``). ``unfinished``:
    the attempt was cut off (timeout, a dead worker); once the attempts are used
    up, the document is quarantined with that as the last reason.
    """
    values: dict[str, Any] = {"status": status, "last_error": error, "updated_at": _now()}
    statement = update(Document).where(Document.id == document)
    if status in {Status.FAILED_TRANSIENT, Status.FAILED_FATAL}:
        # A concurrent run may have extracted it meanwhile: never undo that.
        statement = statement.where(Document.status.not_in(Status.DONE))
    session.execute(statement.values(**values))
    return _park_if_exhausted(
        session,
        Document,
        (Document.id == document,),
        status,
        error or "",
        max_attempts,
        unfinished=unfinished,
    )


def mark_crashed_runs(session: Session, *, host: str, is_gone: Callable[[int], bool]) -> int:
    """Runs left 'running' by a process of this host that no longer exists become 'crashed'."""
    stale = [
        run.id
        for run in session.scalars(select(Run).where(Run.status == "running", Run.host == host))
        if run.pid is not None and is_gone(run.pid)
    ]
    if stale:
        session.execute(
            update(Run)
            .where(Run.id.in_(stale))
            .values(status="crashed", error="the process ended without finishing the run")
        )
    return len(stale)


def reset_items(session: Session, *, item: tuple[str, int] | None) -> int:
    """``invoicesync retry``: failed items (one, or all) become pending with a fresh count."""
    count = 0
    for kind, model in (("message", Message), ("document", Document)):
        if item is not None and item[0] != kind:
            continue
        statement = update(model).where(
            model.status.in_([Status.FAILED_FATAL, Status.FAILED_TRANSIENT])
        )
        if item is not None:
            statement = statement.where(model.id == item[1])
        result = session.execute(
            statement.values(status=Status.PENDING, attempts=0).returning(model.id)
        )
        count += len(result.all())
    return count


def start_run(session: Session, *, host: str, pid: int) -> int:
    run = Run(status="running", host=host, pid=pid, counts={}, started_at=_now())
    session.add(run)
    session.flush()
    return run.id


def finish_run(
    session: Session, run: int, *, status: str, counts: dict[str, Any], error: str | None = None
) -> None:
    session.execute(
        update(Run)
        .where(Run.id == run)
        .values(status=status, counts=counts, error=error, finished_at=_now())
    )
