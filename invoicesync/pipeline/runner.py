"""One run: every account, side by side, each under its lease and deadline; the summary.

The run row is written first and finished last, whatever happens in between;
each account claims its lease (an overlapping run skips it) and hands its work
to ``pipeline.account.AccountJob``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from invoicesync.config import AccountSettings, Settings, parse_interval
from invoicesync.errors import RunAborted, TransientError
from invoicesync.extract.local import PRELOAD
from invoicesync.extract.select import ExtractorSelection
from invoicesync.logs import log_context
from invoicesync.mail.source import MailSource
from invoicesync.pipeline.account import AccountJob
from invoicesync.pipeline.context import RunContext
from invoicesync.pipeline.document_reader import DocumentReader
from invoicesync.pipeline.lease_keeper import ClaimKeeper, LeaseKeeper
from invoicesync.pipeline.mail_reader import MailReader
from invoicesync.pipeline.summary import AccountSummary, ModelUsage, RunResult
from invoicesync.resilience.breaker import Breakers
from invoicesync.resilience.processes import WorkerPool
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline
from invoicesync.resilience.watchdog import StopSwitch
from invoicesync.store import leases, work
from invoicesync.store import repository as repo
from invoicesync.store.cache import DatabaseResultStore
from invoicesync.store.db import Database
from invoicesync.store.files import DocumentFiles

__all__ = ["AccountSummary", "RunResult", "Runner"]

# How long the main thread blocks at a time while the accounts run (see _wait_awake).
_NAP = 0.2

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runner:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        switch: StopSwitch | None = None,
        source_factory: Callable[[AccountSettings], MailSource] | None = None,
        on_start: Callable[[RunResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_start = on_start
        self.db = database
        self.switch = switch or StopSwitch()
        self.files = DocumentFiles(settings.storage.dir)
        self.breakers = Breakers(settings.breaker)
        self.cache = (
            DatabaseResultStore(database, ttl_hours=settings.cache.ttl_hours)
            if settings.cache.enabled
            else None
        )
        self.extractors = ExtractorSelection(
            settings, cancel=self.switch.event, breakers=self.breakers, cache=self.cache
        )
        # Documents are parsed in worker processes, started at the first one.
        self.pool = WorkerPool(
            processes=settings.extract.worker_count(),
            memory_mb=settings.extract.memory_mb,
            preload=(*PRELOAD, "invoicesync.pipeline.mail_reader"),
        )
        self.reader = DocumentReader(settings, self.extractors, self.pool, self.files)
        self.mails = MailReader(self.pool, timeout=settings.timeouts.extract_document)
        self.run_id: int | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self.deadline = Deadline(settings.timeouts.run)
        self._store_retry = RetryPolicy(settings.retries, stage="store", cancel=self.switch.event)
        self.context = RunContext(
            settings=settings,
            db=database,
            switch=self.switch,
            files=self.files,
            breakers=self.breakers,
            extractors=self.extractors,
            reader=self.reader,
            mails=self.mails,
            deadline=self.deadline,
            tx=self.tx,
            source_factory=source_factory,
        )

    # ------------------------------------------------------------------ run

    def run(self, *, worker: bool = False) -> RunResult:
        """Every account once; ``worker``: claim due accounts, then pending documents,
        alongside other workers on the same database, until nothing is left."""
        host = socket.gethostname()
        self.started_at = dt.datetime.now(dt.UTC)
        self.run_id = run_id = self.tx(lambda s: self._start(s, host))
        self.context.owner = leases.owner_id(run_id)
        with log_context(run_id=run_id):
            log.info("run %d started on %s%s", run_id, host, " as a worker" if worker else "")
            return self._run(run_id, worker)

    def _run(self, run_id: int, worker: bool) -> RunResult:
        result = RunResult(run_id=run_id, status="running")
        claims = ClaimKeeper(self.db, self.context.owner, self.settings.leases.ttl)
        # A stop reaches a busy worker through its caller's check, which kills it within
        # a tenth of a second: the pool itself stays usable, so that mails already
        # fetched can still be walked and committed during the grace period.
        try:
            if self.cache is not None and self.extractors.uses_model:
                self._purge_cache()
            claims.start()
            if worker:
                self._work_due_accounts(result)
                self._extract_backlog(result)
            else:
                self._work_all_accounts(result)
            result.status = {0: "ok", 1: "partial", 3: "fatal", 4: "aborted"}[result.exit_code]
        except RunAborted as stop:
            result.status, result.error = stop.status, stop.reason
            raise
        except BaseException as exc:  # a bug: the run row must not stay "running"
            result.status, result.error = "crashed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.pool.close()
            claims.stop()  # and gives back any claim still held
            self.extractors.close()  # the model client's keep-alive connections
            result.model = self.model_usage()
            counts: dict[str, Any] = {"accounts": [asdict(a) for a in result.accounts]}
            if result.model is not None:
                counts["model"] = asdict(result.model)
            with self.db.transaction() as session:
                repo.finish_run(
                    session, run_id, status=result.status, counts=counts, error=result.error
                )
        return result

    def _work_all_accounts(self, result: RunResult) -> None:
        result.accounts = [AccountSummary(a.name) for a in self.settings.accounts]
        if self.on_start is not None:
            self.on_start(result)  # e.g. the progress display, which reads the summaries
        workers = max(1, min(self.settings.run.parallel_accounts, len(result.accounts)))
        # Accounts run side by side, each under its own deadline and lease; one
        # account's failure is recorded in its summary and never stops the others.
        with ThreadPoolExecutor(workers, thread_name_prefix="account") as pool:
            futures = [
                pool.submit(self._run_account, account, summary)
                for account, summary in zip(self.settings.accounts, result.accounts, strict=True)
            ]
            _wait_awake(futures)  # re-raises RunAborted from any account

    def _work_due_accounts(self, result: RunResult) -> None:
        """Claim due accounts one by one (``parallel_accounts`` at a time) until none is due.

        An account is due when no run has worked it to the end within the last half
        of ``[schedule] every``: each cycle of a CronJob works it once, whichever
        worker gets it. Due accounts leased by a live worker are waited for, so that
        a worker killed mid-account has its account finished once its lease expires.
        """
        by_name = {a.name: a for a in self.settings.accounts}
        every = parse_interval(self.settings.schedule.every)
        due_before = self.started_at - dt.timedelta(seconds=every / 2)
        self.tx(lambda s: work.ensure_accounts(s, list(by_name)))
        if self.on_start is not None:
            self.on_start(result)
        poll = min(0.25, self.settings.leases.ttl / 3)
        # One thread at a time claims (siblings share the run's lease owner) and records.
        lock = threading.Lock()

        def claim() -> tuple[int, str] | None:
            with lock:
                return self.tx(
                    lambda session: work.claim_due_account(
                        session,
                        by_name,
                        owner=self.context.owner,
                        ttl=self.settings.leases.ttl,
                        due_before=due_before,
                    )
                )

        def loop() -> None:
            while True:
                self.switch.raise_if_tripped()
                if self.deadline.expired:
                    raise RunAborted(f"run deadline of {self.settings.timeouts.run:g}s reached")
                claimed = claim()
                if claimed is None:
                    with self.db.session() as session:
                        waiting = work.due_accounts(session, by_name, due_before)
                    if not waiting:
                        return  # every account is done for this cycle
                    self.switch.event.wait(poll)  # leased by a live worker, or just freed
                    continue
                summary = AccountSummary(claimed[1])
                with lock:
                    result.accounts.append(summary)
                self._run_account(by_name[claimed[1]], summary)

        workers = max(1, min(self.settings.run.parallel_accounts, len(by_name)))
        with ThreadPoolExecutor(workers, thread_name_prefix="worker") as pool:
            _wait_awake([pool.submit(loop) for _ in range(workers)])

    def _extract_backlog(self, result: RunResult) -> None:
        """Pending documents of any account, claimed in batches alongside other workers."""
        summary = AccountSummary("(backlog)")
        AccountJob(self.context).extract_backlog(summary)
        if summary.documents or summary.failed or summary.invoices or summary.left_pending:
            result.accounts.append(summary)

    def model_usage(self) -> ModelUsage | None:
        """Calls, cache hits, tokens and estimated cost of the model; None when unused."""
        model = self.extractors.model
        if model is None:
            return None
        usage = ModelUsage(
            model=model.model,
            calls=model.calls,
            cache_hits=self.extractors.cache.hits if self.extractors.cache else 0,
            prompt_tokens=model.prompt_tokens,
            completion_tokens=model.completion_tokens,
        )
        price = self.settings.openai.prices.get(model.model)
        if price is not None:
            usage.cost_usd = round(
                (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6,
                6,
            )
        return usage

    def _purge_cache(self) -> None:
        assert self.cache is not None
        try:
            purged = self.cache.purge()
        except TransientError as exc:  # housekeeping only: the run goes on
            log.warning("could not purge the model cache: %s", exc)
            return
        if purged:
            log.info("purged %d expired model cache entries", purged)

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

    def tx(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction, retried when the database is busy."""

        def attempt() -> T:
            with self.db.transaction() as session:
                return work(session)

        return self._store_retry.call(attempt, deadline=self.deadline)

    def _run_account(self, account: AccountSettings, summary: AccountSummary) -> None:
        summary.phase = "connecting"
        try:
            with log_context(run_id=self.run_id, account=account.name):
                self._work_account(account, summary)
        finally:
            summary.phase = "done"
        log.info("account=%s finished: %s", account.name, summary.status)

    def _work_account(self, account: AccountSettings, summary: AccountSummary) -> None:
        assert self.run_id is not None
        account_id = self.tx(lambda s: repo.account_id(s, account.name))
        lease = LeaseKeeper(
            self.db, work.account_lease(account.name), self.context.owner, self.settings.leases.ttl
        )
        try:
            acquired = lease.acquire()
        except TransientError as exc:  # the database is busy or away: try next run
            summary.status, summary.error = "partial", f"could not claim the account: {exc}"
            return
        if not acquired:
            summary.status = "skipped"
            summary.error = f"skipped: another run is working this account ({lease.holder})"
            log.info("account=%s %s", account.name, summary.error)
            return
        try:
            AccountJob(self.context).work(account, account_id, summary, lease)
            # Worked for this cycle, whatever the outcome: what failed waits for the next one.
            self.tx(partial(work.mark_done, account=account_id, started_at=self.started_at))
        finally:
            lease.release()
        reason = summary.error if summary.status == "needs_reconnect" else None
        if summary.status in {"ok", "needs_reconnect"}:
            self.tx(partial(repo.set_needs_reconnect, account=account_id, reason=reason))
        if summary.left_pending:
            endpoints = ", ".join(self.breakers.open_endpoints()) or "an endpoint"
            summary.error = summary.error or (
                f"{summary.left_pending} item(s) left pending: circuit open for {endpoints}"
            )
        if summary.status == "ok" and (summary.retry_later or summary.left_pending):
            summary.status = "partial"


def _wait_awake(futures: list[Future[None]]) -> None:
    """Wait for ``futures`` in short naps, then re-raise the first one's error.

    Python runs signal handlers in the main thread only, between two bytecodes: a
    main thread blocked in ``future.result()`` is woken by a signal only when the
    kernel happens to deliver it to that thread, not to one of the run's many others,
    and a SIGTERM would then wait for the whole run. Napping lets the handler run at
    once, and the accounts see the stop at their next item.
    """
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=_NAP, return_when=FIRST_EXCEPTION)
        if any(future.exception() is not None for future in done):
            break
    for future in futures:
        if future.done():
            future.result()
    for future in futures:
        future.result()
