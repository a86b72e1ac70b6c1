"""Recording ingested mails: batched commits, failures in their place, the folder position.

Mails are committed in small batches (each with its documents, links and the
folder position, up to ``_COMMIT_EVERY`` mails or ``_COMMIT_SECONDS`` per
transaction); a failure is recorded after the mails before it, so the folder
position never passes a mail that was not recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

from sqlalchemy.orm import Session

from invoicesync.errors import InvoiceSyncError
from invoicesync.logs import log_context
from invoicesync.models import MailRef, ParsedMail
from invoicesync.pipeline import outcomes
from invoicesync.pipeline.context import AccountScope, RunContext
from invoicesync.pipeline.outcomes import Outcome, Stage
from invoicesync.pipeline.summary import AccountSummary
from invoicesync.resilience.breaker import CircuitOpenError
from invoicesync.store import attempts, sync
from invoicesync.store import repository as repo
from invoicesync.store.repository import StoredDocument
from invoicesync.store.schema import Status

__all__ = ["Ingested", "MailRecords"]

log = logging.getLogger(__name__)
# Ingested messages per transaction: a commit per message was a fifth of a first ingest.
# A batch never waits longer than _COMMIT_SECONDS (slow link downloads, say).
_COMMIT_EVERY = 50
_COMMIT_SECONDS = 1.0


@dataclass
class Ingested:
    """A message parsed, its links followed and its documents on disk: ready to commit."""

    ref: MailRef
    parsed: ParsedMail
    documents: list[StoredDocument]


class MailRecords:
    """The mails of one account read since the last commit, and how each ended."""

    def __init__(self, ctx: RunContext, scope: AccountScope) -> None:
        self.ctx = ctx
        self.scope = scope
        self._pending: list[Ingested] = []
        self._since = 0.0

    def add(self, account_id: int, item: Ingested, summary: AccountSummary) -> None:
        """One more mail to commit; the batch is committed once full or old enough."""
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(item)
        if len(self._pending) >= _COMMIT_EVERY or time.monotonic() - self._since >= _COMMIT_SECONDS:
            self.commit(account_id, summary)

    def drop(self) -> None:
        """Forget the mails not committed yet (the lease is lost: another run has them)."""
        self._pending = []

    def commit(self, account_id: int, summary: AccountSummary) -> None:
        """Commit the messages read since the last commit, in one transaction.

        Should that fail, each is committed on its own, so that one bad message
        fails alone, as it would have without the batch.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return

        def record_all(session: Session) -> None:
            self._record(session, account_id, batch)

        try:
            self.ctx.tx(record_all)
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

    def _commit_one(self, account_id: int, item: Ingested, summary: AccountSummary) -> None:
        with log_context(stage="ingest", message_key=item.ref.key, document=None):
            try:
                self.ctx.tx(lambda s: self._record(s, account_id, [item]))
            except Exception as exc:
                decision = outcomes.decide(exc, Stage.INGEST)
                if decision.outcome is Outcome.STOP_ACCOUNT:
                    raise
                if decision.outcome is Outcome.BUG:
                    log.exception("account=%s key=%s bug", item.ref.account, item.ref.key[:12])
                error = outcomes.as_error(exc, Stage.INGEST)
                self.message_failed(account_id, item.ref, error, summary)
                return
        self._committed(item, summary)

    @staticmethod
    def _committed(item: Ingested, summary: AccountSummary) -> None:
        summary.new_messages += 1
        summary.documents += len(item.documents)

    def _record(self, session: Session, account_id: int, batch: list[Ingested]) -> None:
        repo.record_messages(
            session,
            account_id,
            [repo.NewMessage(item.ref, item.parsed, item.documents) for item in batch],
            post_action=self.scope.wants_post_action,
        )
        # The position only moves forward: the newest UID of each folder is enough.
        newest: dict[tuple[str, int | None], MailRef] = {}
        for item in batch:
            key = (item.ref.folder, item.ref.uidvalidity)
            if key not in newest or (item.ref.uid or 0) > (newest[key].uid or 0):
                newest[key] = item.ref
        for ref in newest.values():
            sync.advance_position(session, account_id, ref)

    def record_seen_before(self, session: Session, *, account_id: int, ref: MailRef) -> None:
        note = ParsedMail(message_id=ref.message_id, skipped=["stored before a UIDVALIDITY change"])
        repo.record_message(session, account_id, ref, note, [], status=Status.OK)
        sync.advance_position(session, account_id, ref)

    def not_tried(
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
        self.commit(account_id, summary)
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

        self.ctx.tx(not_tried)
        summary.left_pending += 1

    def message_failed(
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
            self.ctx.switch.raise_if_tripped()  # a failure the stop caused is not recorded
        self.commit(account_id, summary)  # the position must pass them first
        decision = outcomes.decide(exc, Stage.INGEST)
        wanted = decision.status
        reason = f"{decision.kind}: {exc}"

        def record(session: Session) -> str:
            status = repo.record_message_failure(
                session,
                account_id,
                ref,
                status=wanted,
                error=reason,
                max_attempts=self.ctx.settings.retries.item_attempts,
                attempt=not counted,
                unfinished=decision.unfinished,
            )
            sync.advance_position(session, account_id, ref)
            return status

        status = self.ctx.tx(record)
        summary.failed += 1
        summary.count_failure("ingest", exc.kind)
        summary.retry_later += status == Status.FAILED_TRANSIENT
        log.warning("account=%s key=%s stage=ingest %s", ref.account, ref.key[:12], reason)
