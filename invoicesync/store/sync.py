"""Incremental sync state: folder positions, retries by UID, post-actions.

All of it changes in the same transactions as the messages it describes, so a
folder's position never runs ahead of what is committed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from invoicesync.models import FolderPosition, MailRef
from invoicesync.store.db import dialect_insert
from invoicesync.store.schema import Document, Message, MessageDocument, Status, SyncState

__all__ = [
    "advance_position",
    "awaiting_post_action",
    "done_message_ids",
    "folder_position",
    "post_action_done",
    "workable_refs",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def folder_position(session: Session, account: int, folder: str) -> FolderPosition | None:
    row = session.scalars(
        select(SyncState).where(SyncState.account_id == account, SyncState.folder == folder)
    ).first()
    return (
        None if row is None else FolderPosition(uidvalidity=row.uidvalidity, last_uid=row.last_uid)
    )


def advance_position(session: Session, account: int, ref: MailRef) -> None:
    """Record that ``ref`` was examined (in the transaction that records its outcome)."""
    if ref.uid is None:
        return
    now = _now()
    statement = dialect_insert(session, SyncState).values(
        account_id=account,
        folder=ref.folder,
        uidvalidity=ref.uidvalidity,
        last_uid=ref.uid,
        updated_at=now,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["account_id", "folder"],
            set_={
                "uidvalidity": ref.uidvalidity,
                "last_uid": case(
                    (
                        SyncState.uidvalidity == ref.uidvalidity,
                        func.max(SyncState.last_uid, ref.uid)
                        if session.get_bind().dialect.name == "sqlite"
                        else func.greatest(SyncState.last_uid, ref.uid),
                    ),
                    else_=ref.uid,
                ),
                "updated_at": now,
            },
        )
    )


def done_message_ids(session: Session, account: int, folder: str) -> set[str]:
    """Message-IDs already stored from this folder (to skip them after a UIDVALIDITY change)."""
    rows = session.scalars(
        select(Message.message_id).where(
            Message.account_id == account,
            Message.folder == folder,
            Message.status.in_(Status.DONE),
            Message.message_id.is_not(None),
        )
    )
    return {row for row in rows if row}


def workable_refs(session: Session, account: int, folder: str, uidvalidity: int) -> list[MailRef]:
    """Earlier messages of this folder to try again (transient failures), oldest first."""
    rows = session.execute(
        select(Message.key, Message.uid)
        .where(
            Message.account_id == account,
            Message.folder == folder,
            Message.uidvalidity == uidvalidity,
            Message.status.in_(Status.WORKABLE),
        )
        .order_by(Message.uid)
    )
    return [
        MailRef(account="", folder=folder, key=key, uidvalidity=uidvalidity, uid=uid)
        for key, uid in rows
    ]


def awaiting_post_action(session: Session, account: int) -> dict[tuple[str, int], list[int]]:
    """Mails whose post-action may run now, by (folder, uidvalidity): done, documents done."""
    unfinished = (
        select(MessageDocument.message_id)
        .join(Document, Document.id == MessageDocument.document_id)
        .where(Document.status.in_(Status.WORKABLE))
    )
    rows = session.execute(
        select(Message.folder, Message.uidvalidity, Message.uid)
        .where(
            Message.account_id == account,
            Message.post_action == "pending",
            Message.status.in_(Status.DONE),
            Message.uid.is_not(None),
            Message.id.not_in(unfinished),
        )
        .order_by(Message.uid)
    )
    ready: dict[tuple[str, int], list[int]] = {}
    for folder, uidvalidity, uid in rows:
        if uidvalidity is not None and uid is not None:
            ready.setdefault((folder, uidvalidity), []).append(uid)
    return ready


def post_action_done(
    session: Session, *, account: int, folder: str, uidvalidity: int, uids: Sequence[int]
) -> None:
    session.execute(
        update(Message)
        .where(
            Message.account_id == account,
            Message.folder == folder,
            Message.uidvalidity == uidvalidity,
            Message.uid.in_(list(uids)),
        )
        .values(post_action="done")
    )
