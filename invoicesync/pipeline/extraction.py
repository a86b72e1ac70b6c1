"""Extraction: the workable documents claimed in batches and read, each outcome recorded.

A claim keeps other runs off the documents while this one works them
(``store.work``); each document is tried once per run, its attempt counted when
it starts (``store.attempts``). Reading (``document_reader``) parses in the worker
processes; documents go side by side, up to the model's slots, else one per worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial

from invoicesync import logs
from invoicesync.errors import AccountStopped
from invoicesync.logs import log_context
from invoicesync.pipeline import outcomes, stages
from invoicesync.pipeline.context import AccountScope, RunContext
from invoicesync.pipeline.outcomes import Decision, Outcome, Stage
from invoicesync.pipeline.summary import AccountSummary
from invoicesync.resilience.processes import RemoteBug
from invoicesync.store import attempts, work
from invoicesync.store import repository as repo
from invoicesync.store.schema import Document, Status

__all__ = ["Extraction"]

log = logging.getLogger(__name__)
# Documents claimed per batch and per model slot: enough to keep every slot busy,
# few enough that a killed worker holds back little.
_BATCH = 4


class Extraction:
    """The documents of one account (or, for ``extract_backlog``, of any)."""

    def __init__(self, ctx: RunContext, scope: AccountScope) -> None:
        self.ctx = ctx
        self.scope = scope

    def extract_pending(self, account_id: int, summary: AccountSummary) -> None:
        """The account's workable documents (after its ingestion)."""
        self._extract_claimed(account_id, summary, self.scope.check)

    def extract_backlog(self, summary: AccountSummary) -> None:
        """Workers, after the accounts: pending documents of any account, in claimed batches.

        A large backlog (an account's first run, a model outage over) then spreads
        over every worker instead of waiting for its account's next turn.
        """
        poll = min(0.25, self.ctx.settings.leases.ttl / 3)
        while True:
            self._extract_claimed(None, summary, self.ctx.check_run)
            with self.ctx.tried_lock:
                tried = set(self.ctx.tried_documents)
            with self.ctx.db.session() as session:
                if not work.claimed_elsewhere(session, self.ctx.owner, tried):
                    return
            self.ctx.switch.event.wait(poll)  # another worker's batch: done soon, or it expires
            self.ctx.check_run()

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
        with self.ctx.tried_lock:
            tried = set(self.ctx.tried_documents)
        batch = self.ctx.tx(
            partial(
                work.claim_documents,
                owner=self.ctx.owner,
                ttl=self.ctx.settings.leases.ttl,
                limit=limit,
                account=account_id,
                exclude=tried,
                xml=xml,
            )
        )
        with self.ctx.tried_lock:
            self.ctx.tried_documents.update(document.id for document in batch)
        return batch

    def _release(self, ids: list[int]) -> None:
        if ids:
            self.ctx.tx(partial(work.release_documents, owner=self.ctx.owner, ids=ids))

    def _side_by_side(self) -> int:
        """Documents in flight at once: the model's slots, else the worker processes."""
        if self.ctx.extractors.uses_model:
            return self.ctx.settings.openai.max_concurrency
        return self.ctx.reader.pool.processes

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
        without_model = bool(self.ctx.model_down) and self.ctx.extractors.uses_model
        # The attempt counts before any work: a run that dies on it has still used it.
        quarantined = self.ctx.tx(
            partial(
                attempts.start_document,
                document=document.id,
                owner=self.ctx.owner,
                max_attempts=self.ctx.settings.retries.item_attempts,
            )
        )
        if quarantined is not None:
            if quarantined.startswith("quarantined"):
                summary.failed += 1
                summary.count_failure("extract", "quarantined")
                log.warning("document=%s stage=extract %s", document.sha256[:12], quarantined)
            return
        try:
            with self.ctx.switch.working(
                f"document:{document.id} ({document.filename or 'unnamed'})"
            ):
                invoice = self.ctx.reader.read(
                    document,
                    model=not without_model,
                    deadline=self.scope.deadline,
                    check=self.scope.check_item,
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
            self.ctx.tx(
                lambda s: repo.record_document_outcome(s, document.id, status=Status.NO_INVOICE)
            )
            return
        outcome = self.ctx.tx(lambda s: stages.store_invoice(s, document, invoice))
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
            self.ctx.model_down.append(str(exc))
            summary.status, summary.error = "fatal", f"model endpoint: {exc}"
            summary.count_failure("extract", decision.kind)
            self._untried(document, summary)
            log.error("document=%s stage=extract fatal: %s", document.sha256[:12], exc)
            return
        self.ctx.switch.raise_if_tripped()  # a failure the stop caused is not the document's
        if decision.outcome is Outcome.BUG:  # logged once, with its traceback: fix it
            if isinstance(exc, RemoteBug):
                log.error(
                    "document=%s stage=extract bug in a worker: %s\n%s",
                    *(document.sha256[:12], exc, exc.remote_traceback),
                )
            else:
                log.error("document=%s stage=extract bug", document.sha256[:12], exc_info=exc)
        self._document_failed(document, outcomes.as_error(exc, Stage.EXTRACT), summary, decision)

    def _untried(self, document: Document, summary: AccountSummary) -> None:
        """Left for a later run, not counted as tried (an open circuit, a refused model)."""
        self.ctx.tx(partial(attempts.undo_start, document=document.id))
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
        status = self.ctx.tx(
            lambda s: repo.record_document_outcome(
                s,
                document.id,
                status=wanted,
                error=reason,
                max_attempts=self.ctx.settings.retries.item_attempts,
                unfinished=decision.unfinished,
            )
        )
        summary.failed += 1
        summary.count_failure("extract", kind)
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("document=%s stage=extract %s", document.sha256[:12], reason)
