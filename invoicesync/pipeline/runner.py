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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TypeVar

from sqlalchemy.orm import Session

from invoicesync.config import AccountSettings, Settings
from invoicesync.errors import (
    AuthError,
    BadInputError,
    FatalError,
    InvoiceSyncError,
    RunAborted,
    TransientError,
)
from invoicesync.extract.select import ExtractorSelection
from invoicesync.mail.source import MailSource
from invoicesync.models import MailRef, ParsedMail
from invoicesync.pipeline import stages
from invoicesync.pipeline.lease_keeper import LeaseKeeper
from invoicesync.pipeline.sources import open_source
from invoicesync.resilience.breaker import Breakers, CircuitOpenError
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline
from invoicesync.resilience.watchdog import StopSwitch
from invoicesync.store import leases, sync
from invoicesync.store import repository as repo
from invoicesync.store.db import Database
from invoicesync.store.files import DocumentFiles
from invoicesync.store.repository import StoredDocument
from invoicesync.store.schema import Document, Status

__all__ = ["AccountSummary", "RunResult", "Runner"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AccountSummary:
    account: str
    status: str = "ok"  # ok | partial | fatal | needs_reconnect | deadline | skipped
    seen: int = 0
    new_messages: int = 0
    documents: int = 0
    invoices: int = 0
    duplicates: int = 0  # invoices already stored from another document (linked, not live)
    needs_review: int = 0
    failed: int = 0  # items that failed this run (bad input included)
    retry_later: int = 0  # of those, transient: still pending for the next run
    left_pending: int = 0  # not tried: an endpoint's circuit breaker was open
    post_actions: int = 0  # mails flagged / moved / labelled after their work was committed
    transfer: dict[str, int] = field(default_factory=dict)  # IMAP pool and fetch counters
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
        if statuses & {"fatal", "needs_reconnect"}:
            return 3
        if "partial" in statuses:
            return 1
        return 0


class Runner:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        switch: StopSwitch | None = None,
        source_factory: Callable[[AccountSettings], MailSource] | None = None,
    ) -> None:
        self.settings = settings
        self.db = database
        self.switch = switch or StopSwitch()
        self.files = DocumentFiles(settings.storage.dir)
        self.extractors = ExtractorSelection(settings.extractor)
        self.source_factory = source_factory
        self._account_deadline: Deadline | None = None
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
            result.accounts = [AccountSummary(a.name) for a in self.settings.accounts]
            workers = max(1, min(self.settings.run.parallel_accounts, len(result.accounts)))
            # Accounts run side by side, each under its own deadline and lease; one
            # account's failure is recorded in its summary and never stops the others.
            with ThreadPoolExecutor(workers, thread_name_prefix="account") as pool:
                futures = [
                    pool.submit(self._run_account, account, summary)
                    for account, summary in zip(
                        self.settings.accounts, result.accounts, strict=True
                    )
                ]
                for future in futures:
                    future.result()  # re-raises RunAborted from any account
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
        reason = summary.error if summary.status == "needs_reconnect" else None
        if summary.status in {"ok", "needs_reconnect"}:
            self._tx(partial(repo.set_needs_reconnect, account=account_id, reason=reason))
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
            if self.source_factory is not None:
                source = self.source_factory(account)
            else:
                source = open_source(
                    account, self.settings, cancel=self.switch.event, deadline=deadline
                )
        except InvoiceSyncError as exc:  # e.g. bad credentials (fatal), server down (transient)
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            log.error("account=%s stage=open error=%s", account.name, exc)
            return
        # The watchdog drops connections at once (abort); a normal end logs out (close).
        closer = self.switch.register(getattr(source, "abort", source.close))
        try:
            for folder in source.folders():
                self._ingest_folder(source, account_id, folder, summary, deadline, lease)
            self._extract_pending(account_id, summary, deadline, lease)
            self._post_actions(source, account_id, summary)
        except _AccountStopped as stop:
            summary.status, summary.error = stop.status, stop.reason
            log.warning("account=%s %s", account.name, stop.reason)
        except InvoiceSyncError as exc:
            self.switch.raise_if_tripped()  # a connection closed by the watchdog fails here
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            if isinstance(exc, AuthError) and account.oauth2 is not None:
                # A revoked grant: only a person can fix it. Say so until they do.
                summary.status = "needs_reconnect"
            log.error("account=%s error=%s", account.name, exc)
        finally:
            self.switch.unregister(closer)
            source.close()
            stats = getattr(source, "stats", None)
            if stats is not None:
                summary.transfer = stats()

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
            position = sync.folder_position(session, account_id, folder)
        seen_before: set[str] | None = None
        for ref in source.scan(folder, position):
            summary.seen += 1
            if ref.key in known:
                continue
            self._check(deadline, lease)
            known.add(ref.key)  # the same bytes twice in one folder are one message
            if position is not None and ref.uidvalidity != position.uidvalidity:
                # UIDVALIDITY changed: mails stored before are recognised by Message-ID.
                if seen_before is None:
                    with self.db.session() as session:
                        seen_before = sync.done_message_ids(session, account_id, folder)
                if ref.message_id and ref.message_id in seen_before:
                    self._tx(partial(self._record_seen_before, account_id=account_id, ref=ref))
                    continue
            self._ingest_one(source, account_id, ref, summary)
        current = source.position(folder)
        if current is None or current.uidvalidity is None:
            return  # local sources list every message on every scan
        with self.db.session() as session:
            retry = sync.workable_refs(session, account_id, folder, current.uidvalidity)
        for ref in retry:
            if ref.key in known:
                continue
            self._check(deadline, lease)
            known.add(ref.key)
            self._ingest_one(
                source, account_id, ref.model_copy(update={"account": source.account}), summary
            )

    def _record_seen_before(self, session: Session, *, account_id: int, ref: MailRef) -> None:
        note = ParsedMail(message_id=ref.message_id, skipped=["stored before a UIDVALIDITY change"])
        repo.record_message(session, account_id, ref, note, [], status=Status.OK)
        sync.advance_position(session, account_id, ref)

    def _post_actions(self, source: MailSource, account_id: int, summary: AccountSummary) -> None:
        """after_ingest for mails whose documents are all extracted and committed."""
        with self.db.session() as session:
            ready = sync.awaiting_post_action(session, account_id)
        for (folder, uidvalidity), uids in ready.items():
            current = source.position(folder)
            if current is None or current.uidvalidity != uidvalidity:
                continue  # those UIDs mean other mails now
            try:
                source.after_ingest(folder, uids)
            except TransientError as exc:
                summary.error = summary.error or f"post-action failed, retried next run: {exc}"
                log.warning(
                    "account=%s folder=%s post-action failed: %s", summary.account, folder, exc
                )
                continue
            done = partial(
                sync.post_action_done,
                account=account_id,
                folder=folder,
                uidvalidity=uidvalidity,
                uids=uids,
            )
            self._tx(done)
            summary.post_actions += len(uids)

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
            self._tx(lambda s: self._record(s, account_id, ref, parsed, documents, source))
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

    def _record(
        self,
        session: Session,
        account_id: int,
        ref: MailRef,
        parsed: ParsedMail,
        documents: list[StoredDocument],
        source: MailSource,
    ) -> None:
        wants_action = source.endpoint is not None and self._after_ingest(source.account)
        repo.record_message(session, account_id, ref, parsed, documents, post_action=wants_action)
        sync.advance_position(session, account_id, ref)

    def _after_ingest(self, account: str) -> bool:
        return any(a.name == account and a.after_ingest != "none" for a in self.settings.accounts)

    def _message_failed(
        self, account_id: int, ref: MailRef, exc: InvoiceSyncError, summary: AccountSummary
    ) -> None:
        self.switch.raise_if_tripped()  # failures caused by the stop itself are not recorded
        wanted = Status.FAILED_TRANSIENT if isinstance(exc, TransientError) else Status.FAILED_FATAL
        reason = f"{exc.kind}: {exc}"

        def record(session: Session) -> str:
            status = repo.record_message_failure(
                session,
                account_id,
                ref,
                status=wanted,
                error=reason,
                max_attempts=self.settings.retries.item_attempts,
            )
            sync.advance_position(session, account_id, ref)
            return status

        status = self._tx(record)
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
