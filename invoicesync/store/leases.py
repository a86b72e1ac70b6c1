"""Leases: at most one run works a unit of work (an account) at a time.

A lease row names its owner (``host:pid:run``) and an expiry. Acquiring is one
``INSERT … ON CONFLICT DO UPDATE … WHERE expired OR mine``: atomic on both SQLite
and PostgreSQL, no coordinator needed. The owner renews while working; a killed
owner's lease runs out and the next run takes it. On the same host a lease whose
owner process is gone is taken at once, so a cron job after a crash does not
wait for the expiry.

Times are UTC from the workers' clocks; keep them in sync (NTP) when workers
run on several machines.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from invoicesync.store.db import dialect_insert
from invoicesync.store.schema import Lease

__all__ = [
    "LeaseHolder",
    "acquire",
    "holder",
    "owner_id",
    "owner_is_dead",
    "process_is_gone",
    "release",
    "renew",
]


def owner_id(run_id: int) -> str:
    """This process as a lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    owner: str
    expires_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def owner_is_dead(owner: str) -> bool:
    """True only when the owner ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return process_is_gone(int(pid_text))


def process_is_gone(pid: int) -> bool:
    """True when no process ``pid`` exists on this host (ours never counts as gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def acquire(session: Session, name: str, owner: str, ttl: float) -> bool:
    """Take the lease if it is free, expired, already ours, or held by a dead local process."""
    now = _now()
    expires = now + dt.timedelta(seconds=ttl)
    statement = dialect_insert(session, Lease).values(
        name=name, owner=owner, acquired_at=now, expires_at=expires
    )
    won = session.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"owner": owner, "acquired_at": now, "expires_at": expires},
            where=(Lease.expires_at < now) | (Lease.owner == owner),
        ).returning(Lease.name)
    ).first()
    if won is not None:
        return True
    current = holder(session, name)
    if current is None or not owner_is_dead(current.owner):
        return False
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == current.owner)
        .values(owner=owner, acquired_at=now, expires_at=expires)
        .returning(Lease.name)
    ).first()
    return taken is not None


def renew(session: Session, name: str, owner: str, ttl: float) -> bool:
    """Extend our lease; False if it was lost (expired and taken by another run)."""
    renewed = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)
        .values(expires_at=_now() + dt.timedelta(seconds=ttl))
        .returning(Lease.name)
    ).first()
    return renewed is not None


def release(session: Session, name: str, owner: str) -> None:
    session.execute(delete(Lease).where(Lease.name == name, Lease.owner == owner))


def holder(session: Session, name: str) -> LeaseHolder | None:
    row = session.execute(select(Lease.owner, Lease.expires_at).where(Lease.name == name)).first()
    return None if row is None else LeaseHolder(owner=row[0], expires_at=row[1])
