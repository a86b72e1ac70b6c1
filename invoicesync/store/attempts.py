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
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from invoicesync.models import MailRef
from invoicesync.store.db import dialect_insert
from invoicesync.store.schema import Document, Message, Run, Status

__all__ = [
    "quarantine_reason",
    "start_document",
    "start_messages",
    "undo_message_start",
    "undo_start",
]

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
    if status is None:
        return "unknown"
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


def start_messages(
    session: Session, account: int, refs: Sequence[MailRef], *, owner: str, max_attempts: int
) -> dict[str, str]:
    """Count an attempt on each mail of ``refs`` before it is fetched, in one statement.

    A mail seen for the first time gets its row now (pending), so that a run that
    dies on it has counted it. Returns the keys of the mails that used up their
    attempts without finishing, each with its quarantine reason: the caller records
    them as failed (in folder order) instead of working them. Commit before the work.
    """
    if not refs:
        return {}
    keys = {ref.key for ref in refs}
    folders = {ref.folder for ref in refs}
    rows = session.execute(
        select(Message.folder, Message.key, Message.attempts, Message.started_by).where(
            Message.account_id == account,
            Message.folder.in_(folders),
            Message.key.in_(keys),
            Message.status.in_(Status.WORKABLE),
        )
    ).all()
    quarantined: dict[str, str] = {}
    for row in rows:
        if row.attempts >= max_attempts:
            quarantined[row.key] = quarantine_reason(
                row.attempts, _how_it_ended(session, row.started_by)
            )
    now = _now()
    values: dict[tuple[str, str], dict[str, Any]] = {
        (ref.folder, ref.key): {
            "account_id": account,
            "folder": ref.folder,
            "key": ref.key,
            "uidvalidity": ref.uidvalidity,
            "uid": ref.uid,
            "status": Status.PENDING,
            "attempts": 1,
            "started_at": now,
            "started_by": owner,
            "links": [],
            "notes": [],
            "first_seen_at": now,
            "updated_at": now,
        }
        for ref in refs
        if ref.key not in quarantined
    }
    if values:
        insert = dialect_insert(session, Message).values(list(values.values()))
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["account_id", "folder", "key"],
                set_={
                    "attempts": Message.attempts + 1,
                    "started_at": now,
                    "started_by": owner,
                },
                # A mail done (or parked) meanwhile by another run is left as it is.
                where=Message.status.in_(Status.WORKABLE),
            )
        )
    return quarantined


def undo_message_start(session: Session, account: int, ref: MailRef) -> None:
    """The mail was left untried after all (an endpoint's circuit was open)."""
    session.execute(
        update(Message)
        .where(
            Message.account_id == account,
            Message.folder == ref.folder,
            Message.key == ref.key,
            Message.attempts > 0,
        )
        .values(attempts=Message.attempts - 1)
    )
