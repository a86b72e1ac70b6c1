"""One account's work within a run: ingest every folder, extract, apply post-actions.

New messages are committed in small batches (each message with its documents,
links and the folder position, up to ``_COMMIT_EVERY`` messages or
``_COMMIT_SECONDS`` per transaction), then each pending document is extracted in
its own transaction (invoice + document status). A failure is recorded on its
item and the account goes on; only account-level fatal errors stop it. Between
items every loop checks the stop switch and the deadlines, so a stop always
falls between two commits; what a stop leaves uncommitted is committed first.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from invoicesync import logs
from invoicesync.config import AccountSettings
from invoicesync.errors import (
    AuthError,
    BadInputError,
    BugError,
    FatalError,
    InvoiceSyncError,
    MailQuarantined,
    ProtocolError,
    RunAborted,
    TransientError,
)
from invoicesync.fetch.redact import redact_url
from invoicesync.logs import log_context
from invoicesync.mail.source import MailSource
from invoicesync.models import MailRef, ParsedMail
from invoicesync.pipeline import outcomes, stages
from invoicesync.pipeline.lease_keeper import LeaseKeeper
from invoicesync.pipeline.outcomes import Decision, Outcome, Stage
from invoicesync.pipeline.sources import open_source
from invoicesync.pipeline.summary import AccountSummary
from invoicesync.resilience.breaker import CircuitOpenError
from invoicesync.resilience.processes import RemoteBug
from invoicesync.resilience.timeouts import Deadline
from invoicesync.store import attempts, sync, work
from invoicesync.store import repository as repo
from invoicesync.store.repository import StoredDocument
from invoicesync.store.schema import Document, Status

if TYPE_CHECKING:
    from invoicesync.fetch.download import LinkResult
    from invoicesync.fetch.http import Session as HttpSession
    from invoicesync.pipeline.runner import Runner
    from invoicesync.resilience.retry import RetryPolicy

__all__ = ["AccountJob", "AccountStopped"]

log = logging.getLogger(__name__)
# Scanned messages looked up in the database at a time.
_KEY_CHUNK = 500
# Documents claimed per batch and per model slot: enough to keep every slot busy,
# few enough that a killed worker holds back little.
_BATCH = 4
# Ingested messages per transaction: a commit per message was a fifth of a first ingest.
# A batch never waits longer than _COMMIT_SECONDS (slow link downloads, say).
_COMMIT_EVERY = 50
_COMMIT_SECONDS = 1.0
# Mails whose attempts are counted in one transaction, then fetched and walked.
_GROUP = 50
# Raw mail walked in one worker call at most: a batch must not hold much memory.
_PARSE_BYTES = 16 * 1024 * 1024


@dataclass
class _Ingested:
    """A message parsed, its links followed and its documents on disk: ready to commit."""

    ref: MailRef
    parsed: ParsedMail
    documents: list[StoredDocument]


class AccountStopped(Exception):
    """Internal: stop this account (deadline, lost lease); its remaining items stay pending."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AccountJob:
    """The work on one account, with the run's shared parts (database, files, breakers …)."""

    def __init__(self, runner: Runner) -> None:
        self.settings = runner.settings
        self.db = runner.db
        self.switch = runner.switch
        self.files = runner.files
        self.extractors = runner.extractors
        self.reader = runner.reader
        self.mails = runner.mails
        self.breakers = runner.breakers
        self.source_factory = runner.source_factory
        self.max_bytes = runner.max_bytes
        self._deadline = runner.deadline
        self._tx = runner.tx
        self._account_deadline = runner.deadline  # replaced by the account's own in work()
        self._wants_post_action = False
        self.model_down = runner.model_down
        self.owner = runner.owner
        self._tried = runner.tried_documents
        self._tried_lock = runner.tried_lock
        self._link_retry: RetryPolicy | None = None
        self._session: HttpSession | None = None
        self._ingested: list[_Ingested] = []
        self._ingested_since = 0.0

    def _download(self, url: str) -> LinkResult:
        """One link through the hardened downloader, under its host's circuit breaker."""
        # requests is imported only by runs that meet a link.
        from invoicesync.fetch.download import download_pdf, link_retry_policy
        from invoicesync.fetch.http import make_session

        links = self.settings.links
        if self._session is None:
            self._session = make_session(links, self.settings.timeouts)
            self._link_retry = link_retry_policy(
                self.settings.retries, links, cancel=self.switch.event
            )
        session = self._session
        retry = self._link_retry
        assert retry is not None
        host = urlsplit(url).hostname or "?"
        return self.breakers.for_endpoint(f"http://{host}").call(
            lambda: download_pdf(
                url,
                session=session,
                settings=links,
                timeouts=self.settings.timeouts,
                retry=retry,
                deadline=self._account_deadline,
            )
        )

    def _check(self, account: Deadline, lease: LeaseKeeper) -> None:
        """Between two items: stop if asked to, or if a deadline passed or the lease was lost."""
        self.switch.raise_if_tripped()
        if self._deadline.expired:
            raise RunAborted(f"run deadline of {self.settings.timeouts.run:g}s reached")
        if account.expired:
            raise AccountStopped(
                "deadline", f"account deadline of {self.settings.timeouts.account:g}s reached"
            )
        if lease.lost.is_set():
            raise AccountStopped("partial", "lease lost to another run; the rest stays pending")

    # -------------------------------------------------------------- account

    def work(
        self,
        account: AccountSettings,
        account_id: int,
        summary: AccountSummary,
        lease: LeaseKeeper,
    ) -> None:
        deadline = self._deadline.child(self.settings.timeouts.account)
        self._account_deadline = deadline
        self._wants_post_action = account.imap_host is not None and account.after_ingest != "none"
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
            summary.count_failure(exc.stage or "open", exc.kind)
            log.error("account=%s stage=open error=%s", account.name, exc)
            return
        # The watchdog drops connections at once (abort); a normal end logs out (close).
        closer = self.switch.register(getattr(source, "abort", source.close))
        try:
            summary.phase = "scanning"
            for folder in source.folders():
                self._ingest_folder(source, account_id, folder, summary, deadline, lease)
            summary.phase = "extracting"
            self._extract_pending(account_id, summary, deadline, lease)
            summary.phase = "post-actions"
            self._post_actions(source, account_id, summary)
        except AccountStopped as stop:
            summary.status, summary.error = stop.status, stop.reason
            log.warning("account=%s %s", account.name, stop.reason)
        except InvoiceSyncError as exc:
            self.switch.raise_if_tripped()  # a connection closed by the watchdog fails here
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            summary.count_failure(exc.stage or "account", exc.kind)
            if isinstance(exc, AuthError) and account.oauth2 is not None:
                # A revoked grant: only a person can fix it. Say so until they do.
                summary.status = "needs_reconnect"
            log.error("account=%s error=%s", account.name, exc)
        finally:
            self.switch.unregister(closer)
            source.close()
            if self._session is not None:
                self._session.close()
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
        try:
            self._ingest_folder_items(source, account_id, folder, summary, deadline, lease)
        except BaseException:
            # On a stop the messages already read are committed, so as not to read them
            # again; not once the lease is lost (another run may be storing them), and
            # never at the cost of the error that stopped us.
            if lease.lost.is_set():
                self._ingested = []
            else:
                with contextlib.suppress(Exception):
                    self._commit_ingested(account_id, summary)
            raise
        self._commit_ingested(account_id, summary)

    def _ingest_folder_items(
        self,
        source: MailSource,
        account_id: int,
        folder: str,
        summary: AccountSummary,
        deadline: Deadline,
        lease: LeaseKeeper,
    ) -> None:
        with self.db.session() as session:
            position = sync.folder_position(session, account_id, folder)
        seen_before: set[str] | None = None

        def stored_before(ref: MailRef) -> bool:
            """After a UIDVALIDITY change, mails stored before are recognised by Message-ID."""
            nonlocal seen_before
            if position is None or ref.uidvalidity == position.uidvalidity:
                return False
            if seen_before is None:
                with self.db.session() as session:
                    seen_before = sync.done_message_ids(session, account_id, folder)
            return bool(ref.message_id) and ref.message_id in seen_before

        handled: set[str] = set()  # this run's: the same bytes twice in one folder are one message
        group: list[MailRef] = []
        refs = source.scan(folder, position)
        for ref in self._new_refs(source, refs, account_id, folder, summary, stored_before):
            if ref.key in handled:
                continue
            handled.add(ref.key)
            if stored_before(ref):
                self._ingest_group(source, account_id, group, summary, deadline, lease)
                group = []
                self._commit_ingested(account_id, summary)
                self._tx(partial(self._record_seen_before, account_id=account_id, ref=ref))
                continue
            group.append(ref)
            if len(group) >= _GROUP:
                self._ingest_group(source, account_id, group, summary, deadline, lease)
                group = []
        self._ingest_group(source, account_id, group, summary, deadline, lease)
        self._commit_ingested(account_id, summary)
        current = source.position(folder)
        if current is None or current.uidvalidity is None:
            return  # local sources list every message on every scan
        with self.db.session() as session:
            retry = sync.workable_refs(session, account_id, folder, current.uidvalidity)
        group = []
        for ref in retry:
            if ref.key in handled:
                continue
            handled.add(ref.key)
            group.append(ref.model_copy(update={"account": source.account}))
            if len(group) >= _GROUP:
                self._ingest_group(source, account_id, group, summary, deadline, lease)
                group = []
        self._ingest_group(source, account_id, group, summary, deadline, lease)

    def _new_refs(
        self,
        source: MailSource,
        refs: Iterable[MailRef],
        account_id: int,
        folder: str,
        summary: AccountSummary,
        stored_before: Callable[[MailRef], bool],
    ) -> Iterator[MailRef]:
        """The scanned refs that are not done yet, looked up in chunks.

        Never all of a folder's keys at once: an IMAP scan lists only UIDs above the
        last one done, so a run with nothing new costs the same on any mailbox size.
        Each chunk is announced to a source that can fetch several messages at once
        (without the mails stored before a UIDVALIDITY change: they are not fetched).
        """
        prefetch = getattr(source, "prefetch", None)
        iterator = iter(refs)
        while chunk := list(itertools.islice(iterator, _KEY_CHUNK)):
            summary.seen += len(chunk)
            with self.db.session() as session:
                done = repo.known_message_keys(
                    session, account_id, folder, keys=[ref.key for ref in chunk]
                )
            new = [ref for ref in chunk if ref.key not in done]
            if prefetch is not None:
                prefetch([ref for ref in new if not stored_before(ref)])
            yield from new

    def _record_seen_before(self, session: Session, *, account_id: int, ref: MailRef) -> None:
        note = ParsedMail(message_id=ref.message_id, skipped=["stored before a UIDVALIDITY change"])
        repo.record_message(session, account_id, ref, note, [], status=Status.OK)
        sync.advance_position(session, account_id, ref)

    def _post_actions(self, source: MailSource, account_id: int, summary: AccountSummary) -> None:
        """after_ingest for mails whose documents are all extracted and committed."""
        with log_context(stage="post_action", message_key=None, document=None):
            self._apply_post_actions(source, account_id, summary)

    def _apply_post_actions(
        self, source: MailSource, account_id: int, summary: AccountSummary
    ) -> None:
        with self.db.session() as session:
            ready = sync.awaiting_post_action(session, account_id)
        for (folder, uidvalidity), uids in ready.items():
            current = source.position(folder)
            if current is None or current.uidvalidity != uidvalidity:
                continue  # those UIDs mean other mails now
            try:
                source.after_ingest(folder, uids)
            except (TransientError, BadInputError, ProtocolError) as exc:
                # The invoices are stored: a refused flag or move only waits for a later run.
                summary.status = "partial" if summary.status == "ok" else summary.status
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

    def _ingest_group(
        self,
        source: MailSource,
        account_id: int,
        refs: list[MailRef],
        summary: AccountSummary,
        deadline: Deadline,
        lease: LeaseKeeper,
    ) -> None:
        """Mails in folder order: fetched, walked in workers a batch at a time, ingested.

        A failure is recorded in its place in the folder order, after the mails
        before it. On a stop, the mails already fetched are still walked and
        ingested (``_ingest_folder`` then commits them), so as not to fetch them again.
        """
        fetched: list[tuple[MailRef, bytes]] = []
        size = 0
        try:
            for ref in refs:
                self._check(deadline, lease)
                try:
                    with self.switch.working(f"mail {ref.folder}:{ref.key[:12]} (fetch)"):
                        raw = self._fetch(source, ref)
                except Exception as exc:
                    decision = outcomes.decide(exc, Stage.INGEST)
                    if decision.outcome is Outcome.STOP_ACCOUNT:
                        raise  # fatal for the whole account (auth, quota, config)
                    self.switch.raise_if_tripped()  # a connection dropped by the stop
                    if decision.outcome is Outcome.BUG:
                        log.exception("account=%s key=%s bug", ref.account, ref.key[:12])
                    self._walk(account_id, fetched, summary)
                    fetched, size = [], 0
                    if isinstance(exc, CircuitOpenError):
                        self._not_tried(account_id, ref, exc, summary, counted=False)
                    else:
                        error = outcomes.as_error(exc, Stage.INGEST)
                        self._message_failed(account_id, ref, error, summary, counted=False)
                    continue
                fetched.append((ref, raw))
                size += len(raw)
                if size >= _PARSE_BYTES:
                    self._walk(account_id, fetched, summary)
                    fetched, size = [], 0
        except BaseException:
            if fetched and not lease.lost.is_set():
                with contextlib.suppress(Exception):
                    self._walk(account_id, fetched, summary, stopping=True)
            raise
        self._walk(account_id, fetched, summary)

    def _fetch(self, source: MailSource, ref: MailRef) -> bytes:
        if source.endpoint is None:
            return source.fetch(ref)
        return self.breakers.for_endpoint(source.endpoint).call(lambda: source.fetch(ref))

    def _walk(
        self,
        account_id: int,
        fetched: list[tuple[MailRef, bytes]],
        summary: AccountSummary,
        *,
        stopping: bool = False,
    ) -> None:
        """The MIME walk of ``fetched`` in a worker, then each mail ingested in order.

        The attempts count first, in one committed transaction: a run that dies in
        the walk (or later, on a link or the disk) has counted them, and a mail that
        used up its attempts that way is quarantined here instead of walked again.
        """
        if not fetched:
            return
        quarantined = self._tx(
            partial(
                attempts.start_messages,
                account=account_id,
                refs=[ref for ref, _ in fetched],
                owner=self.owner,
                max_attempts=self.settings.retries.item_attempts,
            )
        )
        raws = [raw for ref, raw in fetched if ref.key not in quarantined]
        label = f"{len(raws)} mail(s) from {fetched[0][0].folder} (walk)"
        with self.switch.working(label):
            # While stopping, the walk is bounded by the grace period, not the stop.
            check = None if stopping else self._check_item
            parsed = iter(self.mails.parse(raws, check=check))
        for ref, _ in fetched:
            with (
                log_context(stage="ingest", message_key=ref.key, document=None),
                self.switch.working(f"mail {ref.folder}:{ref.key[:12]}"),
            ):
                reason = quarantined.get(ref.key)
                if reason is not None:
                    log.warning("account=%s key=%s %s", ref.account, ref.key[:12], reason)
                    self._message_failed(
                        account_id, ref, MailQuarantined(reason), summary, stopping=stopping
                    )
                    continue
                self._ingest(account_id, ref, next(parsed), summary, stopping=stopping)

    def _ingest(
        self,
        account_id: int,
        ref: MailRef,
        parsed: ParsedMail | InvoiceSyncError,
        summary: AccountSummary,
        *,
        stopping: bool = False,
    ) -> None:
        if isinstance(parsed, InvoiceSyncError):
            if isinstance(parsed, BugError):
                log.error("account=%s key=%s bug: %s", ref.account, ref.key[:12], parsed)
            self._message_failed(account_id, ref, parsed, summary, stopping=stopping)
            return
        if stopping and self.settings.links.enabled and parsed.links and not parsed.attachments:
            # No downloads once stopped: the mail is left for the next run, untried.
            self._tx(partial(attempts.undo_message_start, account=account_id, ref=ref))
            return
        try:
            if self.settings.links.enabled:
                stages.follow_links(
                    parsed, self._download, limit=self.settings.links.max_per_message
                )
            # Links may carry access tokens: only their redacted form is ever stored.
            parsed.links = [redact_url(link) for link in parsed.links]
            documents = stages.store_documents(parsed, self.files, max_bytes=self.max_bytes)
        except Exception as exc:
            decision = outcomes.decide(exc, Stage.INGEST)
            if decision.outcome is Outcome.STOP_ACCOUNT:
                raise  # fatal for the whole account (auth, quota, config)
            if isinstance(exc, CircuitOpenError):
                self._not_tried(account_id, ref, exc, summary)
                return
            if decision.outcome is Outcome.BUG:
                log.exception("account=%s key=%s bug", ref.account, ref.key[:12])
            self._message_failed(account_id, ref, outcomes.as_error(exc, Stage.INGEST), summary)
            return
        parsed.attachments = []  # on disk now: a batch must not hold documents in memory
        if not self._ingested:
            self._ingested_since = time.monotonic()
        self._ingested.append(_Ingested(ref, parsed, documents))
        if (
            len(self._ingested) >= _COMMIT_EVERY
            or time.monotonic() - self._ingested_since >= _COMMIT_SECONDS
        ):
            self._commit_ingested(account_id, summary)

    def _commit_ingested(self, account_id: int, summary: AccountSummary) -> None:
        """Commit the messages read since the last commit, in one transaction.

        Should that fail, each is committed on its own, so that one bad message
        fails alone, as it would have without the batch.
        """
        batch, self._ingested = self._ingested, []
        if not batch:
            return

        def record_all(session: Session) -> None:
            self._record(session, account_id, batch)

        try:
            self._tx(record_all)
        except Exception:
            if len(batch) == 1:
                self._commit_one(account_id, batch[0], summary)
                return
            log.warning(
                "account=%s a batch of %d messages failed: one by one",
                *(summary.account, len(batch)),
            )
            for item in batch:
                self._commit_one(account_id, item, summary)
            return
        for item in batch:
            self._committed(item, summary)

    def _commit_one(self, account_id: int, item: _Ingested, summary: AccountSummary) -> None:
        with log_context(stage="ingest", message_key=item.ref.key, document=None):
            try:
                self._tx(lambda s: self._record(s, account_id, [item]))
            except Exception as exc:
                decision = outcomes.decide(exc, Stage.INGEST)
                if decision.outcome is Outcome.STOP_ACCOUNT:
                    raise
                if decision.outcome is Outcome.BUG:
                    log.exception("account=%s key=%s bug", item.ref.account, item.ref.key[:12])
                error = outcomes.as_error(exc, Stage.INGEST)
                self._message_failed(account_id, item.ref, error, summary)
                return
        self._committed(item, summary)

    @staticmethod
    def _committed(item: _Ingested, summary: AccountSummary) -> None:
        summary.new_messages += 1
        summary.documents += len(item.documents)

    def _record(self, session: Session, account_id: int, batch: list[_Ingested]) -> None:
        repo.record_messages(
            session,
            account_id,
            [repo.NewMessage(item.ref, item.parsed, item.documents) for item in batch],
            post_action=self._wants_post_action,
        )
        # The position only moves forward: the newest UID of each folder is enough.
        newest: dict[tuple[str, int | None], MailRef] = {}
        for item in batch:
            key = (item.ref.folder, item.ref.uidvalidity)
            if key not in newest or (item.ref.uid or 0) > (newest[key].uid or 0):
                newest[key] = item.ref
        for ref in newest.values():
            sync.advance_position(session, account_id, ref)

    def _not_tried(
        self,
        account_id: int,
        ref: MailRef,
        exc: CircuitOpenError,
        summary: AccountSummary,
        *,
        counted: bool = True,
    ) -> None:
        """An endpoint's circuit is open: the mail waits for the next run, not counted as tried.

        It is recorded all the same, so that later mails moving the folder position past
        it cannot make it forgotten.
        """
        self._commit_ingested(account_id, summary)
        record = partial(
            repo.record_message_failure,
            account=account_id,
            ref=ref,
            status=Status.PENDING,
            error=f"not tried: {exc}",
            attempt=False,
        )

        def not_tried(session: Session) -> None:
            record(session)
            if counted:
                attempts.undo_message_start(session, account_id, ref)
            sync.advance_position(session, account_id, ref)

        self._tx(not_tried)
        summary.left_pending += 1

    def _message_failed(
        self,
        account_id: int,
        ref: MailRef,
        exc: InvoiceSyncError,
        summary: AccountSummary,
        *,
        counted: bool = True,
        stopping: bool = False,
    ) -> None:
        """Record a mail's failure; ``counted``: its attempt was counted when its walk began."""
        if not stopping:
            self.switch.raise_if_tripped()  # failures caused by the stop itself are not recorded
        self._commit_ingested(account_id, summary)  # the position must pass them first
        decision = outcomes.decide(exc, Stage.INGEST)
        wanted = (
            Status.FAILED_TRANSIENT
            if decision.outcome is Outcome.RETRY_LATER
            else Status.FAILED_FATAL
        )
        reason = f"{decision.kind}: {exc}"

        def record(session: Session) -> str:
            status = repo.record_message_failure(
                session,
                account_id,
                ref,
                status=wanted,
                error=reason,
                max_attempts=self.settings.retries.item_attempts,
                attempt=not counted,
                unfinished=decision.unfinished,
            )
            sync.advance_position(session, account_id, ref)
            return status

        status = self._tx(record)
        summary.failed += 1
        summary.count_failure("ingest", exc.kind)
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("account=%s key=%s stage=ingest %s", ref.account, ref.key[:12], reason)

    # -------------------------------------------------------------- extract

    def _extract_pending(
        self, account_id: int, summary: AccountSummary, deadline: Deadline, lease: LeaseKeeper
    ) -> None:
        self._extract_claimed(account_id, summary, lambda: self._check(deadline, lease))

    def extract_backlog(self, summary: AccountSummary) -> None:
        """Workers, after the accounts: pending documents of any account, in claimed batches.

        A large backlog (an account's first run, a model outage over) then spreads
        over every worker instead of waiting for its account's next turn.
        """
        poll = min(0.25, self.settings.leases.ttl / 3)
        while True:
            self._extract_claimed(None, summary, self._check_run)
            with self._tried_lock:
                tried = set(self._tried)
            with self.db.session() as session:
                if not work.claimed_elsewhere(session, self.owner, tried):
                    return
            self.switch.event.wait(poll)  # another worker's batch: done soon, or it expires
            self._check_run()

    def _check_run(self) -> None:
        self.switch.raise_if_tripped()
        if self._deadline.expired:
            raise RunAborted(f"run deadline of {self.settings.timeouts.run:g}s reached")

    def _extract_claimed(
        self, account_id: int | None, summary: AccountSummary, check: Callable[[], None]
    ) -> None:
        """Claim workable documents in batches and extract them, until none is left.

        A claim keeps other runs off these documents while this one works them
        (``store.work``); each document is tried once per run. Every XML document
        is done before any PDF, so that a PDF beside its XML is recognised as its
        rendering even when documents are extracted side by side.
        """
        for xml in (True, False):
            # A model answer takes seconds: documents go to it side by side, up to its
            # max_concurrency; without a model, one per worker process.
            if self._side_by_side() > 1:
                self._extract_side_by_side(account_id, summary, check, xml)
                continue
            while True:
                check()
                batch = self._claim(account_id, _BATCH, xml)
                if not batch:
                    break
                try:
                    for document in batch:
                        check()
                        self._extract_one(document, summary)
                finally:
                    self._release([document.id for document in batch])

    def _claim(self, account_id: int | None, limit: int, xml: bool) -> list[Document]:
        with self._tried_lock:
            tried = set(self._tried)
        batch = self._tx(
            partial(
                work.claim_documents,
                owner=self.owner,
                ttl=self.settings.leases.ttl,
                limit=limit,
                account=account_id,
                exclude=tried,
                xml=xml,
            )
        )
        with self._tried_lock:
            self._tried.update(document.id for document in batch)
        return batch

    def _release(self, ids: list[int]) -> None:
        if ids:
            self._tx(partial(work.release_documents, owner=self.owner, ids=ids))

    def _side_by_side(self) -> int:
        """Documents in flight at once: the model's slots, else the worker processes."""
        if self.extractors.uses_model:
            return self.settings.openai.max_concurrency
        return self.reader.pool.processes

    def _extract_side_by_side(
        self,
        account_id: int | None,
        summary: AccountSummary,
        check: Callable[[], None],
        xml: bool,
    ) -> None:
        """Up to max_concurrency documents at the model at once, without gaps between batches.

        The next batch is claimed while the current one is still being read, as soon as
        fewer documents wait than there are slots, so a slot never idles for a claim.
        Each batch's claims are released once all its documents are done.
        """
        workers = self._side_by_side()
        merge = threading.Lock()
        context = logs.current_context()

        def one(document: Document) -> None:
            with log_context(**context):  # pool threads start with an empty context
                check()
                mine = AccountSummary(summary.account)
                try:
                    self._extract_one(document, mine)
                finally:
                    with merge:
                        summary.merge(mine)

        batches: list[tuple[list[int], list[Future[None]]]] = []
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="extract") as pool:
                try:
                    claiming = True
                    while True:
                        waiting = sum(
                            not future.running() and not future.done()
                            for _, futures in batches
                            for future in futures
                        )
                        if claiming and waiting < workers:
                            check()
                            batch = self._claim(account_id, _BATCH * workers, xml)
                            claiming = bool(batch)
                            if batch:
                                futures = [pool.submit(one, document) for document in batch]
                                batches.append(([document.id for document in batch], futures))
                        for ids, futures in list(batches):
                            done = [future for future in futures if future.done()]
                            for future in done:
                                future.result()  # the first stop (deadline, abort) ends all
                            if len(done) == len(futures):  # each one's result() was read
                                batches.remove((ids, futures))
                                self._release(ids)
                        live = [f for _, futures in batches for f in futures if not f.done()]
                        if not live and not claiming:
                            return
                        if live:
                            wait(live, return_when=FIRST_COMPLETED)
                except BaseException:
                    for _, futures in batches:
                        for future in futures:
                            future.cancel()
                    raise
        finally:
            self._release([id_ for ids, _ in batches for id_ in ids])

    def _extract_one(self, document: Document, summary: AccountSummary) -> None:
        with log_context(stage="extract", message_key=None, document=document.sha256[:12]):
            self._extract(document, summary)

    def _extract(self, document: Document, summary: AccountSummary) -> None:
        # Once the model endpoint refused us, only extractors without it run this time.
        without_model = bool(self.model_down) and self.extractors.uses_model
        # The attempt counts before any work: a run that dies on it has still used it.
        quarantined = self._tx(
            partial(
                attempts.start_document,
                document=document.id,
                owner=self.owner,
                max_attempts=self.settings.retries.item_attempts,
            )
        )
        if quarantined is not None:
            if quarantined.startswith("quarantined"):
                summary.failed += 1
                summary.count_failure("extract", "quarantined")
                log.warning("document=%s stage=extract %s", document.sha256[:12], quarantined)
            return
        try:
            with self.switch.working(f"document:{document.id} ({document.filename or 'unnamed'})"):
                invoice = self.reader.read(
                    document,
                    model=not without_model,
                    deadline=self._account_deadline,
                    check=self._check_item,
                )
        except AccountStopped:
            raise
        except Exception as exc:
            self._extract_failed(document, exc, summary)
            return
        if invoice is None and without_model and document.kind == "pdf":
            self._untried(document, summary)  # maybe an invoice the model reads: next run
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

    def _extract_failed(self, document: Document, exc: Exception, summary: AccountSummary) -> None:
        decision = outcomes.decide(exc, Stage.EXTRACT)
        if decision.outcome is Outcome.LEAVE_UNTRIED:
            self._untried(document, summary)
            return
        if decision.outcome is Outcome.STOP_ENDPOINT:
            # Bad key, no quota, unknown model: stop calling the endpoint for the whole run
            # (every account); its documents stay pending, untouched, for a later run.
            self.model_down.append(str(exc))
            summary.status, summary.error = "fatal", f"model endpoint: {exc}"
            summary.count_failure("extract", decision.kind)
            self._untried(document, summary)
            log.error("document=%s stage=extract fatal: %s", document.sha256[:12], exc)
            return
        self.switch.raise_if_tripped()  # a failure the stop caused is not the document's
        if decision.outcome is Outcome.BUG:  # logged once, with its traceback: fix it
            if isinstance(exc, RemoteBug):
                log.error(
                    "document=%s stage=extract bug in a worker: %s\n%s",
                    *(document.sha256[:12], exc, exc.remote_traceback),
                )
            else:
                log.error("document=%s stage=extract bug", document.sha256[:12], exc_info=exc)
        self._document_failed(document, outcomes.as_error(exc, Stage.EXTRACT), summary, decision)

    def _check_item(self) -> None:
        """While a worker parses: a stop or the account's deadline ends the document."""
        self.switch.raise_if_tripped()
        if self._account_deadline.expired:
            raise AccountStopped(
                "deadline", f"account deadline of {self.settings.timeouts.account:g}s reached"
            )

    def _untried(self, document: Document, summary: AccountSummary) -> None:
        """Left for a later run, not counted as tried (an open circuit, a refused model)."""
        self._tx(partial(attempts.undo_start, document=document.id))
        summary.left_pending += 1

    def _document_failed(
        self,
        document: Document,
        exc: Exception,
        summary: AccountSummary,
        decision: Decision | None = None,
    ) -> None:
        decision = decision or outcomes.decide(exc, Stage.EXTRACT)
        wanted, kind = decision.status, decision.kind
        reason = f"{kind}: {exc}"
        status = self._tx(
            lambda s: repo.record_document_outcome(
                s,
                document.id,
                status=wanted,
                error=reason,
                max_attempts=self.settings.retries.item_attempts,
                unfinished=decision.unfinished,
            )
        )
        summary.failed += 1
        summary.count_failure("extract", kind)
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("document=%s stage=extract %s", document.sha256[:12], reason)
