"""One run: every account through every stage, with deadlines and a summary.

This is the only module that knows all the stages. Per account: scan the
source, ingest each new message in its own transaction (message + documents +
links commit together), then extract each pending document in its own
transaction (invoice + document status commit together). A failure is recorded
on its item and the run goes on; only fatal account-level errors stop an account.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from invoicesync.config import AccountSettings, Settings
from invoicesync.errors import (
    BadInputError,
    FatalError,
    InvoiceSyncError,
    RunAborted,
    TransientError,
)
from invoicesync.extract.select import ExtractorSelection
from invoicesync.mail.local import open_local_source
from invoicesync.mail.source import MailSource
from invoicesync.models import MailRef
from invoicesync.pipeline import stages
from invoicesync.resilience.timeouts import Deadline
from invoicesync.store import repository as repo
from invoicesync.store.db import Database
from invoicesync.store.files import DocumentFiles
from invoicesync.store.schema import Document, Status

__all__ = ["AccountSummary", "RunResult", "Runner", "open_source"]

log = logging.getLogger(__name__)


@dataclass
class AccountSummary:
    account: str
    status: str = "ok"  # ok | partial | fatal | deadline
    seen: int = 0
    new_messages: int = 0
    documents: int = 0
    invoices: int = 0
    needs_review: int = 0
    failed: int = 0  # items that failed this run (bad input included)
    retry_later: int = 0  # of those, transient: still pending for the next run
    error: str | None = None


@dataclass
class RunResult:
    run_id: int
    status: str
    accounts: list[AccountSummary] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some items stay pending, 3 fatal, 4 aborted by a deadline."""
        statuses = {a.status for a in self.accounts}
        if self.status == "aborted" or "deadline" in statuses:
            return 4
        if "fatal" in statuses:
            return 3
        if "partial" in statuses:
            return 1
        return 0


def open_source(account: AccountSettings) -> MailSource:
    assert account.maildir is not None  # guaranteed by AccountSettings validation
    return open_local_source(account.name, account.maildir)


class Runner:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        source_factory: Callable[[AccountSettings], MailSource] = open_source,
    ) -> None:
        self.settings = settings
        self.db = database
        self.files = DocumentFiles(settings.storage.dir)
        self.extractors = ExtractorSelection(settings.extractor)
        self.source_factory = source_factory
        self.max_bytes = int(settings.storage.max_document_mb * 1024 * 1024)

    def run(self) -> RunResult:
        deadline = Deadline(self.settings.timeouts.run)
        with self.db.transaction() as session:
            run_id = repo.start_run(session, host=socket.gethostname(), pid=os.getpid())
        result = RunResult(run_id=run_id, status="running")
        try:
            for account in self.settings.accounts:
                summary = AccountSummary(account.name)
                result.accounts.append(summary)
                self._run_account(account, summary, deadline)
            result.status = {0: "ok", 1: "partial", 3: "fatal", 4: "aborted"}[result.exit_code]
        except RunAborted as stop:
            result.status, result.error = stop.status, stop.reason
            raise
        finally:
            counts = {"accounts": [asdict(a) for a in result.accounts]}
            with self.db.transaction() as session:
                repo.finish_run(
                    session, run_id, status=result.status, counts=counts, error=result.error
                )
        return result

    def _run_account(
        self, account: AccountSettings, summary: AccountSummary, run: Deadline
    ) -> None:
        deadline = run.child(self.settings.timeouts.account)
        with self.db.transaction() as session:
            account_id = repo.account_id(session, account.name)
        try:
            source = self.source_factory(account)
        except FatalError as exc:
            summary.status, summary.error = "fatal", str(exc)
            log.error("account=%s stage=open error=%s", account.name, exc)
            return
        try:
            for folder in source.folders():
                self._ingest_folder(source, account_id, folder, summary, run, deadline)
            self._extract_pending(account_id, summary, run, deadline)
        except _AccountDeadline:
            summary.status = "deadline"
            summary.error = f"account deadline of {self.settings.timeouts.account:g}s reached"
            log.warning("account=%s %s; the rest stays pending", account.name, summary.error)
        except FatalError as exc:
            summary.status, summary.error = "fatal", str(exc)
            log.error("account=%s error=%s", account.name, exc)
        except TransientError as exc:
            summary.status, summary.error = "partial", str(exc)
            log.warning("account=%s error=%s; retried next run", account.name, exc)
        finally:
            source.close()
        if summary.status == "ok" and summary.retry_later:
            summary.status = "partial"

    @staticmethod
    def _check(run: Deadline, account: Deadline) -> None:
        if run.expired:
            raise RunAborted("run deadline reached")
        if account.expired:
            raise _AccountDeadline

    def _ingest_folder(
        self,
        source: MailSource,
        account_id: int,
        folder: str,
        summary: AccountSummary,
        run: Deadline,
        deadline: Deadline,
    ) -> None:
        with self.db.session() as session:
            known = repo.known_message_keys(session, account_id, folder)
        for ref in source.scan(folder):
            summary.seen += 1
            if ref.key in known:
                continue
            self._check(run, deadline)
            known.add(ref.key)  # the same bytes twice in one folder are one message
            try:
                parsed = stages.fetch_and_parse(source, ref)
                documents = stages.store_documents(parsed, self.files, max_bytes=self.max_bytes)
                with self.db.transaction() as session:
                    repo.record_message(session, account_id, ref, parsed, documents)
            except InvoiceSyncError as exc:
                if not isinstance(exc, (BadInputError, TransientError)):
                    raise  # fatal for the whole account (auth, quota, config)
                self._message_failed(account_id, ref, exc, summary)
                continue
            except Exception as exc:  # a bug must not lose the mail: keep it pending
                log.exception("account=%s key=%s unexpected error", ref.account, ref.key)
                self._message_failed(account_id, ref, TransientError(repr(exc)), summary)
                continue
            summary.new_messages += 1
            summary.documents += len(documents)

    def _message_failed(
        self, account_id: int, ref: MailRef, exc: InvoiceSyncError, summary: AccountSummary
    ) -> None:
        transient = isinstance(exc, TransientError)
        status = Status.FAILED_TRANSIENT if transient else Status.FAILED_FATAL
        reason = f"{exc.kind}: {exc}"
        with self.db.transaction() as session:
            repo.record_message_failure(session, account_id, ref, status=status, error=reason)
        summary.failed += 1
        summary.retry_later += transient
        log.warning("account=%s key=%s stage=ingest %s", ref.account, ref.key[:12], reason)

    def _extract_pending(
        self, account_id: int, summary: AccountSummary, run: Deadline, deadline: Deadline
    ) -> None:
        with self.db.session() as session:
            pending = repo.workable_documents(session, account_id)
        for document in pending:
            self._check(run, deadline)
            self._extract_one(document, summary)

    def _extract_one(self, document: Document, summary: AccountSummary) -> None:
        try:
            data = self.files.get(document.path)
            invoice = stages.extract_document(
                self.extractors.for_kind(document.kind), data, document.filename
            )
        except (BadInputError, TransientError, OSError) as exc:
            transient = not isinstance(exc, BadInputError)
            kind = exc.kind if isinstance(exc, InvoiceSyncError) else "io"
            status = Status.FAILED_TRANSIENT if transient else Status.FAILED_FATAL
            with self.db.transaction() as session:
                repo.record_document_outcome(
                    session, document.id, status=status, error=f"{kind}: {exc}"
                )
            summary.failed += 1
            summary.retry_later += transient
            log.warning("document=%s stage=extract %s: %s", document.sha256[:12], kind, exc)
            return
        with self.db.transaction() as session:
            if invoice is None:
                repo.record_document_outcome(session, document.id, status=Status.NO_INVOICE)
                return
            created = repo.record_invoice(session, document.id, invoice)
        if created:
            summary.invoices += 1
            summary.needs_review += invoice.needs_review


class _AccountDeadline(Exception):
    """Internal: this account's deadline passed; its remaining items stay pending."""
