"""Post-actions: the account's after_ingest (flag, move, label) for mails whose work is done.

Only mails whose documents are all extracted and committed get it; a refused
action only waits for a later run (the invoices are stored).
"""

from __future__ import annotations

import logging
from functools import partial

from invoicesync.errors import BadInputError, ProtocolError, TransientError
from invoicesync.logs import log_context
from invoicesync.mail.source import MailSource
from invoicesync.pipeline.context import RunContext
from invoicesync.pipeline.summary import AccountSummary
from invoicesync.store import sync

__all__ = ["apply_post_actions"]

log = logging.getLogger(__name__)


def apply_post_actions(
    ctx: RunContext, source: MailSource, account_id: int, summary: AccountSummary
) -> None:
    """after_ingest for mails whose documents are all extracted and committed."""
    with log_context(stage="post_action", message_key=None, document=None):
        _apply(ctx, source, account_id, summary)


def _apply(ctx: RunContext, source: MailSource, account_id: int, summary: AccountSummary) -> None:
    with ctx.db.session() as session:
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
            log.warning("account=%s folder=%s post-action failed: %s", summary.account, folder, exc)
            continue
        done = partial(
            sync.post_action_done,
            account=account_id,
            folder=folder,
            uidvalidity=uidvalidity,
            uids=uids,
        )
        ctx.tx(done)
        summary.post_actions += len(uids)
