"""Attempts counted when work starts, and quarantine of items that never finish.

A run that dies mid-item (the watchdog's exit, SIGKILL, the OOM killer, a crash
in C code) records no outcome for it. Counting the attempt in its own committed
transaction before any work makes such an item visible all the same: once it has
had ``retries.item_attempts`` attempts, the next start parks it as failed_fatal
(quarantined) with the reason, instead of letting it hold every run after it.
``invoicesync retry --item`` makes it pending again with its count reset.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from invoicesync.store.schema import Document, Run, Status

__all__ = ["quarantine_reason", "start_document", "undo_start"]

_RUN_ENDS = {
    "aborted": "run aborted",
    "interrupted": "run interrupted",
    "crashed": "the run's process died",
    "running": "the run's process died",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def quarantine_reason(attempts: int, last: str) -> str:
    return f"quarantined after {attempts} attempts that did not finish (last: {last})"


def _how_it_ended(session: Session, owner: str | None) -> str:
    """What became of the run that made the last attempt (``host:pid:run``)."""
    run_id = (owner or "").rpartition(":")[2]
    if not run_id.isdigit():
        return "unknown"
    status = session.scalar(select(Run.status).where(Run.id == int(run_id)))
    return _RUN_ENDS.get(str(status), f"run ended {status}")


def start_document(session: Session, document: int, *, owner: str, max_attempts: int) -> str | None:
    """Count an attempt on ``document`` before any work; None when it may go ahead.

    A document that has used up its attempts without a recorded outcome is
    quarantined instead, and the reason returned. Commit before the work starts.
    """
    row = session.execute(
        select(Document.attempts, Document.started_by, Document.status).where(
            Document.id == document
        )
    ).one()
    if row.status not in Status.WORKABLE:
        return f"already {row.status}"
    if row.attempts >= max_attempts:
        reason = quarantine_reason(row.attempts, _how_it_ended(session, row.started_by))
        session.execute(
            update(Document)
            .where(Document.id == document)
            .values(status=Status.FAILED_FATAL, last_error=reason, updated_at=_now())
        )
        return reason
    session.execute(
        update(Document)
        .where(Document.id == document)
        .values(attempts=Document.attempts + 1, started_at=_now(), started_by=owner)
    )
    return None


def undo_start(session: Session, document: int) -> None:
    """The document was left untried after all (an open breaker, a refused endpoint)."""
    session.execute(
        update(Document)
        .where(Document.id == document, Document.attempts > 0)
        .values(attempts=Document.attempts - 1)
    )
