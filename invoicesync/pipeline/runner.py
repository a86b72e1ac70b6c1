"""One run: every account through every stage, with deadlines, leases and a summary.

This is the only module that knows all the stages. Per account: claim its lease
(an overlapping run skips the account), scan the source, ingest each new message
in its own transaction (message + documents + links commit together), then
extract each pending document in its own transaction (invoice + document status
commit together). A failure is recorded on its item and the run goes on; only
fatal account-level errors stop an account. Between items every loop checks the
stop switch (watchdog, signals) and the deadlines, so a stop always falls
between two commits.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from sqlalchemy.orm import Session

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
from invoicesync.pipeline.lease_keeper import LeaseKeeper
from invoicesync.resilience.breaker import Breakers, CircuitOpenError
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline
from invoicesync.resilience.watchdog import StopSwitch
from invoicesync.store import leases
from invoicesync.store import repository as repo
from invoicesync.store.db import Database
from invoicesync.store.files import DocumentFiles
from invoicesync.store.schema import Document, Status

__all__ = ["AccountSummary", "RunResult", "Runner", "open_source"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AccountSummary:
    account: str
    status: str = "ok"  # ok | partial | fatal | deadline | skipped
    seen: int = 0
    new_messages: int = 0
    documents: int = 0
    invoices: int = 0
    duplicates: int = 0  # invoices already stored from another document (linked, not live)
    needs_review: int = 0
    failed: int = 0  # items that failed this run (bad input included)
    retry_later: int = 0  # of those, transient: still pending for the next run
    left_pending: int = 0  # not tried: an endpoint's circuit breaker was open
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
        switch: StopSwitch | None = None,
        source_factory: Callable[[AccountSettings], MailSource] = open_source,
    ) -> None:
        self.settings = settings
        self.db = database
        self.switch = switch or StopSwitch()
        self.files = DocumentFiles(settings.storage.dir)
        self.extractors = ExtractorSelection(settings.extractor)
        self.source_factory = source_factory
        self.breakers = Breakers(settings.breaker)
        self.max_bytes = int(settings.storage.max_document_mb * 1024 * 1024)
        self.run_id: int | None = None
        self._deadline = Deadline(settings.timeouts.run)
        self._store_retry = RetryPolicy(settings.retries, stage="store", cancel=self.switch.event)

    # ------------------------------------------------------------------ run

    def run(self) -> RunResult:
        host = socket.gethostname()
        self.run_id = run_id = self._tx(lambda s: self._start(s, host))
        result = RunResult(run_id=run_id, status="running")
        try:
            for account in self.settings.accounts:
                summary = AccountSummary(account.name)
                result.accounts.append(summary)
                self._run_account(account, summary)
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

    @staticmethod
    def _start(session: Session, host: str) -> int:
        crashed = repo.mark_crashed_runs(session, host=host, is_gone=leases.process_is_gone)
        if crashed:
            log.warning("marked %d earlier run(s) of this host as crashed", crashed)
        return repo.start_run(session, host=host, pid=os.getpid())

    def record_abort(self, reason: str) -> None:
        """Mark the run aborted; called by the watchdog when it must end the process."""
        if self.run_id is not None:
            with self.db.transaction() as session:
                repo.finish_run(session, self.run_id, status="aborted", counts={}, error=reason)

    def _tx(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction, retried when the database is busy."""

        def attempt() -> T:
            with self.db.transaction() as session:
                return work(session)

        return self._store_retry.call(attempt, deadline=self._deadline)

    def _check(self, account: Deadline, lease: LeaseKeeper) -> None:
        """Between two items: stop if asked to, or if a deadline passed or the lease was lost."""
        self.switch.raise_if_tripped()
        if self._deadline.expired:
            raise RunAborted(f"run deadline of {self.settings.timeouts.run:g}s reached")
        if account.expired:
            raise _AccountStopped(
                "deadline", f"account deadline of {self.settings.timeouts.account:g}s reached"
            )
        if lease.lost.is_set():
            raise _AccountStopped("partial", "lease lost to another run; the rest stays pending")

    # -------------------------------------------------------------- account

    def _run_account(self, account: AccountSettings, summary: AccountSummary) -> None:
        assert self.run_id is not None
        account_id = self._tx(lambda s: repo.account_id(s, account.name))
        lease = LeaseKeeper(
            self.db,
            f"account:{account.name}",
            leases.owner_id(self.run_id),
            self.settings.leases.ttl,
        )
        if not lease.acquire():
            summary.status = "skipped"
            summary.error = f"skipped: another run is working this account ({lease.holder})"
            log.info("account=%s %s", account.name, summary.error)
            return
        try:
            self._work_account(account, account_id, summary, lease)
        finally:
            lease.release()
        if summary.left_pending:
            endpoints = ", ".join(self.breakers.open_endpoints()) or "an endpoint"
            summary.error = summary.error or (
                f"{summary.left_pending} item(s) left pending: circuit open for {endpoints}"
            )
        if summary.status == "ok" and (summary.retry_later or summary.left_pending):
            summary.status = "partial"

    def _work_account(
        self,
        account: AccountSettings,
        account_id: int,
        summary: AccountSummary,
        lease: LeaseKeeper,
    ) -> None:
        deadline = self._deadline.child(self.settings.timeouts.account)
        try:
            source = self.source_factory(account)
        except InvoiceSyncError as exc:  # e.g. bad credentials (fatal), server down (transient)
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            log.error("account=%s stage=open error=%s", account.name, exc)
            return
        closer = self.switch.register(source.close)
        try:
            for folder in source.folders():
                self._ingest_folder(source, account_id, folder, summary, deadline, lease)
            self._extract_pending(account_id, summary, deadline, lease)
        except _AccountStopped as stop:
            summary.status, summary.error = stop.status, stop.reason
            log.warning("account=%s %s", account.name, stop.reason)
        except InvoiceSyncError as exc:
            self.switch.raise_if_tripped()  # a connection closed by the watchdog fails here
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            log.error("account=%s error=%s", account.name, exc)
        finally:
            self.switch.unregister(closer)
            source.close()

    def _ingest_folder(
        self,
        source: MailSource,
        account_id: int,
        folder: str,
        summary: AccountSummary,
        deadline: Deadline,
        lease: LeaseKeeper,
    ) -> None:
        with self.db.session() as session:
            known = repo.known_message_keys(session, account_id, folder)
        for ref in source.scan(folder):
            summary.seen += 1
            if ref.key in known:
                continue
            self._check(deadline, lease)
            known.add(ref.key)  # the same bytes twice in one folder are one message
            self._ingest_one(source, account_id, ref, summary)

    def _ingest_one(
        self, source: MailSource, account_id: int, ref: MailRef, summary: AccountSummary
    ) -> None:
        try:
            if source.endpoint is None:
                parsed = stages.fetch_and_parse(source, ref)
            else:
                breaker = self.breakers.for_endpoint(source.endpoint)
                parsed = breaker.call(lambda: stages.fetch_and_parse(source, ref))
            documents = stages.store_documents(parsed, self.files, max_bytes=self.max_bytes)
            self._tx(lambda s: repo.record_message(s, account_id, ref, parsed, documents))
        except CircuitOpenError:
            summary.left_pending += 1  # not an attempt: the endpoint is down, try next run
            return
        except (BadInputError, TransientError) as exc:
            self._message_failed(account_id, ref, exc, summary)
            return
        except InvoiceSyncError:
            raise  # fatal for the whole account (auth, quota, config)
        except Exception as exc:  # a bug must not lose the mail: keep it pending
            log.exception("account=%s key=%s unexpected error", ref.account, ref.key[:12])
            self._message_failed(account_id, ref, TransientError(repr(exc)), summary)
            return
        summary.new_messages += 1
        summary.documents += len(documents)

    def _message_failed(
        self, account_id: int, ref: MailRef, exc: InvoiceSyncError, summary: AccountSummary
    ) -> None:
        self.switch.raise_if_tripped()  # failures caused by the stop itself are not recorded
        wanted = Status.FAILED_TRANSIENT if isinstance(exc, TransientError) else Status.FAILED_FATAL
        reason = f"{exc.kind}: {exc}"
        status = self._tx(
            lambda s: repo.record_message_failure(
                s,
                account_id,
                ref,
                status=wanted,
                error=reason,
                max_attempts=self.settings.retries.item_attempts,
            )
        )
        summary.failed += 1
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("account=%s key=%s stage=ingest %s", ref.account, ref.key[:12], reason)

    # -------------------------------------------------------------- extract

    def _extract_pending(
        self, account_id: int, summary: AccountSummary, deadline: Deadline, lease: LeaseKeeper
    ) -> None:
        with self.db.session() as session:
            pending = repo.workable_documents(session, account_id)
        for document in pending:
            self._check(deadline, lease)
            self._extract_one(document, summary)

    def _extract_one(self, document: Document, summary: AccountSummary) -> None:
        try:
            data = self.files.get(document.path)
            invoice = stages.extract_document(
                self.extractors.for_kind(document.kind), data, document.filename
            )
        except CircuitOpenError:
            summary.left_pending += 1
            return
        except (BadInputError, TransientError, OSError) as exc:
            self.switch.raise_if_tripped()
            self._document_failed(document, exc, summary)
            return
        if invoice is None:
            self._tx(
                lambda s: repo.record_document_outcome(s, document.id, status=Status.NO_INVOICE)
            )
            return
        outcome = self._tx(lambda s: stages.store_invoice(s, document, invoice))
        if outcome == repo.InvoiceOutcome.NEW:
            summary.invoices += 1
            summary.needs_review += invoice.needs_review
        elif outcome == repo.InvoiceOutcome.DUPLICATE:
            summary.duplicates += 1

    def _document_failed(self, document: Document, exc: Exception, summary: AccountSummary) -> None:
        wanted = Status.FAILED_FATAL if isinstance(exc, BadInputError) else Status.FAILED_TRANSIENT
        kind = exc.kind if isinstance(exc, InvoiceSyncError) else "io"
        reason = f"{kind}: {exc}"
        status = self._tx(
            lambda s: repo.record_document_outcome(
                s,
                document.id,
                status=wanted,
                error=reason,
                max_attempts=self.settings.retries.item_attempts,
            )
        )
        summary.failed += 1
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("document=%s stage=extract %s", document.sha256[:12], reason)


class _AccountStopped(Exception):
    """Internal: stop this account (deadline, lost lease); its remaining items stay pending."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
