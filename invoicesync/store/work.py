"""Work shared by several processes on one database: due accounts and pending documents.

No coordinator of our own: the database is the queue. On PostgreSQL a worker picks
its next row with ``SELECT … FOR UPDATE SKIP LOCKED``, so workers asking at the same
instant get different rows without waiting on each other; the claim itself is a
lease (accounts, ``store.leases``) or an owner and expiry on the row (documents),
renewed by the owner's heartbeat, so a killed worker's work is picked up by another
once the claim runs out. SQLite has one writer at a time and no ``SKIP LOCKED``: the
same statements run without it and the single-process behaviour stays as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from invoicesync.store import leases
from invoicesync.store.db import dialect_insert
from invoicesync.store.schema import Account, Document, Lease, Message, MessageDocument, Status

__all__ = [
    "account_lease",
    "claim_documents",
    "claim_due_account",
    "claimed_elsewhere",
    "due_accounts",
    "ensure_accounts",
    "mark_done",
    "release_documents",
    "renew_documents",
]

_CANDIDATES = 8


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _skip_locked(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def account_lease(name: str) -> str:
    """The lease name of an account (shared with ``Runner``'s per-account lease)."""
    return f"account:{name}"


def ensure_accounts(session: Session, names: Sequence[str]) -> None:
    """Rows for every configured account, so that workers can claim them."""
    for name in names:
        session.execute(dialect_insert(session, Account).values(name=name).on_conflict_do_nothing())


def _due(names: Collection[str], due_before: dt.datetime) -> ColumnElement[bool]:
    return and_(
        Account.name.in_(list(names)),
        or_(Account.last_done_at.is_(None), Account.last_done_at <= due_before),
    )


def due_accounts(session: Session, names: Collection[str], due_before: dt.datetime) -> list[str]:
    """Accounts not worked to the end since ``due_before``, leased or not."""
    return list(session.scalars(select(Account.name).where(_due(names, due_before))))


def claim_due_account(
    session: Session,
    names: Collection[str],
    *,
    owner: str,
    ttl: float,
    due_before: dt.datetime,
) -> tuple[int, str] | None:
    """Claim the longest-waiting due account whose lease is free; None when there is none.

    Commit the session to make the claim visible. Rows other workers are deciding
    on right now are skipped, not waited for.
    """
    now = _now()
    # Not "or ours": a sibling thread of this run may be working it right now.
    free = or_(Lease.name.is_(None), Lease.expires_at < now)
    query = (
        select(Account.id, Account.name)
        .outerjoin(Lease, Lease.name == "account:" + Account.name)
        .where(_due(names, due_before), free)
        .order_by(Account.last_done_at.is_not(None), Account.last_done_at, Account.id)
        .limit(_CANDIDATES)
    )
    if _skip_locked(session):
        query = query.with_for_update(of=Account, skip_locked=True)
    for account_id, name in session.execute(query).all():
        if leases.acquire(session, account_lease(name), owner, ttl):
            return int(account_id), str(name)
    return None


def mark_done(session: Session, account: int, started_at: dt.datetime) -> None:
    """The account was worked to the end by a run that started at ``started_at``."""
    session.execute(update(Account).where(Account.id == account).values(last_done_at=started_at))


def claim_documents(
    session: Session,
    *,
    owner: str,
    ttl: float,
    limit: int,
    account: int | None = None,
    exclude: Collection[int] = (),
    xml: bool | None = None,
) -> list[Document]:
    """Claim up to ``limit`` workable documents (of ``account``, else of any).

    ``xml``: only XML documents (True), or only the others (False).

    XML first, so that a PDF beside its XML is recognised as its rendering; then
    the fewest attempts first, so that an item that failed or hung before does not
    hold up new mail. A document claimed by someone else is skipped until that
    claim expires; the ids in ``exclude`` (already tried by this run) are never
    returned.
    """
    now = _now()
    _release_dead_claims(session, now)
    query = select(Document.id).where(
        Document.status.in_(Status.WORKABLE),
        or_(
            Document.claim_expires_at.is_(None),
            Document.claim_expires_at < now,
            Document.claim_owner == owner,
        ),
    )
    if exclude:
        query = query.where(Document.id.not_in(list(exclude)))
    if xml is not None:
        query = query.where((Document.kind == "xml") if xml else (Document.kind != "xml"))
    if account is not None:
        linked = (
            select(MessageDocument.document_id)
            .join(Message, Message.id == MessageDocument.message_id)
            .where(Message.account_id == account)
        )
        query = query.where(Document.id.in_(linked))
    query = query.order_by(Document.kind.desc(), Document.attempts, Document.id).limit(limit)
    if _skip_locked(session):
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if not ids:
        return []
    session.execute(
        update(Document)
        .where(Document.id.in_(ids))
        .values(claim_owner=owner, claim_expires_at=now + dt.timedelta(seconds=ttl))
    )
    documents = session.scalars(select(Document).where(Document.id.in_(ids))).all()
    order = {document_id: n for n, document_id in enumerate(ids)}
    return sorted(documents, key=lambda d: order[d.id])


def _release_dead_claims(session: Session, now: dt.datetime) -> None:
    """Claims of a process of this host that is gone are void now, not at their expiry."""
    owners = session.scalars(
        select(Document.claim_owner)
        .where(Document.claim_expires_at >= now, Document.claim_owner.is_not(None))
        .distinct()
    ).all()
    dead = [owner for owner in owners if owner is not None and leases.owner_is_dead(owner)]
    if dead:
        session.execute(
            update(Document)
            .where(Document.claim_owner.in_(dead))
            .values(claim_owner=None, claim_expires_at=None)
        )


def claimed_elsewhere(session: Session, owner: str, exclude: Collection[int] = ()) -> int:
    """Workable documents that another run claims now (it may die: wait, don't leave)."""
    _release_dead_claims(session, _now())
    query = select(func.count()).where(
        Document.status.in_(Status.WORKABLE),
        Document.claim_owner != owner,
        Document.claim_expires_at >= _now(),
    )
    if exclude:
        query = query.where(Document.id.not_in(list(exclude)))
    return int(session.scalar(query) or 0)


def renew_documents(session: Session, owner: str, ttl: float) -> None:
    """Extend every claim of ``owner`` (its heartbeat)."""
    session.execute(
        update(Document)
        .where(Document.claim_owner == owner, Document.claim_expires_at.is_not(None))
        .values(claim_expires_at=_now() + dt.timedelta(seconds=ttl))
    )


def release_documents(session: Session, owner: str, ids: Collection[int] | None = None) -> None:
    """Give up ``owner``'s claims (on ``ids``, or all of them)."""
    condition = and_(Document.claim_owner == owner)
    if ids is not None:
        condition = and_(condition, Document.id.in_(list(ids)))
    session.execute(
        update(Document).where(condition).values(claim_owner=None, claim_expires_at=None)
    )
