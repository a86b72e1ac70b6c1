"""SQLAlchemy tables. Alembic migrations in ``store/migrations`` create and evolve them.

Every idempotency rule of the pipeline is a unique constraint here, so that the
database, not the code path, guarantees "never stored twice":

- a message once per account + folder + key (``<uidvalidity>:<uid>`` for IMAP);
- a document once per sha256;
- an invoice once per document.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Account",
    "Base",
    "Document",
    "ExtractionCache",
    "InvoiceRow",
    "Lease",
    "Message",
    "MessageDocument",
    "Run",
    "Status",
    "SyncState",
]

# Stable constraint names keep migrations portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Status:
    """Outcome of an item (a message or a document)."""

    PENDING = "pending"
    OK = "ok"
    NO_INVOICE = "no_invoice"
    FAILED_TRANSIENT = "failed_transient"
    FAILED_FATAL = "failed_fatal"

    DONE = frozenset({OK, NO_INVOICE})
    #: Items a normal run works on; failed_fatal waits for ``invoicesync retry``.
    WORKABLE = frozenset({PENDING, FAILED_TRANSIENT})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    #: Why a person must reconnect this account (a revoked OAuth grant); None when fine.
    needs_reconnect: Mapped[str | None] = mapped_column(Text)
    #: When the last run that worked this account to the end started (workers: "due" after).
    last_done_at: Mapped[dt.datetime | None]


class SyncState(Base):
    """Per-folder incremental sync position (IMAP: UIDVALIDITY and the highest UID done)."""

    __tablename__ = "sync_state"
    __table_args__ = (UniqueConstraint("account_id", "folder"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("account_id", "folder", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(String(500))
    key: Mapped[str] = mapped_column(String(128))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When the last attempt started, and by which run (``host:pid:run``).
    started_at: Mapped[dt.datetime | None]
    started_by: Mapped[str | None] = mapped_column(String(255))
    links: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: "pending" until the account's after_ingest action (flag, move …) has been applied.
    post_action: Mapped[str | None] = mapped_column(String(20), index=True)
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class Document(Base):
    """A PDF or XML file, stored once on disk by sha256, however many mails carry it."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(10))  # pdf | xml
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)  # relative to [storage] dir
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: A PDF that is the human-readable rendering of an invoice read from XML.
    rendering_of: Mapped[int | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="SET NULL", use_alter=True)
    )
    #: The run extracting it now (``host:pid:run``), until ``claim_expires_at``.
    claim_owner: Mapped[str | None] = mapped_column(String(255))
    claim_expires_at: Mapped[dt.datetime | None]
    #: When the last attempt started, and by which run (``host:pid:run``).
    started_at: Mapped[dt.datetime | None]
    started_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class MessageDocument(Base):
    """Which message carried which document, and how (attachment, nested mail, link)."""

    __tablename__ = "message_documents"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    filename: Mapped[str | None] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(20))


class InvoiceRow(Base):
    """One extracted invoice; ``data`` holds the whole ``models.Invoice`` as JSON.

    At most one *live* invoice (``duplicate_of`` empty) per business key: the
    partial unique index makes that hold even for two runs racing.
    """

    __tablename__ = "invoices"
    __table_args__ = (
        Index(
            "uq_invoices_live_business_key",
            "business_key",
            unique=True,
            sqlite_where=text("duplicate_of IS NULL"),
            postgresql_where=text("duplicate_of IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), unique=True
    )
    extractor: Mapped[str] = mapped_column(String(20))
    document_type: Mapped[str] = mapped_column(String(20))
    invoice_number: Mapped[str | None] = mapped_column(Text, index=True)
    issue_date: Mapped[dt.date | None] = mapped_column(Date)
    currency: Mapped[str | None] = mapped_column(String(3))
    seller_name: Mapped[str | None] = mapped_column(Text)
    seller_vat_id: Mapped[str | None] = mapped_column(String(64))
    gross_total: Mapped[Decimal | None] = mapped_column(Numeric(19, 4))
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    data: Mapped[dict[str, Any]]
    #: sha256 of seller + number + issue date + gross (see pipeline.dedupe); None when incomplete.
    business_key: Mapped[str | None] = mapped_column(String(64))
    #: Set on a later copy of an invoice already stored: the live invoice it repeats.
    duplicate_of: Mapped[int | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="SET NULL"), index=True
    )
    #: What reading this invoice cost in model tokens (None when no model was involved).
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class ExtractionCache(Base):
    """A model's reading of one document, so that it is paid for once.

    Keyed by what determines the answer: the document's bytes, the model and the
    prompt version. ``result`` is the ``models.Invoice`` as JSON, or None when the
    model found no invoice. Written as soon as the answer arrives, in its own
    transaction, so a crash before the invoice is stored costs no second call.
    """

    __tablename__ = "extraction_cache"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    prompt_version: Mapped[str] = mapped_column(String(50), primary_key=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now, index=True)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=_now)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(20))  # running | ok | partial | fatal | aborted ...
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A claim on a unit of work (an account) by one run; reclaimable once expired.

    Overlapping runs and parallel workers never work the same account at once:
    the owner renews ``expires_at`` while working, and a killed owner's claim
    simply runs out.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))  # host:pid:run
    acquired_at: Mapped[dt.datetime] = mapped_column(default=_now)
    expires_at: Mapped[dt.datetime]
