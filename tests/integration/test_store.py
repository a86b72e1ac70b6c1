"""The store on real SQLite and PostgreSQL: migrations, idempotent writes, unique keys."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from invoicesync.models import Invoice, MailRef, ParsedMail, Provenance
from invoicesync.store import repository as repo
from invoicesync.store.db import Database
from invoicesync.store.schema import Base, Document, InvoiceRow, Message, MessageDocument, Status

REF = MailRef(account="a", folder="local", key="k1")
DOC = repo.StoredDocument(
    sha256="ab" * 32, kind="pdf", size=3, path="ab/ab/x.pdf", filename="x.pdf", origin="attachment"
)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


def test_migrations_match_the_tables(database: Database) -> None:
    """Alembic's head creates exactly the tables the code declares."""
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    database.upgrade()  # a second upgrade is a no-op


def test_the_fast_head_check_agrees_with_alembic(database: Database) -> None:
    """upgrade() skips Alembic when the database is at head: its idea of head must be Alembic's."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from invoicesync.store.db import MIGRATIONS, head_revision

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()
    assert database._at_head()
    with database.transaction() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    assert not database._at_head()


def test_concurrent_upgrades_on_a_fresh_database(db_url: str) -> None:
    """Two processes starting at once on an empty database both succeed."""
    errors: list[BaseException] = []

    def upgrade() -> None:
        database = Database(db_url)
        try:
            database.upgrade()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_recording_a_message_twice_stores_it_once(database: Database) -> None:
    """Meeting the same message and document again is success, not a second row."""
    for _ in range(2):
        with database.transaction() as session:
            account = repo.account_id(session, "a")
            repo.record_message(session, account, REF, ParsedMail(subject="s"), [DOC])
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
        assert session.scalar(select(func.count()).select_from(Document)) == 1
        assert session.scalar(select(func.count()).select_from(MessageDocument)) == 1
        assert session.scalars(select(Message.status)).one() == Status.OK


def test_failure_never_undoes_a_stored_message(database: Database) -> None:
    """A late failure report from an overlapping run leaves a done message done."""
    with database.transaction() as session:
        account = repo.account_id(session, "a")
        repo.record_message_failure(
            session, account, REF, status=Status.FAILED_TRANSIENT, error="x"
        )
        repo.record_message_failure(
            session, account, REF, status=Status.FAILED_TRANSIENT, error="y"
        )
    with database.session() as session:
        message = session.scalars(select(Message)).one()
        assert (message.status, message.attempts, message.last_error) == (
            Status.FAILED_TRANSIENT,
            2,
            "y",
        )
        assert repo.known_message_keys(session, account, "local", keys=["k1"]) == set()
    with database.transaction() as session:
        repo.record_message(session, account, REF, ParsedMail(), [DOC])
        repo.record_message_failure(session, account, REF, status=Status.FAILED_FATAL, error="z")
    with database.session() as session:
        assert session.scalars(select(Message.status)).one() == Status.OK
        assert repo.known_message_keys(session, account, "local", keys=["k1", "k2"]) == {"k1"}


def test_one_invoice_per_document(database: Database) -> None:
    """A second invoice for the same document is refused by the unique key, not duplicated."""
    invoice = Invoice(
        invoice_number="1", gross_total=Decimal("10.50"), provenance=Provenance(extractor="offline")
    )
    with database.transaction() as session:
        account = repo.account_id(session, "a")
        repo.record_message(session, account, REF, ParsedMail(), [DOC])
        document = session.scalars(select(Document.id)).one()
    results = []
    for _ in range(2):
        with database.transaction() as session:
            results.append(repo.record_invoice(session, document, invoice, None))
    assert results == ["new", "exists"]
    with database.session() as session:
        row = session.scalars(select(InvoiceRow)).one()
        assert row.gross_total == Decimal("10.50")
        assert row.data["gross_total"] == "10.50"
        assert session.scalars(select(Document.status)).one() == Status.OK


def _document(database: Database, sha: str, kind: str = "pdf") -> int:
    stored = repo.StoredDocument(
        sha256=sha, kind=kind, size=1, path=f"{sha}.{kind}", filename=None, origin="attachment"
    )
    with database.transaction() as session:
        account = repo.account_id(session, "a")
        ref = MailRef(account="a", folder="local", key=sha)
        repo.record_message(session, account, ref, ParsedMail(), [stored])
        return session.scalars(select(Document.id).where(Document.sha256 == sha)).one()


def test_same_business_key_is_one_live_invoice(database: Database) -> None:
    """A second document with a live invoice's business key is stored as its duplicate."""
    offline = Invoice(invoice_number="7", provenance=Provenance(extractor="offline"))
    first, second = _document(database, "1" * 64), _document(database, "2" * 64)
    with database.transaction() as session:
        assert repo.record_invoice(session, first, offline, "k" * 64) == "new"
        assert repo.record_invoice(session, second, offline, "k" * 64) == "duplicate"
    with database.session() as session:
        rows = session.execute(select(InvoiceRow.document_id, InvoiceRow.duplicate_of)).all()
    live = {doc: dup for doc, dup in rows}
    assert live[first] is None and live[second] is not None


def test_xml_data_replaces_text_data_as_the_live_invoice(database: Database) -> None:
    """An XML copy arriving after a text-extracted one becomes live; the older one its duplicate."""
    text = Invoice(invoice_number="7", provenance=Provenance(extractor="offline"))
    xml = Invoice(invoice_number="7", provenance=Provenance(extractor="einvoice", syntax="UBL"))
    first, second, third = (_document(database, c * 64) for c in "345")
    with database.transaction() as session:
        assert repo.record_invoice(session, first, text, "k" * 64) == "new"
        assert repo.record_invoice(session, second, text, "k" * 64) == "duplicate"
        # Still one live invoice for the key: counted as a duplicate, though now the live one.
        assert repo.record_invoice(session, third, xml, "k" * 64) == "duplicate"
    with database.session() as session:
        rows = dict(session.execute(select(InvoiceRow.document_id, InvoiceRow.duplicate_of)).all())
        live_id = session.scalars(
            select(InvoiceRow.id).where(InvoiceRow.document_id == third)
        ).one()
    assert rows[third] is None
    assert rows[first] == live_id and rows[second] == live_id


def test_the_first_known_document_is_live_whatever_order_its_copies_are_read_in(
    database: Database,
) -> None:
    """Parallel workers and cut-off runs read copies in any order: the outcome is the same."""
    offline = Invoice(invoice_number="8", provenance=Provenance(extractor="offline"))
    first, second = _document(database, "6" * 64), _document(database, "7" * 64)
    with database.transaction() as session:
        assert repo.record_invoice(session, second, offline, "m" * 64) == "new"
        assert repo.record_invoice(session, first, offline, "m" * 64) == "duplicate"
    with database.session() as session:
        rows = dict(session.execute(select(InvoiceRow.document_id, InvoiceRow.duplicate_of)).all())
        first_id = session.scalars(
            select(InvoiceRow.id).where(InvoiceRow.document_id == first)
        ).one()
    assert rows[first] is None and rows[second] == first_id


def test_a_batch_of_messages_in_chunks_keeps_the_first_name_of_a_shared_document(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_messages: every message, document and link once, whatever the statement chunks;
    a document two mails of the batch share keeps the first mail's name, as one by one did."""
    monkeypatch.setattr(repo, "_ROWS_PER_STATEMENT", 2)

    def doc(n: int, name: str) -> repo.StoredDocument:
        sha = f"{n:064x}"
        return repo.StoredDocument(
            sha256=sha, kind="pdf", size=1, path=f"{sha}.pdf", filename=name, origin="attachment"
        )

    batch = [
        repo.NewMessage(
            MailRef(account="a", folder="INBOX", key=f"m{m}", uidvalidity=1, uid=m + 1),
            ParsedMail(subject=f"mail {m}"),
            [doc(m * 10 + d, f"m{m}-d{d}.pdf") for d in range(3)] + [doc(999, f"shared-{m}.pdf")],
        )
        for m in range(3)
    ]
    with database.transaction() as session:
        account = repo.account_id(session, "a")
        ids = repo.record_messages(session, account, batch)
    with database.session() as session:
        subjects = dict(session.execute(select(Message.id, Message.subject)).all())
        names = dict(session.execute(select(Document.sha256, Document.filename)).all())
        links = session.scalar(select(func.count()).select_from(MessageDocument))
    assert [subjects[i] for i in ids] == ["mail 0", "mail 1", "mail 2"]
    assert len(names) == 3 * 3 + 1 and links == 3 * 4
    assert names[f"{999:064x}"] == "shared-0.pdf"


def test_mail_attempts_count_at_start_and_quarantine_after_the_last(database: Database) -> None:
    """A mail whose runs die on it is counted each time, then set aside with the reason."""
    from invoicesync.store import attempts

    ref = MailRef(account="a", folder="INBOX", key="q" * 64, uidvalidity=1, uid=7)
    with database.transaction() as session:
        account = repo.account_id(session, "a")
    for _ in range(2):
        with database.transaction() as session:
            assert (
                attempts.start_messages(session, account, [ref], owner="h:1:9", max_attempts=2)
                == {}
            )
    with database.transaction() as session:
        reasons = attempts.start_messages(session, account, [ref], owner="h:1:9", max_attempts=2)
    assert reasons == {ref.key: "quarantined after 2 attempts that did not finish (last: unknown)"}
    with database.session() as session:
        row = session.scalars(select(Message).where(Message.key == ref.key)).one()
        assert (row.status, row.attempts, row.started_by) == ("pending", 2, "h:1:9")
    with database.transaction() as session:
        attempts.undo_message_start(session, account, ref)
    with database.session() as session:
        assert session.scalars(select(Message.attempts).where(Message.key == ref.key)).one() == 1
