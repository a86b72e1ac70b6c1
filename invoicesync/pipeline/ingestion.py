"""Ingestion: each folder's new mails fetched, walked in the workers, their documents stored.

Mails go in folder order, in groups: fetched one by one (a source that can,
prefetches each chunk), then walked a batch at a time in the worker processes
(``mail_reader``), then each one's links followed and documents written, and
handed to ``mail_records`` to commit. Between two mails the account's checks run,
so a stop always falls between two commits; what a stop leaves fetched is still
walked and committed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from invoicesync.errors import BugError, InvoiceSyncError, MailQuarantined
from invoicesync.fetch.redact import redact_url
from invoicesync.logs import log_context
from invoicesync.mail.source import MailSource
from invoicesync.models import MailRef, ParsedMail
from invoicesync.pipeline import outcomes, stages
from invoicesync.pipeline.context import AccountScope, RunContext
from invoicesync.pipeline.downloads import LinkDownloads
from invoicesync.pipeline.mail_reader import MailResult
from invoicesync.pipeline.mail_records import Ingested, MailRecords
from invoicesync.pipeline.outcomes import Outcome, Stage
from invoicesync.pipeline.summary import AccountSummary
from invoicesync.resilience.breaker import CircuitOpenError
from invoicesync.store import attempts, sync
from invoicesync.store import repository as repo

__all__ = ["Ingestion"]

log = logging.getLogger(__name__)
# Scanned messages looked up in the database at a time.
_KEY_CHUNK = 500
# Mails fetched, then walked, as one group.
_GROUP = 50
# One worker call walks up to this many mails or bytes of raw mail: big enough that a
# call's cost vanishes, small enough that every worker gets a batch while the run's
# own thread fetches the next one, and that a batch never holds much memory.
_WALK_MAILS = 16
_WALK_BYTES = 4 * 1024 * 1024


@dataclass
class _Walk:
    """Mails fetched (in folder order) and their walk in a worker, maybe still going."""

    fetched: list[tuple[MailRef, bytes]]
    quarantined: dict[str, str]
    future: Future[list[MailResult]]


class Ingestion:
    """The new mails of one account's folders, into ``records``."""

    def __init__(
        self,
        ctx: RunContext,
        scope: AccountScope,
        records: MailRecords,
        downloads: LinkDownloads,
    ) -> None:
        self.ctx = ctx
        self.scope = scope
        self.records = records
        self.downloads = downloads
        # Walks in flight, oldest first: ingested strictly in folder order.
        self._inflight: deque[_Walk] = deque()
        self._walkers: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._walkers is not None:
            self._walkers.shutdown(wait=True, cancel_futures=True)

    def _lease_lost(self) -> bool:
        return self.scope.lease is not None and self.scope.lease.lost.is_set()

    def ingest_folder(
        self,
        source: MailSource,
        account_id: int,
        folder: str,
        summary: AccountSummary,
    ) -> None:
        try:
            self._ingest_folder_items(source, account_id, folder, summary)
        except BaseException:
            # On a stop the messages already read are committed, so as not to read them
            # again; not once the lease is lost (another run may be storing them), and
            # never at the cost of the error that stopped us.
            if self._lease_lost():
                self._inflight.clear()
                self.records.drop()
            else:
                with contextlib.suppress(Exception):
                    self._drain(account_id, summary, stopping=True)
                with contextlib.suppress(Exception):
                    self.records.commit(account_id, summary)
            raise
        self.records.commit(account_id, summary)

    def _ingest_folder_items(
        self,
        source: MailSource,
        account_id: int,
        folder: str,
        summary: AccountSummary,
    ) -> None:
        with self.ctx.db.session() as session:
            position = sync.folder_position(session, account_id, folder)
        seen_before: set[str] | None = None

        def stored_before(ref: MailRef) -> bool:
            """After a UIDVALIDITY change, mails stored before are recognised by Message-ID."""
            nonlocal seen_before
            if position is None or ref.uidvalidity == position.uidvalidity:
                return False
            if seen_before is None:
                with self.ctx.db.session() as session:
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
                self._ingest_group(source, account_id, group, summary)
                group = []
                self._drain(account_id, summary)
                self.records.commit(account_id, summary)
                self.ctx.tx(
                    partial(self.records.record_seen_before, account_id=account_id, ref=ref)
                )
                continue
            group.append(ref)
            if len(group) >= _GROUP:
                self._ingest_group(source, account_id, group, summary)
                group = []
        self._ingest_group(source, account_id, group, summary)
        self._drain(account_id, summary)
        self.records.commit(account_id, summary)
        current = source.position(folder)
        if current is None or current.uidvalidity is None:
            return  # local sources list every message on every scan
        with self.ctx.db.session() as session:
            retry = sync.workable_refs(session, account_id, folder, current.uidvalidity)
        group = []
        for ref in retry:
            if ref.key in handled:
                continue
            handled.add(ref.key)
            group.append(ref.model_copy(update={"account": source.account}))
            if len(group) >= _GROUP:
                self._ingest_group(source, account_id, group, summary)
                group = []
        self._ingest_group(source, account_id, group, summary)
        self._drain(account_id, summary)

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
            with self.ctx.db.session() as session:
                done = repo.known_message_keys(
                    session, account_id, folder, keys=[ref.key for ref in chunk]
                )
            new = [ref for ref in chunk if ref.key not in done]
            if prefetch is not None:
                prefetch([ref for ref in new if not stored_before(ref)])
            yield from new

    def _ingest_group(
        self,
        source: MailSource,
        account_id: int,
        refs: list[MailRef],
        summary: AccountSummary,
    ) -> None:
        """Mails in folder order: fetched, walked in workers a batch at a time, ingested.

        While the workers walk, this thread fetches the next batch; the walks are
        ingested in folder order as they end (``_drain`` waits for all). A failure is
        recorded in its place in the folder order, after the mails before it. On a
        stop, the mails already fetched are still walked and ingested
        (``ingest_folder`` then commits them), so as not to fetch them again.
        """
        fetched: list[tuple[MailRef, bytes]] = []
        size = 0
        try:
            for ref in refs:
                self.scope.check()
                try:
                    with self.ctx.switch.working(f"mail {ref.folder}:{ref.key[:12]} (fetch)"):
                        raw = self._fetch(source, ref)
                except Exception as exc:
                    decision = outcomes.decide(exc, Stage.INGEST)
                    if decision.outcome is Outcome.STOP_ACCOUNT:
                        raise  # fatal for the whole account (auth, quota, config)
                    self.ctx.switch.raise_if_tripped()  # a connection dropped by the stop
                    if decision.outcome is Outcome.BUG:
                        log.exception("account=%s key=%s bug", ref.account, ref.key[:12])
                    self._walk(account_id, fetched, summary)
                    fetched, size = [], 0
                    if isinstance(exc, CircuitOpenError):
                        self.records.not_tried(account_id, ref, exc, summary, counted=False)
                    else:
                        error = outcomes.as_error(exc, Stage.INGEST)
                        self.records.message_failed(account_id, ref, error, summary, counted=False)
                    continue
                fetched.append((ref, raw))
                size += len(raw)
                if size >= _WALK_BYTES or len(fetched) >= _WALK_MAILS:
                    self._submit(account_id, fetched, summary)
                    fetched, size = [], 0
        except BaseException:
            if not self._lease_lost():
                with contextlib.suppress(Exception):
                    self._submit(account_id, fetched, summary, stopping=True)
                    self._drain(account_id, summary, stopping=True)
            raise
        self._submit(account_id, fetched, summary)

    def _fetch(self, source: MailSource, ref: MailRef) -> bytes:
        if source.endpoint is None:
            return source.fetch(ref)
        return self.ctx.breakers.for_endpoint(source.endpoint).call(lambda: source.fetch(ref))

    def _walk(
        self, account_id: int, fetched: list[tuple[MailRef, bytes]], summary: AccountSummary
    ) -> None:
        """Walk and ingest ``fetched`` now, after every walk in flight (before a failure)."""
        self._submit(account_id, fetched, summary)
        self._drain(account_id, summary)

    def _submit(
        self,
        account_id: int,
        fetched: list[tuple[MailRef, bytes]],
        summary: AccountSummary,
        *,
        stopping: bool = False,
    ) -> None:
        """Start the MIME walk of ``fetched`` in a worker; ingest the walks that are due.

        The attempts count first, in one committed transaction: a run that dies in
        the walk (or later, on a link or the disk) has counted them, and a mail that
        used up its attempts that way is quarantined instead of walked again.
        """
        if fetched:
            quarantined = self.ctx.tx(
                partial(
                    attempts.start_messages,
                    account=account_id,
                    refs=[ref for ref, _ in fetched],
                    owner=self.ctx.owner,
                    max_attempts=self.ctx.settings.retries.item_attempts,
                )
            )
            raws = [raw for ref, raw in fetched if ref.key not in quarantined]
            # While stopping, the walk is bounded by the grace period, not the stop.
            check = None if stopping else self.scope.check_item
            label = f"{len(raws)} mail(s) from {fetched[0][0].folder} (walk)"
            walk = partial(self._parse, raws, check, label)
            if stopping or len(raws) == 0:
                future: Future[list[MailResult]] = Future()
                future.set_result(walk())
            else:
                future = self._executor().submit(walk)
            self._inflight.append(_Walk(list(fetched), quarantined, future))
        # One walk per worker in flight; the oldest is ingested once more are waiting.
        while len(self._inflight) > self.ctx.mails.pool.processes:
            self._finish(account_id, self._inflight.popleft(), summary, stopping=stopping)

    def _parse(
        self, raws: list[bytes], check: Callable[[], None] | None, label: str
    ) -> list[MailResult]:
        with self.ctx.switch.working(label):
            return self.ctx.mails.parse(raws, check=check)

    def _executor(self) -> ThreadPoolExecutor:
        if self._walkers is None:
            self._walkers = ThreadPoolExecutor(
                self.ctx.mails.pool.processes, thread_name_prefix="walk"
            )
        return self._walkers

    def _drain(self, account_id: int, summary: AccountSummary, *, stopping: bool = False) -> None:
        """Ingest every walk in flight, in folder order."""
        while self._inflight:
            self._finish(account_id, self._inflight.popleft(), summary, stopping=stopping)

    def _finish(
        self, account_id: int, walk: _Walk, summary: AccountSummary, *, stopping: bool
    ) -> None:
        if stopping:
            try:
                results = walk.future.result()
            except BaseException:  # the stop cut this walk off: its mails wait for a run
                return
        else:
            results = walk.future.result()  # a stop or deadline raised in the walk: ours
        parsed = iter(results)
        for ref, _ in walk.fetched:
            with (
                log_context(stage="ingest", message_key=ref.key, document=None),
                self.ctx.switch.working(f"mail {ref.folder}:{ref.key[:12]}"),
            ):
                reason = walk.quarantined.get(ref.key)
                if reason is not None:
                    log.warning("account=%s key=%s %s", ref.account, ref.key[:12], reason)
                    self.records.message_failed(
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
            self.records.message_failed(account_id, ref, parsed, summary, stopping=stopping)
            return
        if stopping and self.ctx.settings.links.enabled and parsed.links and not parsed.attachments:
            # No downloads once stopped: the mail is left for the next run, untried.
            self.ctx.tx(partial(attempts.undo_message_start, account=account_id, ref=ref))
            return
        try:
            if self.ctx.settings.links.enabled:
                stages.follow_links(
                    parsed, self.downloads.download, limit=self.ctx.settings.links.max_per_message
                )
            # Links may carry access tokens: only their redacted form is ever stored.
            parsed.links = [redact_url(link) for link in parsed.links]
            documents = stages.store_documents(parsed, self.ctx.files, max_bytes=self.ctx.max_bytes)
        except Exception as exc:
            decision = outcomes.decide(exc, Stage.INGEST)
            if decision.outcome is Outcome.STOP_ACCOUNT:
                raise  # fatal for the whole account (auth, quota, config)
            if isinstance(exc, CircuitOpenError):
                self.records.not_tried(account_id, ref, exc, summary)
                return
            if decision.outcome is Outcome.BUG:
                log.exception("account=%s key=%s bug", ref.account, ref.key[:12])
            self.records.message_failed(
                account_id, ref, outcomes.as_error(exc, Stage.INGEST), summary
            )
            return
        parsed.attachments = []  # on disk now: a batch must not hold documents in memory
        self.records.add(account_id, Ingested(ref, parsed, documents), summary)
