"""One account's work within a run: ingest every folder, extract, apply post-actions.

Each stage has its module (``ingestion``, ``extraction``, ``post_actions``); this
one opens the account's source, runs them in order under the account's deadline
and lease (an ``AccountScope``), and turns what stops the account into its summary:
a failure is recorded on its item and the account goes on; only account-level
fatal errors (and the account's deadline, a lost lease) stop it.
"""

from __future__ import annotations

import logging

from invoicesync.config import AccountSettings
from invoicesync.errors import AccountStopped, AuthError, FatalError, InvoiceSyncError
from invoicesync.pipeline.context import AccountScope, RunContext
from invoicesync.pipeline.downloads import LinkDownloads
from invoicesync.pipeline.extraction import Extraction
from invoicesync.pipeline.ingestion import Ingestion
from invoicesync.pipeline.lease_keeper import LeaseKeeper
from invoicesync.pipeline.mail_records import MailRecords
from invoicesync.pipeline.post_actions import apply_post_actions
from invoicesync.pipeline.sources import open_source
from invoicesync.pipeline.summary import AccountSummary

__all__ = ["AccountJob", "AccountStopped"]

log = logging.getLogger(__name__)


class AccountJob:
    """The work on one account, with the run's shared parts in ``ctx``."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def work(
        self,
        account: AccountSettings,
        account_id: int,
        summary: AccountSummary,
        lease: LeaseKeeper,
    ) -> None:
        ctx = self.ctx
        deadline = ctx.deadline.child(ctx.settings.timeouts.account)
        scope = AccountScope(
            ctx,
            deadline,
            lease,
            wants_post_action=account.imap_host is not None and account.after_ingest != "none",
        )
        try:
            if ctx.source_factory is not None:
                source = ctx.source_factory(account)
            else:
                source = open_source(
                    account, ctx.settings, cancel=ctx.switch.event, deadline=deadline
                )
        except InvoiceSyncError as exc:  # e.g. bad credentials (fatal), server down (transient)
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            summary.count_failure(exc.stage or "open", exc.kind)
            log.error("account=%s stage=open error=%s", account.name, exc)
            return
        downloads = LinkDownloads(ctx, scope)
        ingestion = Ingestion(ctx, scope, MailRecords(ctx, scope), downloads)
        # The watchdog drops connections at once (abort); a normal end logs out (close).
        closer = ctx.switch.register(getattr(source, "abort", source.close))
        try:
            summary.phase = "scanning"
            for folder in source.folders():
                ingestion.ingest_folder(source, account_id, folder, summary)
            summary.phase = "extracting"
            Extraction(ctx, scope).extract_pending(account_id, summary)
            summary.phase = "post-actions"
            apply_post_actions(ctx, source, account_id, summary)
        except AccountStopped as stop:
            summary.status, summary.error = stop.status, stop.reason
            log.warning("account=%s %s", account.name, stop.reason)
        except InvoiceSyncError as exc:
            ctx.switch.raise_if_tripped()  # a connection closed by the watchdog fails here
            summary.status = "fatal" if isinstance(exc, FatalError) else "partial"
            summary.error = str(exc)
            summary.count_failure(exc.stage or "account", exc.kind)
            if isinstance(exc, AuthError) and account.oauth2 is not None:
                # A revoked grant: only a person can fix it. Say so until they do.
                summary.status = "needs_reconnect"
            log.error("account=%s error=%s", account.name, exc)
        finally:
            ctx.switch.unregister(closer)
            source.close()
            ingestion.close()
            downloads.close()
            stats = getattr(source, "stats", None)
            if stats is not None:
                summary.transfer = stats()

    def extract_backlog(self, summary: AccountSummary) -> None:
        """Workers, after the accounts: pending documents of any account (``Extraction``)."""
        Extraction(self.ctx, AccountScope(self.ctx, self.ctx.deadline)).extract_backlog(summary)
